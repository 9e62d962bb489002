"""Rewind early stopping: stop when validation loss stalls and rewind to the last improving epoch."""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn


class RewindEarlyStopping:
    """Stop training after ``patience`` epochs without improvement and rewind the weights.

    An epoch improves when ``val_loss < best_loss - min_delta``; the counter of non-improving epochs
    resets on every improvement. When the counter reaches ``patience`` at trigger epoch ``T``,
    ``step`` returns ``True`` and ``restore(model)`` loads the weights of epoch ``T - patience``: for a
    patience stop that is exactly the last improving epoch. To do that without disk I/O it keeps a
    ring buffer of the last ``patience + 1`` states, on CPU so the accelerator never holds copies.

    Optional overfitting monitor: with ``ratio_threshold`` set, training also stops when
    ``val_loss / train_loss`` stays above the threshold for ``patience`` consecutive epochs
    (validation much worse than training means the model memorises its training set).

    A NaN or infinite validation loss stops at once; ``restore`` then loads the last finite state.

    Args:
        patience: non-improving epochs tolerated, >= 1.
        min_delta: decrease of the validation loss that counts as an improvement, >= 0.
        ratio_threshold: ``None`` (off) or the val/train loss ratio, > 0, that counts as overfitting.

    Example:
        >>> stopper = RewindEarlyStopping(patience=3, min_delta=0.01)
        >>> [stopper.step(e, v) for e, v in enumerate([0.5, 0.4, 0.45, 0.50, 0.55])]
        [False, False, False, False, True]
        >>> stopper.trigger_epoch, stopper.restored_epoch
        (4, 1)
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.001, ratio_threshold: float | None = None) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if min_delta is None or min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        if ratio_threshold is not None and ratio_threshold <= 0:
            raise ValueError(f"ratio_threshold must be None or > 0, got {ratio_threshold!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.ratio_threshold = ratio_threshold
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.wait_count = 0
        self.overfit_count = 0
        self.trigger_epoch: int | None = None
        self.restored_epoch: int | None = None
        self.stop_reason: str | None = None
        self._states: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=patience + 1)

    @property
    def should_stop(self) -> bool:
        return self.trigger_epoch is not None

    def step(self, epoch: int, val_loss: float, train_loss: float | None = None, model: nn.Module | None = None) -> bool:
        """Record one finished epoch; return ``True`` when training must stop.

        Args:
            epoch: the index of the epoch just finished.
            val_loss: its validation loss.
            train_loss: its mean training loss (needed only by the overfitting monitor).
            model: the model after this epoch; its weights enter the rewind buffer.
        """
        if self.should_stop:
            raise RuntimeError(f"early stopping already triggered at epoch {self.trigger_epoch}; start a new instance")
        if not math.isfinite(val_loss):
            self.trigger_epoch = epoch
            self.stop_reason = f"validation loss is {val_loss} at epoch {epoch}: stopped at once"
            return True
        if model is not None:
            # Clone to CPU: the buffer must never hold accelerator memory.
            self._states.append((epoch, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}))

        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.wait_count = val_loss, epoch, 0
        else:
            self.wait_count += 1

        if self.ratio_threshold is not None and train_loss is not None and train_loss > 0:
            ratio = val_loss / train_loss
            self.overfit_count = self.overfit_count + 1 if ratio > self.ratio_threshold else 0

        if self.wait_count >= self.patience:
            self.trigger_epoch = epoch
            self.stop_reason = (
                f"no val-loss improvement > {self.min_delta} for {self.patience} epochs "
                f"(best {self.best_loss:.4f} at epoch {self.best_epoch})"
            )
        elif self.ratio_threshold is not None and self.overfit_count >= self.patience:
            self.trigger_epoch = epoch
            self.stop_reason = (
                f"val/train loss ratio above {self.ratio_threshold} for {self.patience} consecutive epochs"
            )
        return self.should_stop

    def restore(self, model: nn.Module) -> int | None:
        """Load the rewind weights into ``model``; return the restored epoch (``None`` if none is held).

        After a patience or overfitting stop that is epoch ``trigger_epoch - patience``; after a
        non-finite loss, the last epoch with a finite loss.
        """
        if not self.should_stop or not self._states:
            return None
        if self.stop_reason and "stopped at once" in self.stop_reason:
            epoch, state = self._states[-1]
        else:
            target = self.trigger_epoch - self.patience
            matches = [(e, s) for e, s in self._states if e == target]
            if not matches:
                raise RuntimeError(f"rewind target epoch {target} is not in the buffer (held: {[e for e, _ in self._states]})")
            epoch, state = matches[0]
        model.load_state_dict(state)
        self.restored_epoch = epoch
        return epoch

    def state_dict(self) -> dict:
        """The counters that change between epochs (not the weight buffer)."""
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "wait_count": self.wait_count,
            "overfit_count": self.overfit_count,
            "trigger_epoch": self.trigger_epoch,
            "restored_epoch": self.restored_epoch,
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if not hasattr(self, key):
                raise KeyError(f"unknown early-stopping state key {key!r}")
            setattr(self, key, value)
