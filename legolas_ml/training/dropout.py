"""Dropout masks from PCG64 on CPU: the same dropout, drawn ~9x faster than ATen's ``bernoulli_``.

On CPU, ATen draws every dropout mask element by element from one Mersenne Twister
(``bernoulli_``): fully fine-tuning MiniLM draws 20 masks per step (the embeddings, 3 per layer,
the classifier), the attention ones 16x12x83x83 at 83 tokens and batch 16, and the profiler put
them at ~12% of a training step on a 2-core AVX2 CPU. NumPy's
PCG64 fills 64 random bits per call in a vectorised loop; split into four 16-bit draws, one
attention mask costs 2.1 ms instead of 19 ms (bench/train_levers.py, lever ``pcgdrop``).

The dropout itself is unchanged: each element is kept with probability ``1 - p`` (to 1/65536)
and scaled by ``1 / (1 - p)``; in eval mode nothing happens. ``pcg_dropout`` swaps the model's
``nn.Dropout`` modules and its attention function for these within a block and restores them
after, so checkpoints, the explainer and scoring see the stock model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

#: The attention implementation registered with transformers: SDPA, with PCG64 masks in training.
ATTENTION_NAME = "legolas_sdpa"


class DropoutMasks:
    """Keep-masks for dropout, from one seeded PCG64 stream.

    Args:
        seed: the stream's seed, an int or a tuple of ints (the trainer passes ``(config.seed,
            fold)``: reproducible, and a different stream for every fold).
    """

    def __init__(self, seed: int | tuple[int, ...]) -> None:
        self._bits = np.random.PCG64(np.random.SeedSequence(seed))

    def keep(self, shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
        """A bool tensor of ``shape``, each element True with probability ``1 - p`` (16-bit resolution)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        n = int(np.prod(shape))
        draws = self._bits.random_raw((n + 3) // 4).view(np.uint16)[:n]  # four 16-bit draws per 64-bit word
        return torch.from_numpy(draws >= round(p * 65536)).view(shape)


class _MaskedScale(torch.autograd.Function):
    """``x * keep / (1 - p)`` with the mask saved as bool (1 byte per element) for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def masked_dropout(x: torch.Tensor, p: float, masks: DropoutMasks) -> torch.Tensor:
    """Training-mode dropout of ``x`` with a mask from ``masks``."""
    if p == 0.0:
        return x
    return _MaskedScale.apply(x, masks.keep(x.shape, p).to(x.device), 1.0 / (1.0 - p))


class MaskedDropout(torch.nn.Module):
    """``nn.Dropout`` with PCG64 masks: identity in eval mode, like the module it replaces."""

    def __init__(self, p: float, masks: DropoutMasks) -> None:
        super().__init__()
        self.p = p
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_dropout(x, self.p, self.masks) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}, masks=PCG64"


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """SDPA, except in training with dropout: there the probabilities are dropped with PCG64 masks.

    Matches ``eager_attention_forward`` (softmax(QK^T * scaling + mask), dropout, @ V); the boolean
    masks of ``sdpa_mask`` (True: may attend) become a large negative score.
    """
    masks = getattr(module, "legolas_dropout_masks", None)
    if not module.training:
        dropout = 0.0  # as eager attention: no dropout in eval mode, whatever the caller passed
    if dropout == 0.0 or masks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q, k)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = masked_dropout(torch.softmax(scores, dim=-1), dropout, masks)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


@contextlib.contextmanager
def pcg_dropout(model: torch.nn.Module, seed: int | tuple[int, ...]) -> Iterator[int]:
    """Within the block, ``model``'s dropout draws its masks from PCG64; yields how many layers were swapped.

    Every ``nn.Dropout`` becomes a ``MaskedDropout`` sharing one stream, and a model on the SDPA
    attention implementation moves to ``legolas_sdpa`` (the same attention, with PCG64 masks for
    the attention probabilities). All of it is put back on exit, exceptions included.
    """
    masks = DropoutMasks(seed)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    tagged: list[torch.nn.Module] = []
    previous = getattr(model.config, "_attn_implementation", None)
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Dropout:
                    replacement = MaskedDropout(child.p, masks)
                    replacement.train(child.training)
                    setattr(parent, name, replacement)
                    swapped.append((parent, name, child))
        if previous == "sdpa" and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(ATTENTION_NAME)
            for module in model.modules():
                if hasattr(module, "attention_head_size"):  # the self-attention modules
                    module.legolas_dropout_masks = masks
                    tagged.append(module)
        yield len(swapped)
    finally:
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
        for module in tagged:
            del module.legolas_dropout_masks
        if getattr(model.config, "_attn_implementation", None) != previous and previous is not None:
            model.set_attn_implementation(previous)
