"""Stage 3: one fold model per partition, trained in the `gpu` pool."""

import json

from dagster import AssetExecutionContext, Failure, MetadataValue, Output, asset

from legolas_ml.lifecycle.artifacts import read_dataset, training_key
from legolas_ml.runners.base import FoldWorkerLostError
from legolas_ml.training.cross_validation import encode_dataset
from legolas_ml.data.splits import SplitPlan
from legolas_ml.training.trainer import NonFiniteLossError
from legolas_ml.training.training_log import close_training_log, open_training_log

from . import plots
from .checks import FOLD_CHECK_SPECS, fold_check_results
from .resources import GPUResource, TrainingResource
from .stages import SINGLE_RUN, TRAINING, fold_partitions


@asset(
    group_name=TRAINING,
    partitions_def=fold_partitions,
    backfill_policy=SINGLE_RUN,
    pool="gpu",
    check_specs=FOLD_CHECK_SPECS,
)
def fold_models(
    context: AssetExecutionContext,
    labeled_dataset: dict,
    stratified_splits: dict,
    training: TrainingResource,
    gpu: GPUResource,
):
    """One model per fold (focal loss, rewind early stopping), keeping only its best epoch."""
    config = training.config(gpu)
    device = gpu.resolved()
    plan = SplitPlan.from_dict(json.loads(open(stratified_splits["path"]).read()))
    keys = list(context.partition_keys)
    if plan.n_folds != len(fold_partitions.get_partition_keys()):
        raise Failure(
            description=f"the split has {plan.n_folds} folds but fold_models has "
            f"{len(fold_partitions.get_partition_keys())} partitions: LEGOLAS_PRESET/LEGOLAS_N_FOLDS changed "
            "since stratified_splits was materialized; re-materialize stratified_splits"
        )
    artifacts = training.artifacts(labeled_dataset["tenant"])
    # Keyed by data version, split and config: a retraining never writes into the champion's folds.
    key_of_training = training_key(labeled_dataset["data_version"], plan.fingerprint(), config.to_dict())
    folds_dir = artifacts.folds_dir(key_of_training)
    data = encode_dataset(read_dataset(labeled_dataset["path"]), config, cache_dir=artifacts.tokens_dir)
    logger, log_path = open_training_log(artifacts.logs_dir, context.run_id)
    context.log.info(f"training folds {keys} on {device['name']} ({device['precision']}); log file: {log_path}")

    def progress(record: dict) -> None:
        line = (
            f"fold {record['fold']} epoch {record['epoch']}: train_loss {record['train_loss']:.4f} "
            f"val_loss {record['val_loss']:.4f} val_bal_acc {record['val_balanced_accuracy']:.4f} "
            f"({record['elapsed_s']:.0f}s) - {record['checkpoint']}"
        )
        context.log.info(line)
        logger.info(line)

    def note(line: str) -> None:
        context.log.info(line)
        logger.info(line)

    results = {}
    try:
        runner = training.fold_runner()
        note(f"runner {runner.name}: folds {keys}, {len(data.session_ids)} sessions")
        try:
            fold_results = runner.run_folds(
                data, plan, [int(k) for k in keys], config, folds_dir, data_version=labeled_dataset["data_version"],
                on_epoch=progress, reuse_finished=training.reuse_finished_folds, log=note,
            )
        except (NonFiniteLossError, FoldWorkerLostError) as exc:
            logger.error(str(exc))
            raise Failure(description=str(exc)) from None
        for key in keys:
            result = fold_results[int(key)]
            curve = plots.training_curve(result.history, folds_dir / "curves" / f"fold{key}.png", f"fold {key}")
            results[key] = {
                **result.to_dict(),
                "data_version": labeled_dataset["data_version"],
                "split_fingerprint": plan.fingerprint(),
                "training_key": key_of_training,
                "curve_path": str(curve),
                "log_path": str(log_path),
            }
            if result.reused:
                note(f"fold {key}: finished earlier with the same data, split and config; checkpoint verified and reused")
            logger.info(f"fold {key}: done, shipped epoch {result.best_epoch}, {result.stop_reason}, reused={result.reused}")
    finally:
        close_training_log(logger)

    if len(keys) == 1:
        r = results[keys[0]]
        metadata = {
            "shipped_epoch": r["best_epoch"],
            "trigger_epoch": r["trigger_epoch"] if r["trigger_epoch"] is not None else -1,
            "rewind_epoch": r["rewind_epoch"] if r["rewind_epoch"] is not None else -1,
            "held_copies_peak": r.get("held_copies_peak", 0),
            "stop_reason": r["stop_reason"],
            "reused_finished_fold": r["reused"],
            "val_balanced_accuracy": r["best_metrics"]["balanced_accuracy"],
            "val_accuracy": r["best_metrics"]["accuracy"],
            "val_f1_macro": r["best_metrics"]["f1_macro"],
            "duration_s": round(r["duration_s"], 1),
            "train_samples_per_s": round(r["train_samples_per_s"], 1),
            "device": device["name"],
            "precision": r["precision"],
            "peak_memory_mb": round(r["peak_memory_mb"]),
            "checkpoint": MetadataValue.path(r["checkpoint_path"]),
            "training_log": MetadataValue.path(str(log_path)),
            "training_curve": plots.embed(r["curve_path"], f"fold {keys[0]} training curve"),
        }
        value = r
    else:
        metadata = {
            "folds": MetadataValue.md(_fold_table(results)),
            "device": device["name"],
            "training_log": MetadataValue.path(str(log_path)),
        }
        value = results
    yield Output(value, metadata=metadata)
    yield from fold_check_results(results, n_classes=len(data.labels))


def _fold_table(results: dict) -> str:
    lines = [
        "| fold | shipped epoch | rewind epoch | val bal. acc | val F1 | samples/s | duration s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {key} | {r['best_epoch']} | {'-' if r['rewind_epoch'] is None else r['rewind_epoch']} | {r['best_metrics']['balanced_accuracy']:.4f} | "
            f"{r['best_metrics']['f1_macro']:.4f} | {r['train_samples_per_s']:.1f} | {r['duration_s']:.0f} | {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines)
