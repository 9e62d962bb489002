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
from typing import Any

from legolas_ml.data.splits import SplitPlan
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import EncodedDataset
from legolas_ml.training.trainer import EpochCallback, FoldResult

RUNNERS = ("auto", "sequential", "ray")

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


def make_runner(
    name: str = "sequential",
    *,
    address: str | None = None,
    gpus_per_fold: float | None = None,
    cpus_per_fold: float = 1,
    max_retries: int = 2,
    runtime_env: dict[str, Any] | None = None,
) -> FoldRunner:
    """The fold runner called ``name``.

    Args:
        name: ``"sequential"`` (one fold after another, in this process), ``"ray"`` (one Ray task
            per fold) or ``"auto"`` (Ray when ``address`` is given, or when more than one CUDA
            device is visible and Ray is installed; sequential otherwise).
        address: Ray only. ``None`` or ``""`` starts an embedded Ray instance that sees this
            machine's CPUs and GPUs; ``"auto"`` joins the cluster started here with ``ray start``;
            ``"ray://head:10001"`` connects to a remote cluster (KubeRay, ``ray start --head``).
        gpus_per_fold: Ray only. The GPUs each fold task declares: 1, or a fraction to pack several
            small folds on one large GPU (0.25: four folds per GPU). ``None``: 1 when the config
            may use CUDA and the cluster has GPUs, else 0.
        cpus_per_fold: Ray only. The CPUs each fold task declares (its torch thread count).
        max_retries: Ray only. How often a fold is retried when its worker or node dies; a fold
            that raises (NaN loss, bad config) is never retried.
        runtime_env: Ray only. Passed to ``ray.init`` (e.g. ``{"env_vars": {...}}``).

    Raises:
        ValueError: an unknown name or an out-of-range setting.
        ImportError: ``"ray"`` without Ray installed (``pip install -e '.[ray]'``).
    """
    if name not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {name!r}")
    if name == "auto":
        name = "ray" if address or (_ray_installed() and _cuda_device_count() > 1) else "sequential"
    if name == "sequential":
        from legolas_ml.runners.sequential import SequentialRunner

        return SequentialRunner()
    from legolas_ml.runners.ray_runner import RayRunner

    return RayRunner(
        address=address or None,
        gpus_per_fold=gpus_per_fold,
        cpus_per_fold=cpus_per_fold,
        max_retries=max_retries,
        runtime_env=runtime_env,
    )


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
