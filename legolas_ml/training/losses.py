"""Loss functions for imbalanced classification: focal loss and class-weighted cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection").

    ``loss_i = -alpha[t_i] * (1 - p_t)^gamma * log p_t`` with ``log p_t`` taken from
    ``log_softmax`` so it stays finite for logits of any size.

    Args:
        alpha: class weights. ``None`` weighs every class 1. A float ``a`` means ``[1 - a, a]``
            (binary only). A sequence or tensor is indexed by the target class.
        gamma: focusing parameter, >= 0. ``gamma=0`` with ``alpha=None`` is cross-entropy.
        reduction: ``"mean"`` (sum over non-ignored targets / their count), ``"sum"`` or ``"none"``.
        ignore_index: targets with this value contribute nothing (and 0 under ``"none"``).

    Example:
        >>> loss = FocalLoss(alpha=[0.25, 0.75], gamma=2.0)
        >>> round(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item(), 7)
        0.1299651
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if gamma is None or gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if not 0 <= alpha <= 1:
                raise ValueError(f"a float alpha means [1 - alpha, alpha] and must be in [0, 1], got {alpha!r}")
            alpha = [1.0 - float(alpha), float(alpha)]
        if alpha is not None:
            alpha = torch.as_tensor(alpha, dtype=torch.float32).flatten()
            if (alpha < 0).any():
                raise ValueError(f"alpha weights must be >= 0, got {alpha.tolist()}")
        self.register_buffer("alpha", alpha)
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # logits: (batch, n_classes); targets: (batch,)
        if self.alpha is not None and self.alpha.numel() != logits.shape[-1]:
            raise ValueError(
                f"alpha has {self.alpha.numel()} weights but the logits have {logits.shape[-1]} classes"
            )
        valid = targets != self.ignore_index  # (batch,)
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (batch, n_classes), fp32 for stability
        log_pt = log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)  # (batch,)
        pt = log_pt.exp()
        loss = -((1.0 - pt) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha[safe_targets]
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        # An all-ignored batch has no defined mean; 0 keeps training going rather than emitting NaN.
        return loss.sum() / valid.sum().clamp(min=1)


def balanced_class_weights(class_counts: Sequence[int]) -> list[float]:
    """Balanced weights ``w_c = n / (C * n_c)``, renormalised to sum to ``C``.

    Raises:
        ValueError: if a class has no members (its weight would be infinite).
    """
    counts = [int(c) for c in class_counts]
    if not counts or any(c <= 0 for c in counts):
        raise ValueError(f"every class needs at least one member to be weighted, got counts {counts}")
    n, n_classes = sum(counts), len(counts)
    raw = [n / (n_classes * c) for c in counts]
    scale = n_classes / sum(raw)
    return [w * scale for w in raw]


def default_focal_alpha(class_counts: Sequence[int]) -> list[float]:
    """The default focal alpha, from the training counts.

    Two classes: 0.75 on the minority class and 0.25 on the majority, whatever their order (the
    design notes' alpha=0.25 of Lin et al., with the larger weight on the rarer, "positive" class);
    ``[0.5, 0.5]`` when both are equally frequent. More classes have no "positive" class, so each is
    weighted by its inverse frequency, normalised to sum to 1.

    Example:
        >>> default_focal_alpha([90, 10]), default_focal_alpha([10, 90])
        ([0.25, 0.75], [0.75, 0.25])
    """
    if len(class_counts) == 2:
        first, second = class_counts
        if first == second:
            return [0.5, 0.5]
        return [0.75, 0.25] if first < second else [0.25, 0.75]
    weights = balanced_class_weights(class_counts)
    total = sum(weights)
    return [w / total for w in weights]


def build_loss(loss: str, class_counts: Sequence[int], focal_alpha=None, focal_gamma: float = 2.0) -> nn.Module:
    """The training loss named by the config, with class weights derived from the training counts."""
    if loss == "focal":
        alpha = focal_alpha if focal_alpha is not None else default_focal_alpha(class_counts)
        return FocalLoss(alpha=alpha, gamma=focal_gamma)
    if loss == "ce":
        return nn.CrossEntropyLoss(weight=torch.tensor(balanced_class_weights(class_counts)))
    raise ValueError(f"loss must be 'focal' or 'ce', got {loss!r}")
