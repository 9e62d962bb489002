"""Progress of a K-fold training run: epochs done, and an honest estimate of the time left.

The estimate is pessimistic in epochs, and says what it assumes: every fold still training runs
all ``max_epochs`` epochs, at the run's mean time per epoch so far (with folds in parallel, the
run's epochs per second). Early stopping can only remove epochs; a fold reused from an earlier run
(``mark_reused``) takes none. It is an estimate of time, not a guarantee: epochs vary in length,
and parallel folds finish unevenly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where a run stands after one epoch of one fold."""

    fold: int
    epoch: int  # 0-based epoch just finished
    epochs_done: int  # epochs finished in this run, all folds together
    epochs_at_most: int  # epochs this run can still take at most, all folds together, done included
    folds_done: int  # folds finished (stopped early or ran every epoch)
    n_folds: int
    elapsed_s: float
    seconds_per_epoch: float
    remaining_s_at_most: float

    def describe(self) -> str:
        """One line for the run's log, e.g. ``1/3 folds done, 14/30 epochs at most; 9.5s per epoch; at most 2m31s left (...)``."""
        return (
            f"{self.folds_done}/{self.n_folds} folds done, {self.epochs_done}/{self.epochs_at_most} epochs at most; "
            f"{self.seconds_per_epoch:.1f}s per epoch; about {format_duration(self.remaining_s_at_most)} left "
            "if every open fold runs all its epochs (early stopping ends sooner)"
        )


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1h02m05s'``, ``65`` -> ``'1m05s'``, ``4.2`` -> ``'4s'``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class TrainingProgress:
    """Counts finished epochs per fold and estimates the time left (an upper bound).

    Args:
        folds: the folds trained in this run.
        max_epochs: the config's epochs per fold, >= 1.
        clock: seconds, monotonic (``time.perf_counter`` by default; a fake clock in tests).

    Example:
        >>> progress = TrainingProgress([0, 1], max_epochs=3, clock=iter([0.0, 10.0]).__next__)
        >>> progress.epoch_finished(0, 0, stopping=False).remaining_s_at_most
        50.0
    """

    def __init__(self, folds: Sequence[int], max_epochs: int, clock: Callable[[], float] = time.perf_counter) -> None:
        if not folds:
            raise ValueError("folds must name at least one fold, got []")
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be an integer >= 1, got {max_epochs!r}")
        self.folds = [int(k) for k in folds]
        self.max_epochs = max_epochs
        self._clock = clock
        self._started = clock()
        self.epochs = {k: 0 for k in self.folds}
        self.finished: set[int] = set()

    def mark_reused(self, fold: int) -> None:
        """``fold`` finished in an earlier run and is reused: it takes no epoch in this one."""
        if fold not in self.epochs:
            raise ValueError(f"fold must be one of {self.folds}, got {fold!r}")
        self.finished.add(fold)

    def epoch_finished(self, fold: int, epoch: int, *, stopping: bool) -> ProgressSnapshot:
        """Record that ``fold`` finished ``epoch`` (0-based); ``stopping`` when it was the fold's last."""
        if fold not in self.epochs:
            raise ValueError(f"fold must be one of {self.folds}, got {fold!r}")
        elapsed = self._clock() - self._started
        self.epochs[fold] = epoch + 1
        if stopping or epoch + 1 >= self.max_epochs:
            self.finished.add(fold)
        done = sum(self.epochs.values())
        per_epoch = elapsed / done
        # Folds still open may run every remaining epoch; finished folds take no more.
        left = sum(self.max_epochs - n for k, n in self.epochs.items() if k not in self.finished)
        return ProgressSnapshot(
            fold=fold, epoch=epoch, epochs_done=done, epochs_at_most=done + left, folds_done=len(self.finished),
            n_folds=len(self.folds), elapsed_s=elapsed, seconds_per_epoch=per_epoch, remaining_s_at_most=per_epoch * left,
        )
