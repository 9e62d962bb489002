"""How one run trains its fold partitions: where from (warm start), where to (the training key), what is done already.

``plan_fold_training`` makes every decision the ``fold_models`` asset needs before a fold trains;
``fold_models_of`` turns the runner's results into the asset's typed values. Between the two the
asset only streams progress and calls the runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legolas_ml.core.contracts import FoldModel, FoldResult, LabeledDataset, StratifiedSplits
from legolas_ml.core.identity import training_key
from legolas_ml.data.splits import SplitPlan
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.lifecycle.retraining import warm_start_checkpoints
from legolas_ml.training.checkpoint import checkpoint_filename
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import finished_fold


class FoldLayoutError(ValueError):
    """The split has another number of folds than the asset has partitions."""


@dataclass
class FoldTraining:
    """What a run of ``fold_models`` trains with, and why."""

    config: TrainingConfig  # the resolved config, with the warm start's checkpoints
    plan: SplitPlan
    training_key: str  # data version + split + config: a retraining never writes into the champion's folds
    folds_dir: Path
    start_reason: str  # where the folds start from, in words
    finished: list[int] = field(default_factory=list)  # folds of this run an earlier run finished (expected to be reused)


def plan_fold_training(
    registry: ModelRegistry,
    dataset: LabeledDataset,
    splits: StratifiedSplits,
    config: TrainingConfig,
    folds: Sequence[int],
    *,
    n_partitions: int,
    warm_start: bool,
    reuse_finished: bool,
) -> FoldTraining:
    """Decide where this run's ``folds`` start from and which of them an earlier run finished.

    The warm start follows the champion the quality gate read (``dataset.champion_version``), not
    whatever serves now: it is part of the training key, so a run and its retry train the same thing.

    Raises:
        FoldLayoutError: the split's K differs from ``n_partitions`` (the tenant's K changed since the split).
    """
    plan = SplitPlan.load(splits.path)
    if plan.n_folds != n_partitions:
        raise FoldLayoutError(
            f"the split has {plan.n_folds} folds but fold_models has {n_partitions} partitions: the tenant's n_folds "
            "(or LEGOLAS_PRESET/LEGOLAS_N_FOLDS) changed since stratified_splits was materialized; re-materialize stratified_splits"
        )
    champion, unreadable = dataset.champion_version, None
    try:
        manifest = registry.manifest(champion) if champion else None
    except (ValueError, ChampionUnavailableError) as exc:  # pruned or damaged since: start cold, say why
        manifest, unreadable = None, f"champion {champion} is unreadable ({exc}): starts from the pretrained model"
    starts, reason = warm_start_checkpoints(
        manifest, config.model_name, config.model_overrides, warm_start,
        data_version=dataset.data_version, split_fingerprint=plan.fingerprint(),
    )
    config = config.replace(init_checkpoints=starts)
    key = training_key(dataset.data_version, plan.fingerprint(), config.to_dict())
    folds_dir = registry.artifacts.folds_dir(key)
    finished = []
    if reuse_finished:
        # For the progress estimate only: the runner verifies each fold's weights before it reuses one,
        # so reading and hashing every checkpoint here too would be the same work twice.
        for fold in folds:
            checkpoint = folds_dir / checkpoint_filename(config.text_format, config.model_name, fold)
            if finished_fold(checkpoint, dataset.data_version, plan.fingerprint(), config, verify_weights=False) is not None:
                finished.append(fold)
    return FoldTraining(config, plan, key, folds_dir, unreadable or reason, finished)


def fold_models_of(
    results: Mapping[int, FoldResult],
    training: FoldTraining,
    dataset: LabeledDataset,
    training_config: dict[str, Any],
    curve_paths: Mapping[int, str],
    log_path: str,
) -> dict[str, FoldModel]:
    """The fold partitions' values, keyed by partition key: each result and what it was trained on."""
    return {
        str(fold): FoldModel(
            **result.to_dict(),
            data_version=dataset.data_version,
            split_fingerprint=training.plan.fingerprint(),
            training_key=training.training_key,
            training_config=training_config,
            curve_path=str(curve_paths[fold]),
            log_path=str(log_path),
        )
        for fold, result in results.items()
    }
