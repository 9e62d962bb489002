"""Fold runners: where the K folds of a run train, behind one interface.

``SequentialRunner`` trains them one after another in this process (one device); ``RayRunner``
makes each fold a Ray task that declares its share of a device, so Ray spreads them over every
GPU of a machine or a cluster. Both write the same files into ``folds_dir`` and return the same
``FoldResult`` per fold; the caller does not know which one ran.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from legolas_ml.data.splits import SplitPlan
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import EncodedDataset
from legolas_ml.training.trainer import EpochCallback, FoldResult


#: Free-text progress lines (fold started on worker W, worker lost and retried, fold reused).
LogCallback = Callable[[str], None]


class FoldWorkerLostError(RuntimeError):
    """A fold's worker (or its node) died more often than the retry budget allows."""


def worker_name() -> str:
    """``host:pid`` of this process: the tag that says which worker trained an epoch."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_fold_indices(plan: SplitPlan, fold_indices: Sequence[int]) -> list[int]:
    """The fold indices as ints, each checked to be a fold of ``plan`` and listed once.

    Raises:
        ValueError: naming the bad or repeated indices and the allowed range.
    """
    folds = [int(k) for k in fold_indices]
    bad = sorted({k for k in folds if not 0 <= k < plan.n_folds})
    if bad:
        raise ValueError(f"fold_indices must be in 0..{plan.n_folds - 1}, got {bad}")
    repeated = sorted({k for k in folds if folds.count(k) > 1})
    if repeated:
        raise ValueError(f"fold_indices must list each fold once, got {repeated} more than once")
    return folds


class FoldRunner(ABC):
    """Trains a set of folds of one split and returns their results, keyed by fold index."""

    name: str

    @abstractmethod
    def run_folds(
        self,
        data: EncodedDataset,
        plan: SplitPlan,
        fold_indices: Sequence[int],
        config: TrainingConfig,
        folds_dir: str | Path,
        *,
        data_version: str,
        on_epoch: EpochCallback | None = None,
        reuse_finished: bool = True,
        log: LogCallback | None = None,
    ) -> dict[int, FoldResult]:
        """Train ``fold_indices`` of ``plan``; checkpoints and result records land in ``folds_dir``.

        Args:
            data: the encoded dataset (``encode_dataset``).
            plan: the split; each fold's train/val session ids.
            fold_indices: which folds to train (the run's partition keys as ints).
            config: the training config, the same for every fold.
            folds_dir: where every fold's checkpoint, sidecar and ``.result.json`` go.
            data_version: the dataset's content hash, recorded with each fold.
            on_epoch: called in this process and thread after every epoch of every fold, while
                folds run, with the trainer's record plus ``worker`` (``host:pid``), ``pid``,
                ``device`` and ``attempt`` (0 for the first try of a fold).
            reuse_finished: reuse a fold that already finished with the same data, split and
                config (checksum verified) instead of retraining it.
            log: called in this process with progress lines (fold started where, worker lost,
                fold reused).

        Returns:
            ``{fold: FoldResult}`` for every requested fold, in ``fold_indices`` order.

        Raises:
            NonFiniteLossError: a fold's loss became NaN or infinite (never retried).
            ValueError: a bad config or fold index (never retried).
            FoldWorkerLostError: (Ray) a fold's worker died more often than the retry budget.
            CheckpointError: (Ray) a returned checkpoint did not match its SHA-256.
        """
