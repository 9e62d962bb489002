"""Stage 4: cross-validated metrics, and the softmax-averaging ensemble evaluated on the test set beside a
TF-IDF + logistic regression baseline trained on the same folds."""

from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, Failure, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.core.contracts import Candidate, CvMetrics, FoldModel, LabeledDataset, StratifiedSplits
from legolas_ml.evaluation.baseline import BASELINE_NAME
from legolas_ml.evaluation.cross_validation import MissingFoldsError, StaleFoldError, aggregate_folds
from legolas_ml.lifecycle.candidate import CandidateEvaluation, CandidateInputsError, evaluate_candidate

from . import links, plots
from .resources import GPUResource, LifecycleResource, TrainingResource
from .stages import EVALUATION, SINGLE_RUN, placement
from .tenancy import TenantPlan


CONFUSION_PNG = "confusion_matrix.png"


def _by_fold(fold_models: dict[str, FoldModel]) -> dict[int, FoldModel]:
    """The fold partitions' values by fold index (the IO manager keys them by partition key)."""
    return {int(k): v for k, v in fold_models.items()}


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> MetadataValue:
    """A table whose floats are rounded to 4 digits, so the UI shows numbers and not 16-digit floats."""
    return MetadataValue.table(
        records=[TableRecord({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}) for row in rows],
        schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in columns]),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def mean_pm_std(stats: dict) -> str:
    """``{"mean": .81234, "std": .0211}`` -> ``"0.8123 ± 0.0211"`` (the headline people read first)."""
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def build_evaluation(tenant: TenantPlan) -> list[AssetsDefinition]:
    """``<tenant>/cv_metrics`` and ``<tenant>/ensemble_model``."""

    @asset(key=tenant.key("cv_metrics"), ins=tenant.ins("stratified_splits", "fold_models"), **placement(tenant, EVALUATION), backfill_policy=SINGLE_RUN)
    def cv_metrics(
        context: AssetExecutionContext, stratified_splits: StratifiedSplits, fold_models: dict[str, FoldModel],
        training: TrainingResource,
    ) -> Output[CvMetrics]:
        """Mean ± std across folds of balanced accuracy, accuracy, macro-F1 and per-class recall."""
        folds = _by_fold(fold_models)
        try:
            cv = aggregate_folds(
                {k: f.to_dict() for k, f in folds.items()}, stratified_splits.n_folds, stratified_splits.data_version,
                stratified_splits.fingerprint,
            )
        except (MissingFoldsError, StaleFoldError) as exc:
            raise Failure(description=str(exc)) from None
        worst_class, worst_recall = min(cv.per_class_recall.items(), key=lambda kv: kv[1]["mean"])
        # Under the run's own directory: an older materialization's plot is never replaced by a newer one.
        curves = plots.fold_curves(
            {k: f.history for k, f in folds.items()},
            training.artifacts(tenant.name).folds_dir(folds[0].training_key) / "runs" / context.run_id / "fold_curves.png",
            f"validation balanced accuracy of {cv.n_folds} folds",
        )
        metadata = {
            # The headline first: what people look for before anything else.
            "cv_balanced_accuracy": mean_pm_std(cv.balanced_accuracy),
            "balanced_accuracy_mean": round(cv.balanced_accuracy["mean"], 4),
            "balanced_accuracy_std": round(cv.balanced_accuracy["std"], 4),
            "worst_class_recall": round(worst_recall["mean"], 4),
            "worst_class": worst_class,
            "fold_spread": round(cv.fold_spread, 4),
            "fold_curves": plots.embed(curves, "validation curves of every fold"),
            "per_fold": _table(cv.per_fold, [("fold", "int"), ("balanced_accuracy", "float"), ("accuracy", "float"),
                                                ("f1_macro", "float"), ("best_epoch", "int")]),
            "per_class_recall": _table(
                [{"class": c, "recall_mean": v["mean"], "recall_std": v["std"]} for c, v in cv.per_class_recall.items()],
                [("class", "string"), ("recall_mean", "float"), ("recall_std", "float")],
            ),
        }
        for metric in ("accuracy", "f1_macro"):
            metadata[f"{metric}_mean"] = round(getattr(cv, metric)["mean"], 4)
            metadata[f"{metric}_std"] = round(getattr(cv, metric)["std"], 4)
        # One numeric entry per fold: the Plots tab draws one series per fold across materializations.
        for row in cv.per_fold:
            metadata[f"fold_{row['fold']}_balanced_accuracy"] = round(row["balanced_accuracy"], 4)
        metadata.update({
            "n_folds": cv.n_folds,
            "data_version": cv.data_version,
            "split_fingerprint": cv.split_fingerprint,
            "fold_curves_png": MetadataValue.path(str(curves)),
        })
        context.log.info(f"CV balanced accuracy {mean_pm_std(cv.balanced_accuracy)} over {cv.n_folds} folds")
        return Output(cv, metadata=metadata)

    @asset(
        key=tenant.key("ensemble_model"), ins=tenant.ins("labeled_dataset", "stratified_splits", "fold_models", "cv_metrics"),
        **placement(tenant, EVALUATION), backfill_policy=SINGLE_RUN,
    )
    def ensemble_model(
        context: AssetExecutionContext,
        labeled_dataset: LabeledDataset,
        stratified_splits: StratifiedSplits,
        fold_models: dict[str, FoldModel],
        cv_metrics: CvMetrics,
        training: TrainingResource,
        lifecycle: LifecycleResource,
        gpu: GPUResource,
    ) -> Output[Candidate]:
        """A candidate: the K fold models as one classifier (mean softmax), evaluated once on the held-out
        test set. It serves nothing until `promoted_ensemble` promotes it."""
        def draw(run_dir: Path, metrics: dict, labels: list[str]) -> None:  # published with the version
            plots.confusion_matrix(
                metrics["confusion_matrix"], labels, run_dir / CONFUSION_PNG, f"ensemble of {stratified_splits.n_folds} folds, test set",
            )

        try:
            evaluation = evaluate_candidate(
                lifecycle.registry(training, tenant.name), labeled_dataset, stratified_splits, _by_fold(fold_models), cv_metrics,
                run_id=context.run_id, device=gpu.device_setting(), before_recording=draw,
            )
        except CandidateInputsError as exc:
            raise Failure(description=str(exc)) from None
        candidate, metrics, human, agreement = evaluation.candidate, evaluation.test_metrics, evaluation.human, evaluation.agreement
        metadata = candidate_metadata(evaluation, cv_metrics, labeled_dataset, Path(candidate.run_dir) / CONFUSION_PNG)
        context.log.info(
            f"candidate {candidate.version}: test balanced accuracy {_shown(human['balanced_accuracy'])} on {human['n']} human-labelled "
            f"sessions; agreement with the LLM {_shown(agreement['balanced_accuracy'])} (balanced) on {agreement['n']} "
            f"LLM-labelled ones; mixed {metrics['balanced_accuracy']:.4f} on {metrics['n']}; {BASELINE_NAME} mixed "
            f"{evaluation.baseline.test_metrics['balanced_accuracy']:.4f}"
        )
        return Output(candidate, metadata=metadata)

    return [cv_metrics, ensemble_model]


