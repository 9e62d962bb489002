"""Stage 7-8: the ensemble in service scores every unreviewed conversation and audits the LLM labels,
filling the human review queue whose answers the sensor trains on."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pymongo.errors import PyMongoError

from legolas_ml.data.splits import SplitPlan
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.data.store_lock import StoreBusyError
from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
from legolas_ml.core.datasets import read_dataset
from legolas_ml.lifecycle.registry import ChampionUnavailableError
from legolas_ml.review.label_audit import run_label_audit
from legolas_ml.review.queue import review_queue
from legolas_ml.scoring.predictions import score_documents

from .resources import GPUResource, LifecycleResource, MongoResource, ReviewLoopResource, TrainingResource
from .stages import REVIEW_LOOP, SINGLE_RUN, placement
from .tenancy import TenantPlan

COVERAGE = "predictions_cover_unreviewed"
FLAGGED_SHARE = "flagged_share_under_threshold"
# StoreBusyError: an import held the embedded store's writer lock longer than the wait; retry later.
_STORE_ERRORS = (StoreUnavailableError, StoreBusyError, PyMongoError)


def _settings_and_champion(asset_name: str, review: ReviewLoopResource, training: TrainingResource, lifecycle: LifecycleResource, owner: TenantPlan):
    """The tenant's loop settings (all checked before any work) and its champion's manifest (``None``: no model in service)."""
    try:
        settings = review.audit_settings(owner)
        return settings, lifecycle.registry(training, owner.name).champion()
    except (ValueError, ChampionUnavailableError) as exc:
        raise Failure(description=f"{asset_name}: {exc}") from None


def _no_model_in_service(context, tenant: str, check: str, nothing: str):
    """A tenant without a champion: recorded as such, never a failure (a first candidate may be rejected)."""
    reason = (
        f"tenant {tenant!r} has no model in service yet: materialize the training chain until a candidate is "
        f"promoted, or `legolas promote --tenant {tenant} --version V`"
    )
    context.log.warning(reason)
    yield Output({"tenant": tenant, "model_version": None}, metadata={"tenant": tenant, "model_version": "none", "reason": reason})
    yield AssetCheckResult(check_name=check, passed=True, metadata={"reason": f"no model in service: {nothing}"})


def _loop_asset(owner: TenantPlan, name: str, *, after: str, check: str, check_description: str):
    """The decorator of a loop asset of ``owner``: after ``after`` in the tenant's chain, with its one check."""
    return asset(
        key=owner.key(name), **placement(owner, REVIEW_LOOP), backfill_policy=SINGLE_RUN, deps=[owner.key(after)],
        check_specs=[AssetCheckSpec(check, asset=owner.key(name), description=check_description)],
    )


