"""Stage 3: one fold model per partition, trained in the `gpu` pool."""


from dagster import AssetExecutionContext, AssetsDefinition, AssetObservation, Failure, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.core.contracts import FoldModel, LabeledDataset, StratifiedSplits
from legolas_ml.core.datasets import read_dataset
from legolas_ml.lifecycle.fold_training import FoldLayoutError, fold_models_of, plan_fold_training
from legolas_ml.runners.base import FoldWorkerLostError
from legolas_ml.tracking import redacted, tracker_from_settings
from legolas_ml.training.cross_validation import encode_dataset
from legolas_ml.training.progress import ProgressSnapshot, TrainingProgress, format_duration
from legolas_ml.training.trainer import NonFiniteLossError
from legolas_ml.training.training_log import close_training_log, open_training_log

from . import plots
from .checks import fold_check_results, fold_check_specs
from .resources import GPUResource, TrainingResource
from .stages import SINGLE_RUN, TRAINING, placement
from .tenancy import TenantPlan


def build_fold_models(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/fold_models``: one partition per fold of the tenant's K."""

    @asset(
        key=tenant.key("fold_models"),
        ins=tenant.ins("labeled_dataset", "stratified_splits"),
        **placement(tenant, TRAINING),
        partitions_def=tenant.fold_partitions,
        backfill_policy=SINGLE_RUN,
        pool="gpu",
        check_specs=fold_check_specs(tenant),
    )
    def fold_models(
        context: AssetExecutionContext,
        labeled_dataset: LabeledDataset,
        stratified_splits: StratifiedSplits,
        training: TrainingResource,
        gpu: GPUResource,
    ):
        """One model per fold (focal loss, rewind early stopping), keeping only its best epoch."""
        resolved = training.resolved(gpu, tenant)
        keys = list(context.partition_keys)
        registry = training.registry(tenant.name)
        artifacts = registry.artifacts
        try:
            plan = plan_fold_training(
                registry, labeled_dataset, stratified_splits, resolved.config,
                [int(k) for k in keys], n_partitions=tenant.n_partitions, warm_start=training.warm_start_enabled(),
                reuse_finished=training.reuse_finished_folds,
            )
        except FoldLayoutError as exc:
            raise Failure(description=f"{tenant.key('fold_models').to_user_string()}: {exc}") from None
        config = plan.config
        context.log.info(plan.start_reason)
        device = gpu.resolved()
        data = encode_dataset(read_dataset(labeled_dataset.path), config, cache_dir=artifacts.tokens_dir)
        logger, log_path = open_training_log(artifacts.logs_dir, context.run_id)
        context.log.info(f"training folds {keys} on {device['name']} ({device['precision']}); log file: {log_path}")

        estimate = TrainingProgress([int(k) for k in keys], config.epochs)
        for fold in plan.finished:  # folds finished by an earlier run train no epoch in this one
            estimate.mark_reused(fold)

        def progress(record: dict) -> None:
            snapshot = estimate.epoch_finished(record["fold"], record["epoch"], stopping=record.get("stopping", False))
            line = (
                f"fold {record['fold']} epoch {record['epoch']}: train_loss {record['train_loss']:.4f} "
                f"val_loss {record['val_loss']:.4f} val_bal_acc {record['val_balanced_accuracy']:.4f} "
                f"({record['elapsed_s']:.0f}s) - {record['checkpoint']}; {snapshot.describe()}"
            )
            context.log.info(line)
            logger.info(line)
            # One observation per fold and epoch: the run page's event stream and the partition's
            # events show the curve growing while the fold trains, before any materialization exists.
            context.log_event(AssetObservation(
                asset_key=context.asset_key, partition=str(record["fold"]), metadata=epoch_metadata(record, snapshot),
            ))

        def note(line: str) -> None:
            context.log.info(line)
            logger.info(line)

        try:
            runner = training.fold_runner()
            note(f"runner {runner.name}: folds {keys}, {len(data.session_ids)} sessions")
            try:
                fold_results = runner.run_folds(
                    data, plan.plan, [int(k) for k in keys], config, plan.folds_dir, data_version=labeled_dataset.data_version,
                    on_epoch=progress, reuse_finished=training.reuse_finished_folds, log=note,
                )
            except (NonFiniteLossError, FoldWorkerLostError) as exc:
                logger.error(str(exc))
                raise Failure(description=str(exc)) from None
            curves = {
                fold: plots.training_curve(result.history, plan.folds_dir / "curves" / f"fold{fold}.png", f"fold {fold}")
                for fold, result in fold_results.items()
            }
            # What each fold was trained with and where each value came from (the version records it).
            results = fold_models_of(fold_results, plan, labeled_dataset, {**resolved.to_dict(), "config": config.to_dict()},
                                     curves, str(log_path))
            for key in keys:
                result = results[key]
                if result.reused:
                    note(f"fold {key}: finished earlier with the same data, split and config; checkpoint verified and reused")
                logger.info(f"fold {key}: done, shipped epoch {result.best_epoch}, {result.stop_reason}, reused={result.reused}")
        finally:
            close_training_log(logger)

        try:  # MLflow mirrors the registry: a bad URI, a missing package or an outage never fails a training
            tracker = tracker_from_settings()  # None unless LEGOLAS_MLFLOW_TRACKING_URI is set
            run_ids = tracker.log_folds(tenant.name, plan.training_key, config.to_dict(), _as_dicts(results)) if tracker else {}
        except Exception as exc:  # noqa: BLE001
            context.log.warning(f"MLflow tracking failed, folds not logged there: {redacted(exc)}")
            run_ids = {}
        for key, run_id in run_ids.items():
            results[key].mlflow_run_id = run_id
        # Each fold partition gets its own numbers and curve, even when all folds train in one run
        # (Output metadata alone would give every partition of the run the same values).
        for key in keys:
            context.add_asset_metadata(fold_metadata(results[key]), partition_key=key)
        metadata = {
            "folds_in_this_run": len(keys),
            "warm_start": plan.start_reason,
            "device": device["name"],
            "training_log": MetadataValue.path(str(log_path)),
        }
        yield Output(results[keys[0]] if len(keys) == 1 else results, metadata=metadata)
        yield from fold_check_results(_as_dicts(results), n_classes=len(data.labels), asset_key=tenant.key("fold_models"))

    return fold_models


def epoch_metadata(record: dict, snapshot: ProgressSnapshot) -> dict:
    """An epoch's observation: its numbers (the partition's Plots tab draws them), then the run's progress."""
    return {
        "epoch": record["epoch"],
        "train_loss": round(record["train_loss"], 4),
        "val_loss": round(record["val_loss"], 4),
        "val_balanced_accuracy": round(record["val_balanced_accuracy"], 4),
        "val_f1_macro": round(record["val_f1_macro"], 4),
        "checkpoint": record["checkpoint"],
        "fold_elapsed_s": round(record["elapsed_s"], 1),
        "run_epochs_done": snapshot.epochs_done,
        "run_epochs_at_most": snapshot.epochs_at_most,
        "run_folds_done": f"{snapshot.folds_done}/{snapshot.n_folds}",
        "remaining_s_at_most": round(snapshot.remaining_s_at_most, 1),
        "remaining": f"about {format_duration(snapshot.remaining_s_at_most)} (if every open fold runs all its epochs)",
    }


def _curve_table(history: list[dict], shipped_epoch: int) -> MetadataValue:
    """One row per epoch: losses, validation balanced accuracy and F1, and which epoch ships."""
    rows = [
        TableRecord({
            "epoch": h["epoch"],
            "train_loss": round(h["train_loss"], 4),
            "val_loss": round(h["val_loss"], 4),
            "val_balanced_accuracy": round(h["val_balanced_accuracy"], 4),
            "val_f1_macro": round(h.get("val_f1_macro", float("nan")), 4),
            "shipped": "yes" if h["epoch"] == shipped_epoch else "",
        })
        for h in history
    ]
    return MetadataValue.table(rows, schema=TableSchema(columns=[
        TableColumn("epoch", "int"), TableColumn("train_loss", "float"), TableColumn("val_loss", "float"),
        TableColumn("val_balanced_accuracy", "float"), TableColumn("val_f1_macro", "float"), TableColumn("shipped", "string"),
    ]))


def _as_dicts(results: dict[str, FoldModel]) -> dict[str, dict]:
    """The folds as JSON objects, for the pure check verdicts and the MLflow tracker."""
    return {key: result.to_dict() for key, result in results.items()}


def fold_metadata(fold: FoldModel) -> dict:
    """One fold partition's materialization metadata: headline numbers first, then how it trained."""
    metrics = fold.best_metrics
    early = fold.trigger_epoch is not None
    return {
        "val_balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "val_f1_macro": round(metrics["f1_macro"], 4),
        "val_accuracy": round(metrics["accuracy"], 4),
        "shipped_epoch": fold.best_epoch,
        "epochs_run": fold.epochs_run,
        "stopped_early": early,
        # Words, never a raw None: "ran every epoch" or where early stopping triggered and rewound to.
        "early_stopping": (
            f"triggered at epoch {fold.trigger_epoch}, rewound to epoch {fold.rewind_epoch}" if early else "ran every epoch"
        ),
        "stop_reason": fold.stop_reason,
        "train_samples_per_s": round(fold.train_samples_per_s, 1),
        "duration_s": round(fold.duration_s, 1),
        "peak_memory_mb": round(fold.peak_memory_mb),
        "held_copies_peak": fold.held_copies_peak,
        "precision": fold.precision,
        "reused_finished_fold": fold.reused,
        # Dagster 1.13 shows Markdown (the PNG) behind a "Show Markdown" button; the same curve as a
        # table renders inline on the partition's page.
        "curve_by_epoch": _curve_table(fold.history, fold.best_epoch),
        "training_curve": plots.embed(fold.curve_path, f"fold {fold.fold} training curve"),
        "checkpoint": MetadataValue.path(fold.checkpoint_path),
        **({"mlflow_run_id": fold.mlflow_run_id} if fold.mlflow_run_id else {}),
    }