def candidate_metadata(evaluation: CandidateEvaluation, cv_metrics: CvMetrics, dataset: LabeledDataset, plot: Path) -> dict:
    """What ``ensemble_model`` shows: the human-labelled score first, the LLM agreement, then the mixed numbers."""
    candidate, metrics, baseline = evaluation.candidate, evaluation.test_metrics, evaluation.baseline
    human, agreement, labels = evaluation.human, evaluation.agreement, candidate.labels
    worst_class = min(labels, key=lambda c: metrics["per_class"][c]["recall"])
    return {
        # The headline first: balanced accuracy on the human-labelled test sessions (None when there
        # are none), agreement with the LLM on the LLM-labelled ones, then both together ("mixed").
        "test_balanced_accuracy_human": _rounded(human["balanced_accuracy"]),
        "test_accuracy_human": _rounded(human["accuracy"]),
        "test_n_human": human["n"],
        "llm_agreement_balanced_accuracy": _rounded(agreement["balanced_accuracy"]),
        "llm_agreement_accuracy": _rounded(agreement["accuracy"]),
        "llm_agreement_n": agreement["n"],
        "test_balanced_accuracy_mixed": round(metrics["balanced_accuracy"], 4),
        "cv_balanced_accuracy": mean_pm_std(cv_metrics.balanced_accuracy),
        "cv_balanced_accuracy_mean": round(cv_metrics.balanced_accuracy["mean"], 4),
        "cv_balanced_accuracy_std": round(cv_metrics.balanced_accuracy["std"], 4),
        "worst_class_recall": round(metrics["per_class"][worst_class]["recall"], 4),
        "worst_class": worst_class,
        "test_accuracy_mixed": round(metrics["accuracy"], 4),
        "test_f1_macro_mixed": round(metrics["f1_macro"], 4),
        "test_n": metrics["n"],
        "vs_baseline": _table(
            [
                {"model": "ensemble", "cv_balanced_accuracy": mean_pm_std(cv_metrics.balanced_accuracy),
                 "test_balanced_accuracy_mixed": metrics["balanced_accuracy"],
                 "test_balanced_accuracy_human": human["balanced_accuracy"], "test_accuracy_mixed": metrics["accuracy"]},
                {"model": BASELINE_NAME, "cv_balanced_accuracy": mean_pm_std(baseline.cv["balanced_accuracy"]),
                 "test_balanced_accuracy_mixed": baseline.test_metrics["balanced_accuracy"],
                 "test_balanced_accuracy_human": baseline.test_metrics_human["balanced_accuracy"],
                 "test_accuracy_mixed": baseline.test_metrics["accuracy"]},
            ],
            [("model", "string"), ("cv_balanced_accuracy", "string"), ("test_balanced_accuracy_mixed", "float"),
             ("test_balanced_accuracy_human", "float"), ("test_accuracy_mixed", "float")],
        ),
        "baseline_test_balanced_accuracy_mixed": round(baseline.test_metrics["balanced_accuracy"], 4),
        "baseline_test_balanced_accuracy_human": _rounded(baseline.test_metrics_human["balanced_accuracy"]),
        "baseline_cv_balanced_accuracy": mean_pm_std(baseline.cv["balanced_accuracy"]),
        "baseline_fit_s": round(baseline.fit_s, 2),
        "per_class": _table(
            [{"class": c, **metrics["per_class"][c]} for c in labels],
            [("class", "string"), ("precision", "float"), ("recall", "float"), ("f1", "float"), ("support", "int")],
        ),
        # Inline tables (no dialog): rows are true classes, columns predicted ones.
        "confusion_matrix_counts": _confusion_table(metrics["confusion_matrix"], labels, normalised=False),
        "confusion_matrix_normalised": _confusion_table(metrics["confusion_matrix"], labels, normalised=True),
        "confusion_matrix_plot": plots.embed(plot, "confusion matrix"),
        "version": candidate.version,
        "tenant": candidate.manifest["tenant"],
        "n_folds": len(candidate.checkpoints),
        "mode": dataset.mode,
        "source_counts": MetadataValue.json(dataset.summary["per_source"]),
        "inference_s": round(evaluation.inference_s, 2),
        "manifest": MetadataValue.path(str(evaluation.run_manifest)),
        "baseline": MetadataValue.path(baseline.path),
        "confusion_matrix_png": MetadataValue.path(str(plot)),
        **links.urls({"manifest_url": evaluation.run_manifest, "confusion_matrix_url": plot}),
    }

def _confusion_table(matrix: list[list[int]], labels: list[str], *, normalised: bool) -> MetadataValue:
    """The confusion matrix as a table: counts, or each row's shares (the diagonal is the class's recall)."""
    rows = []
    for i, true in enumerate(labels):
        total = sum(matrix[i]) or 1
        cells = {p: (matrix[i][j] / total if normalised else matrix[i][j]) for j, p in enumerate(labels)}
        rows.append({"true": true, **cells})
    return _table(rows, [("true", "string")] + [(p, "float" if normalised else "int") for p in labels])