def build_ensemble_predictions(owner: TenantPlan) -> AssetsDefinition:
    """``<tenant>/ensemble_predictions``: the tenant's champion scores the tenant's unreviewed documents."""

    @_loop_asset(owner, "ensemble_predictions", after="promoted_ensemble", check=COVERAGE,
                 check_description="every unreviewed document with a text carries a prediction of the model in service")
    def ensemble_predictions(
        context: AssetExecutionContext,
        mongo: MongoResource,
        training: TrainingResource,
        lifecycle: LifecycleResource,
        review: ReviewLoopResource,
        gpu: GPUResource,
    ):
        """The champion's class probabilities in every unreviewed document (only new, edited, or scored by another model)."""
        tenant = owner.name
        _, champion = _settings_and_champion("ensemble_predictions", review, training, lifecycle, owner)
        if champion is None:
            yield from _no_model_in_service(context, tenant, COVERAGE, "nothing to score")
            return
        version = champion["version"]
        ensemble = FoldEnsemble(champion["checkpoints"], device=gpu.device_setting(), precision=EVAL_PRECISION)
        try:
            with mongo.open(tenant) as store:
                report = score_documents(
                    store, ensemble.predict_proba, ensemble.labels, version,
                    batch_size=review.scoring_batch_size, log=context.log.info,
                )
        except _STORE_ERRORS as exc:
            # Every document written before the failure is complete; the retry scores only the rest.
            raise Failure(description=f"ensemble_predictions: the store failed mid-run ({exc}); rerun to finish", allow_retries=True) from None
        summary = report.to_dict()
        metadata = {
            "tenant": tenant,
            "model_version": version,
            "scored": report.scored,
            "coverage": round(report.coverage, 4),
            "documents_per_s": round(summary["documents_per_s"], 1),
            "documents": report.documents,
            "reviewed_by_human": report.reviewed,
            "up_to_date": report.up_to_date,
            "to_score_new": report.to_score.get("new", 0),
            "to_score_model_changed": report.to_score.get("model_changed", 0),
            "to_score_text_changed": report.to_score.get("text_changed", 0),
            "reviewed_meanwhile": report.reviewed_meanwhile,
            "edited_meanwhile": report.edited_meanwhile,
            "unscorable": report.unscorable,
            "duration_s": round(report.seconds, 1),
            "device": str(ensemble.device),
        }
        context.log.info(f"tenant {tenant}: {report.scored} documents scored by {version}, coverage {report.coverage:.4f}")
        yield Output({"tenant": tenant, **summary}, metadata=metadata)
        yield AssetCheckResult(
            check_name=COVERAGE, passed=report.coverage >= 1.0, severity=AssetCheckSeverity.WARN,
            metadata={"observed_coverage": round(report.coverage, 4), "expected": 1.0,
                      "missing": report.scorable - report.reviewed_meanwhile - report.up_to_date - report.scored},
        )

    return ensemble_predictions


def _top_table(top: list[dict]) -> MetadataValue:
    columns = [
        TableColumn("session_id", "string"), TableColumn("llm_label", "string"), TableColumn("ensemble_label", "string"),
        TableColumn("ensemble_probability", "float"), TableColumn("priority", "float"), TableColumn("reasons", "string"),
    ]
    return MetadataValue.table([TableRecord(row) for row in top], schema=TableSchema(columns=columns))


def _audit_inputs(training: TrainingResource, tenant: str, champion: dict, log):
    """The champion's split (out-of-fold probabilities) and training rows (calibration, novelty), when still on disk."""
    artifacts = training.artifacts(tenant)
    plan = training_rows = None
    split_path = artifacts.splits_path(champion.get("data_version", ""), champion.get("split_fingerprint", ""))
    if split_path.is_file():
        plan = SplitPlan.load(split_path)
    else:
        log(f"split {split_path} is gone: the ensemble's own probabilities are used for training sessions too")
    dataset_path = artifacts.dataset_path(champion.get("data_version", ""))
    if Path(dataset_path).is_file():
        training_rows = read_dataset(dataset_path)
    else:
        log(f"training data {dataset_path} is gone: no calibration, novelty is not measured")
    return plan, training_rows


def _calibration_metadata(report) -> dict:
    """Each temperature's bound (``none``: inside its interval) and ECE before/after (-1.0: no rows to measure on)."""
    values = {}
    for prefix in ("", "ensemble_"):
        values[f"{prefix}temperature_at_bound"] = getattr(report, f"{prefix}temperature_at_bound") or "none"
        for when in ("before", "after"):
            ece = getattr(report, f"{prefix}ece_{when}")
            values[f"{prefix}ece_{when}"] = round(ece, 4) if ece is not None else -1.0
    return values


