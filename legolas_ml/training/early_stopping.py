"""Rewind early stopping: stop when validation loss stalls and name the last improving epoch to ship."""

from __future__ import annotations

import math


class RewindEarlyStopping:
    """Stop training after ``patience`` epochs without improvement and say which epoch to rewind to.

    An epoch improves when ``val_loss < best_loss - min_delta``; the counter of non-improving epochs
    resets on every improvement. When the counter reaches ``patience`` at trigger epoch ``T``,
    ``step`` returns ``True`` and ``rewind_epoch`` is ``T - patience``: for a patience stop that is
    exactly the last improving epoch. The weights themselves are not held here: the trainer keeps the
    best epoch's checkpoint on disk (``training/shipped_epoch.py``), so no copy of the model is kept.

    Optional overfitting monitor: with ``ratio_threshold`` set, training also stops when
    ``val_loss / train_loss`` stays above the threshold for ``patience`` consecutive epochs
    (validation much worse than training means the model memorises its training set).

    A NaN or infinite validation loss stops at once; ``rewind_epoch`` is then the last finite epoch.

    Args:
        patience: non-improving epochs tolerated, >= 1.
        min_delta: decrease of the validation loss that counts as an improvement, >= 0.
        ratio_threshold: ``None`` (off) or the val/train loss ratio, > 0, that counts as overfitting.

    Example:
        >>> stopper = RewindEarlyStopping(patience=3, min_delta=0.01)
        >>> [stopper.step(e, v) for e, v in enumerate([0.5, 0.4, 0.45, 0.50, 0.55])]
        [False, False, False, False, True]
        >>> stopper.trigger_epoch, stopper.rewind_epoch
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
        self.rewind_epoch: int | None = None
        self.last_finite_epoch: int | None = None
        self.stop_reason: str | None = None

    @property
    def should_stop(self) -> bool:
        return self.trigger_epoch is not None

    def step(self, epoch: int, val_loss: float, train_loss: float | None = None) -> bool:
        """Record one finished epoch; return ``True`` when training must stop.

        Args:
            epoch: the index of the epoch just finished.
            val_loss: its validation loss.
            train_loss: its mean training loss (needed only by the overfitting monitor).
        """
        if self.should_stop:
            raise RuntimeError(f"early stopping already triggered at epoch {self.trigger_epoch}; start a new instance")
        if not math.isfinite(val_loss):
            self.trigger_epoch, self.rewind_epoch = epoch, self.last_finite_epoch
            self.stop_reason = f"validation loss is {val_loss} at epoch {epoch}: stopped at once"
            return True
        self.last_finite_epoch = epoch

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
        if self.should_stop:
            self.rewind_epoch = self.trigger_epoch - self.patience
        return self.should_stop

    def state_dict(self) -> dict:
        """The counters that change between epochs."""
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "wait_count": self.wait_count,
            "overfit_count": self.overfit_count,
            "trigger_epoch": self.trigger_epoch,
            "rewind_epoch": self.rewind_epoch,
            "last_finite_epoch": self.last_finite_epoch,
            "stop_reason": self.stop_reason,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if not hasattr(self, key):
                raise KeyError(f"unknown early-stopping state key {key!r}")
            setattr(self, key, value)
