"""Stage 4: cross-validated metrics, and the softmax-averaging ensemble evaluated on the test set."""

import json
import time

from dagster import AssetExecutionContext, Failure, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.evaluation.ensemble import EVAL_PRECISION
from legolas_ml.lifecycle.artifacts import read_dataset
from legolas_ml.training.checkpoint import read_sidecar
from legolas_ml.training.cross_validation import MissingFoldsError, StaleFoldError, aggregate_folds, evaluate_ensemble
from legolas_ml.data.splits import SplitPlan

from . import plots
from .resources import GPUResource, LifecycleResource, TrainingResource
from .stages import EVALUATION, SINGLE_RUN


def _fold_summaries(fold_models: dict) -> dict[int, dict]:
    return {int(k): v for k, v in fold_models.items()}


@asset(group_name=EVALUATION, backfill_policy=SINGLE_RUN)
def cv_metrics(context: AssetExecutionContext, stratified_splits: dict, fold_models: dict) -> Output[dict]:
    """Mean ± std across folds of balanced accuracy, accuracy, macro-F1 and per-class recall."""
    try:
        cv = aggregate_folds(
            _fold_summaries(fold_models),
            stratified_splits["n_folds"],
            stratified_splits["data_version"],
            stratified_splits["fingerprint"],
        )
    except (MissingFoldsError, StaleFoldError) as exc:
        raise Failure(description=str(exc)) from None
    per_fold = MetadataValue.table(
        records=[TableRecord({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}) for row in cv["per_fold"]],
        schema=TableSchema(
            columns=[TableColumn("fold", "int"), TableColumn("balanced_accuracy", "float"), TableColumn("accuracy", "float"),
                     TableColumn("f1_macro", "float"), TableColumn("best_epoch", "int")]
        ),
    )
    metadata = {
        "n_folds": cv["n_folds"],
        "per_fold": per_fold,
        "per_class_recall": MetadataValue.json(cv["per_class_recall"]),
        "data_version": cv["data_version"],
        "split_fingerprint": cv["split_fingerprint"],
    }
    for metric in ("balanced_accuracy", "accuracy", "f1_macro"):
        metadata[f"{metric}_mean"] = round(cv[metric]["mean"], 4)
        metadata[f"{metric}_std"] = round(cv[metric]["std"], 4)
    context.log.info(
        f"CV balanced accuracy {cv['balanced_accuracy']['mean']:.4f} ± {cv['balanced_accuracy']['std']:.4f} over {cv['n_folds']} folds"
    )
    return Output(cv, metadata=metadata)


@asset(group_name=EVALUATION, backfill_policy=SINGLE_RUN)
def ensemble_model(
    context: AssetExecutionContext,
    labeled_dataset: dict,
    stratified_splits: dict,
    fold_models: dict,
    cv_metrics: dict,
    training: TrainingResource,
    lifecycle: LifecycleResource,
    gpu: GPUResource,
) -> Output[dict]:
    """A candidate: the K fold models as one classifier (mean softmax), evaluated once on the held-out
    test set. It serves nothing until `promoted_ensemble` promotes it."""
    if cv_metrics["split_fingerprint"] != stratified_splits["fingerprint"]:
        raise Failure(description="cv_metrics was computed on another split; re-materialize cv_metrics first")
    folds = _fold_summaries(fold_models)
    keys = {f.get("training_key") for f in folds.values()}
    if len(keys) != 1 or None in keys:
        raise Failure(description=f"the folds come from different trainings {sorted(map(str, keys))}; re-materialize fold_models")
    version = keys.pop()
    paths = [folds[k]["checkpoint_path"] for k in range(stratified_splits["n_folds"])]
    plan = SplitPlan.from_dict(json.loads(open(stratified_splits["path"]).read()))
    df = read_dataset(labeled_dataset["path"]).set_index("session_id")
    test = df.loc[plan.test_ids]
    started = time.perf_counter()
    # Every reported number is computed in fp32 (training may use bf16): the mistakes explained by
    # Integrated Gradients, which run in fp32, are then the ones evaluated here.
    metrics, _, ensemble = evaluate_ensemble(paths, test["text"].tolist(), test["label"].tolist(), gpu.device, EVAL_PRECISION)
    seconds = time.perf_counter() - started
    registry = lifecycle.registry(training, labeled_dataset["tenant"])
    plot = plots.confusion_matrix(
        metrics["confusion_matrix"], ensemble.labels, registry.version_dir(version) / "confusion_matrix.png",
        f"ensemble of {len(paths)} folds, test set",
    )
    summary = labeled_dataset["summary"]
    manifest = {
        "version": version,
        "tenant": labeled_dataset["tenant"],
        "checkpoints": paths,
        "sha256": [read_sidecar(p)["sha256"] for p in paths],
        "labels": ensemble.labels,
        "data_version": labeled_dataset["data_version"],
        "split_fingerprint": stratified_splits["fingerprint"],
        "mode": labeled_dataset["mode"],
        "source_counts": summary["per_source"],
        "dataset_summary": {"rows": summary.get("rows"), "per_source": summary["per_source"], "per_class": summary["per_class"]},
        "reviews_cursor": summary.get("reviews_cursor"),  # the reviews this training read: consumed once decided
        "holdout": summary.get("holdout"),
        "test_metrics": metrics,
        "eval_precision": EVAL_PRECISION,
        "cv_balanced_accuracy": cv_metrics["balanced_accuracy"],
        "run_id": context.run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # A version on disk, not the model in service: promotion is a separate, checked decision.
    manifest_path = registry.write_candidate(manifest)
    matrix_rows = [
        TableRecord({"true": c, **{p: metrics["confusion_matrix"][i][j] for j, p in enumerate(ensemble.labels)}})
        for i, c in enumerate(ensemble.labels)
    ]
    metadata = {
        "version": version,
        "tenant": labeled_dataset["tenant"],
        "n_folds": len(paths),
        "mode": labeled_dataset["mode"],
        "source_counts": MetadataValue.json(summary["per_source"]),
        "test_n": metrics["n"],
        "test_balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_f1_macro": round(metrics["f1_macro"], 4),
        "cv_balanced_accuracy_mean": round(cv_metrics["balanced_accuracy"]["mean"], 4),
        "per_class": MetadataValue.json(metrics["per_class"]),
        "confusion_matrix": MetadataValue.table(
            records=matrix_rows,
            schema=TableSchema(columns=[TableColumn("true", "string")] + [TableColumn(c, "int") for c in ensemble.labels]),
        ),
        "confusion_matrix_plot": plots.embed(plot, "confusion matrix"),
        "inference_s": round(seconds, 2),
        "manifest": MetadataValue.path(str(manifest_path)),
    }
    context.log.info(
        f"candidate {version}: test balanced accuracy {metrics['balanced_accuracy']:.4f} on {metrics['n']} sessions"
    )
    return Output({**manifest, "manifest_path": str(manifest_path)}, metadata=metadata)