def build_label_audit(owner: TenantPlan) -> AssetsDefinition:
    """``<tenant>/label_audit``: the tenant's LLM labels audited into the tenant's review queue."""

    @_loop_asset(owner, "label_audit", after="ensemble_predictions", check=FLAGGED_SHARE,
                 check_description="the share of audited LLM labels flagged for review stays under review.max_flagged_share")
    def label_audit(
        context: AssetExecutionContext,
        mongo: MongoResource,
        training: TrainingResource,
        lifecycle: LifecycleResource,
        review: ReviewLoopResource,
        gpu: GPUResource,
    ):
        """LLM labels that are probably wrong (cleanlab on out-of-fold probabilities + routing rules), flagged into the review queue."""
        tenant = owner.name
        settings, champion = _settings_and_champion("label_audit", review, training, lifecycle, owner)
        if champion is None:
            yield from _no_model_in_service(context, tenant, FLAGGED_SHARE, "nothing audited")
            return
        plan, training_rows = _audit_inputs(training, tenant, champion, context.log.warning)
        try:
            with mongo.open(tenant) as store:
                report, _ = run_label_audit(
                    store, champion, plan=plan, training=training_rows, settings=settings, device=gpu.device_setting(),
                    log=context.log.info, seed=training.config(gpu, owner).seed, warn=context.log.warning,
                )
                queue = review_queue(store)
        except _STORE_ERRORS as exc:
            raise Failure(description=f"label_audit: the store failed mid-run ({exc}); rerun to finish", allow_retries=True) from None
        queue_reasons: dict[str, int] = {}
        queue_classes: dict[str, int] = {}
        for record in queue:
            for reason in record["review_reason"]:
                queue_reasons[reason] = queue_reasons.get(reason, 0) + 1
            label = str(record["llm_label"])
            queue_classes[label] = queue_classes.get(label, 0) + 1
        unreviewed = report.documents - report.reviewed
        metadata = {
            "tenant": tenant,
            "model_version": report.model_version,
            "review_queue_size": len(queue),
            "queue_share_of_unreviewed": round(len(queue) / unreviewed, 4) if unreviewed else 0.0,
            "queue_budget": report.queue_size,
            "flagged_by_rules": report.flagged_by_rules,
            "cut_by_budget": report.cut_by_budget,
            "random_sampled": report.random_sampled,
            "external_flags": report.external_flags,
            "flagged": report.flagged,
            "flagged_share": round(report.flagged_share, 4),
            "audited": report.audited,
            "newly_flagged": report.newly_flagged,
            "unflagged": report.unflagged,
            "documents_updated": report.updated,
            "cleared_after_review": report.cleared_after_review,
            "skipped_meanwhile": report.skipped_meanwhile,
            "ensemble_temperature": round(report.ensemble_temperature, 4),
            **_calibration_metadata(report),
            "out_of_fold": report.out_of_fold,
            "not_scored_yet": report.unscored,
            "reviewed_by_human": report.reviewed,
            "queue_by_reason": MetadataValue.json(dict(sorted(queue_reasons.items()))),
            "queue_by_llm_label": MetadataValue.json(dict(sorted(queue_classes.items()))),
            "flagged_by_reason": MetadataValue.json(report.per_reason),
            "signals_by_reason": MetadataValue.json(report.per_signal),
            "flagged_by_llm_label": MetadataValue.json(report.per_class),
            "noise_rate_by_llm_label": MetadataValue.json({c: round(v, 4) for c, v in sorted(report.noise_rate.items())}),
            "temperature": round(report.temperature, 4),
            "novelty_threshold": round(report.novelty_threshold, 4) if report.novelty_threshold is not None else -1.0,
            "top_of_queue": _top_table(report.top),
            "export": MetadataValue.md(f"`legolas review-queue --tenant {tenant} --format csv --output queue.csv`"),
            "duration_s": round(report.seconds, 1),
        }
        yield Output({"tenant": tenant, **report.to_dict(), "review_queue_size": len(queue)}, metadata=metadata)
        # What the rules flag, before the queue budget caps it: a share above the threshold says the
        # model and the labels disagree widely, however many of them reviewers are shown.
        rules_share = report.flagged_by_rules / report.audited if report.audited else 0.0
        yield AssetCheckResult(
            check_name=FLAGGED_SHARE, passed=rules_share <= settings.max_flagged_share,
            severity=AssetCheckSeverity.WARN,
            metadata={"observed_share": round(rules_share, 4), "threshold": settings.max_flagged_share,
                      "flagged_by_rules": report.flagged_by_rules, "in_queue": report.flagged, "audited": report.audited},
        )

    return label_audit
