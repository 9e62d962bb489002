"""Stage 5: why the ensemble decides what it decides (Integrated Gradients)."""

from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from legolas_ml.core.contracts import Candidate, ExplanationReport, LabeledDataset, StratifiedSplits
from legolas_ml.core.datasets import read_dataset
from legolas_ml.core import settings
from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
from legolas_ml.explain.attributions import EnsembleExplainer, IGSettings, select_texts, summarise
from legolas_ml.explain.report import write_report
from legolas_ml.data.splits import SplitPlan

from . import links, plots
from .resources import GPUResource, TrainingResource
from .stages import EXPLAINABILITY, SINGLE_RUN, placement
from .tenancy import TenantPlan


def build_explainability_report(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/explainability_report``."""

    @asset(
        key=tenant.key("explainability_report"), ins=tenant.ins("ensemble_model", "labeled_dataset", "stratified_splits"),
        **placement(tenant, EXPLAINABILITY), backfill_policy=SINGLE_RUN,
    )
    def explainability_report(
        context: AssetExecutionContext,
        ensemble_model: Candidate,
        labeled_dataset: LabeledDataset,
        stratified_splits: StratifiedSplits,
        training: TrainingResource,
        gpu: GPUResource,
    ) -> Output[ExplanationReport]:
        """Integrated Gradients explanations of held-out test texts, per class top words, as HTML/JSON/PNG."""
        per_class = settings.explain_per_class()
        ensemble = FoldEnsemble(ensemble_model.checkpoints, device=gpu.device_setting(), precision=EVAL_PRECISION)
        plan = SplitPlan.load(stratified_splits.path)
        test = read_dataset(labeled_dataset.path).set_index("session_id").loc[plan.test_ids]
        texts, y_true = test["text"].tolist(), test["label"].tolist()
        y_pred = ensemble.predict(texts)
        chosen = select_texts(plan.test_ids, y_true, y_pred, per_class=per_class, seed=training.config(gpu, tenant).seed)
        explainer = EnsembleExplainer(ensemble, IGSettings())
        explanations = []
        for n, i in enumerate(chosen):
            e = explainer.explain(texts[i], y_true[i])
            explanations.append(e)
            context.log.info(
                f"text {n + 1}/{len(chosen)}: predicted {e.predicted} (true {e.true_label}), {e.steps} steps, "
                f"error {e.completeness_error if e.completeness_error is None else round(e.completeness_error, 4)}, {e.seconds:.1f}s"
            )
        summary = summarise(explanations)
        # Beside the candidate's manifest, in this run's own directory: never overwritten by a later run
        # (`legolas status` shows the newest one: ModelRegistry.latest_report).
        directory = Path(ensemble_model.manifest_path).parent / "runs" / context.run_id / "explainability"
        paths = write_report(
            explanations, summary, directory, f"LEGOLAS explainability: tenant {tenant.name}, version {ensemble_model.version}"
        )
        training.registry(tenant.name).publish_run(ensemble_model.version, context.run_id)
        rows = [
            TableRecord({"class": label, "rank": r + 1, "word": w["word"], "mean_abs_attribution": round(w["mean_abs"], 5), "count": w["count"]})
            for label, words in summary.top_words.items()
            for r, w in enumerate(words)
        ]
        metadata = {
            "texts_explained": summary.n_texts,
            "share_converged": round(summary.share_converged, 4),
            "mean_steps": round(summary.mean_steps, 1),
            "seconds_per_text": round(summary.seconds_per_text, 2),
            "mean_completeness_error": round(summary.mean_completeness_error, 5) if summary.mean_completeness_error is not None else -1.0,
            "near_zero_delta_texts": summary.near_zero,
            "top_words": MetadataValue.table(
                records=rows,
                schema=TableSchema(columns=[TableColumn("class", "string"), TableColumn("rank", "int"), TableColumn("word", "string"),
                                            TableColumn("mean_abs_attribution", "float"), TableColumn("count", "int")]),
            ),
            "top_words_plot": plots.embed(paths["png"], "top words per class"),
            "report": MetadataValue.path(str(paths["html"])),
            "report_json": MetadataValue.path(str(paths["json"])),
            **links.urls({"report_url": paths["html"], "report_json_url": paths["json"]}),
        }
        value = ExplanationReport(
            tenant=tenant.name, report=str(paths["html"]), json=str(paths["json"]), n_texts=summary.n_texts,
            share_converged=summary.share_converged, mean_steps=summary.mean_steps, seconds_per_text=summary.seconds_per_text,
        )
        return Output(value, metadata=metadata)

    return explainability_report
