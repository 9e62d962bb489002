"""The sequential fold runner: every fold in this process, one after another, on one device."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from legolas_ml.data.splits import SplitPlan
from legolas_ml.runners.base import FoldRunner, LogCallback, check_fold_indices, worker_name
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import EncodedDataset, train_plan_fold
from legolas_ml.training.modeling import resolve_device
from legolas_ml.training.trainer import EpochCallback, FoldResult


class SequentialRunner(FoldRunner):
    """Calls ``train_plan_fold`` for each fold in turn: the default on a CPU or a single GPU."""

    name = "sequential"

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
        folds = check_fold_indices(plan, fold_indices)
        tags = {"worker": worker_name(), "pid": os.getpid(), "device": str(resolve_device(config.device)), "attempt": 0}

        def tagged(record: dict) -> None:
            # A copy: the trainer keeps the same dict in the fold's history, which must not change.
            on_epoch({**record, **tags})

        results: dict[int, FoldResult] = {}
        for k in folds:
            if log is not None:
                spec = plan.folds[k]
                log(f"fold {k}: start ({len(spec.train_ids)} train / {len(spec.val_ids)} val) on {tags['worker']} ({tags['device']})")
            results[k] = train_plan_fold(
                data, plan, k, config, Path(folds_dir), data_version=data_version,
                on_epoch=tagged if on_epoch is not None else None, reuse_finished=reuse_finished,
            )
        return results
