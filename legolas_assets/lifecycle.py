"""Stage 6: the candidate goes live only when proven no worse than the champion; explicit promote/rollback."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    job,
    op,
)

from legolas_ml.core.contracts import Candidate, LabeledDataset, PromotionOutcome
from legolas_ml.core.datasets import read_dataset
from legolas_ml.evaluation.ensemble import EVAL_PRECISION
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.lifecycle.decision import (
    KEEP,
    Decision,
    Holdout,
    decide_and_record,
    ensemble_predictor,
    holdout_from_store,
    look_at_challenger,
)
from legolas_ml.lifecycle.promotion import PROMOTE, REJECT, WAIT
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.tracking import redacted, tracker_from_settings

from .resources import GPUResource, LifecycleResource, MongoResource, TrainingResource
from .stages import LIFECYCLE, SINGLE_RUN, placement
from .tenancy import TenantPlan

def promotion_check(tenant: TenantPlan) -> AssetCheckSpec:
    return AssetCheckSpec(
        "candidate_promoted", asset=tenant.key("promoted_ensemble"),
        description="the run's candidate was promoted (a warning names why it was not)",
    )


def run_actor(context) -> str:
    """Who decided: the run, and the sensor or user that launched it when Dagster knows."""
    tags = context.run.tags
    via = tags.get("dagster/sensor_name") or tags.get("dagster/user") or "a manual run"
    return f"dagster run {context.run_id} ({via})"


def _recall_table(comparison) -> MetadataValue:
    rows = [
        TableRecord({
            "class": c,
            "support": comparison.per_class_support[c],
            "candidate_recall": round(comparison.candidate_recall[c], 4),
            "champion_recall": round(comparison.champion_recall[c], 4),
            "change": round(comparison.candidate_recall[c] - comparison.champion_recall[c], 4),
            "change_low": round(comparison.recall_ci[c][0], 4),
            "change_high": round(comparison.recall_ci[c][1], 4),
        })
        for c in comparison.per_class_support
    ]
    return MetadataValue.table(rows, schema=TableSchema(columns=[
        TableColumn("class", "string"), TableColumn("support", "int"), TableColumn("candidate_recall", "float"),
        TableColumn("champion_recall", "float"), TableColumn("change", "float"),
        TableColumn("change_low", "float"), TableColumn("change_high", "float"),
    ]))


_WORDS = {PROMOTE: "promoted", REJECT: "rejected", WAIT: "challenger", KEEP: "kept (already the champion)"}


def decision_metadata(decision: Decision) -> dict:
    """What the UI shows of a decision: the outcome, the reason and the numbers behind it."""
    metadata: dict = {
        "decision": _WORDS[decision.outcome],
        "reason": decision.reason,
        "decision_standing": decision.standing,
        "holdout_compared_n": decision.compared_n,
        "holdout_excluded_trained_on": decision.excluded_trained_on,
    }
    if decision.candidate_holdout_balanced_accuracy is not None:
        metadata["candidate_holdout_balanced_accuracy"] = round(decision.candidate_holdout_balanced_accuracy, 4)
    if decision.baseline_holdout_balanced_accuracy is not None:
        metadata["baseline_holdout_balanced_accuracy"] = round(decision.baseline_holdout_balanced_accuracy, 4)
    comparison = decision.promotion.comparison if decision.promotion else None
    if comparison is not None:
        metadata.update({
            "champion_holdout_balanced_accuracy": round(comparison.champion_balanced_accuracy, 4),
            "difference": round(comparison.difference, 4),
            "difference_bound_low": round(comparison.ci_low, 4),
            "difference_bound_high": round(comparison.ci_high, 4),
            "bound_confidence": comparison.confidence,
            "disagreements": comparison.disagreements,
            "recall_by_class": _recall_table(comparison),
        })
    part = decision.random_part
    if part:
        # The queue's random slice: the part of the holdout that looks like the documents in service.
        metadata["holdout_random_part"] = MetadataValue.json(part)
        metadata["holdout_random_n"] = part["n"]
    if decision.outcome == WAIT and decision.next_look_at:
        metadata["challenger_next_look_at_holdout_n"] = decision.next_look_at
    if decision.promotion and decision.promotion.sessions_to_decide:
        metadata["holdout_n_expected_to_decide"] = decision.promotion.sessions_to_decide
    return metadata


def build_promoted_ensemble(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/promoted_ensemble``: the tenant's champion/challenger decision."""

    @asset(
        key=tenant.key("promoted_ensemble"), ins=tenant.ins("ensemble_model", "labeled_dataset"),
        **placement(tenant, LIFECYCLE), backfill_policy=SINGLE_RUN, check_specs=[promotion_check(tenant)],
    )
    def promoted_ensemble(
        context: AssetExecutionContext,
        ensemble_model: Candidate,
        labeled_dataset: LabeledDataset,
        training: TrainingResource,
        lifecycle: LifecycleResource,
        gpu: GPUResource,
    ):
        """The ensemble in service: the candidate if the promotion rule shows it no worse than the champion;
        a candidate the holdout cannot decide yet waits as the tenant's challenger."""
        version = ensemble_model.version
        registry = lifecycle.registry(training, tenant.name)
        holdout = Holdout(
            read_dataset(labeled_dataset.holdout_path), tenant.name, labeled_dataset.holdout["share"],
            labeled_dataset.reviews_cursor, frozenset(labeled_dataset.holdout_random_ids or ()),
        )
        try:
            decision = decide_and_record(
                registry, ensemble_model.manifest, holdout, lifecycle.policy(), ensemble_predictor(gpu.device_setting(), EVAL_PRECISION),
                actor=run_actor(context), run_id=context.run_id,
            )
        except ChampionUnavailableError as exc:
            raise Failure(description=f"promoted_ensemble: {exc}") from None
        metadata: dict = {"tenant": tenant.name, "candidate_version": version, "holdout_n": len(holdout.frame),
                          "holdout_per_class": MetadataValue.json(labeled_dataset.holdout["per_class"]),
                          **decision_metadata(decision)}
        if decision.promoted and not decision.standing:
            metadata.update(_mirror_champion(context, registry, tenant.name, version))
        challenger = registry.challenger()
        pruned = registry.prune(lifecycle.keep_decided, keep={version})
        serving = registry.champion_version()
        metadata.update({
            "champion_version": serving or "none",
            "challenger_version": challenger["version"] if challenger else "none",
            "previous_champion": (decision.record or {}).get("previous_champion") or "none",
            "pruned_versions": MetadataValue.json(pruned),
            "decisions_log": MetadataValue.path(registry.decisions_location),
        })
        word = _WORDS[decision.outcome]
        serves = decision.outcome in (PROMOTE, KEEP)  # the candidate is in service
        (context.log.info if serves else context.log.warning)(f"candidate {version}: {word}: {decision.reason}")
        yield Output(
            PromotionOutcome(tenant=tenant.name, champion_version=serving, candidate_version=version, promoted=serves,
                             outcome=word, reason=decision.reason),
            metadata=metadata,
        )
        yield AssetCheckResult(
            check_name="candidate_promoted", passed=serves, severity=AssetCheckSeverity.WARN,
            metadata={"candidate_version": version, "champion_version": serving or "none", "outcome": word, "reason": decision.reason},
        )

    return promoted_ensemble


def _mirror_champion(context, registry: ModelRegistry, tenant: str, version: str) -> dict:
    """Point MLflow's ``champion`` alias at the version in service, when tracking is on (metadata to show)."""
    try:  # MLflow mirrors the registry, which already decided: nothing here may fail the run
        tracker = tracker_from_settings()
        if tracker is None:
            return {}
        number = tracker.set_champion(tenant, version, registry.manifest(version), registry.manifest_path(version))
    except Exception as exc:  # noqa: BLE001
        context.log.warning(f"MLflow: the champion alias was not moved to {version}: {redacted(exc)}")
        return {"mlflow_model_version": f"not registered: {redacted(exc)}"[:300]}
    return {"mlflow_model_version": f"legolas-{tenant} version {number} (alias champion)",
            "mlflow_serve": f"mlflow models serve -m models:/legolas-{tenant}@champion --env-manager local"}


class ChallengerConfig(Config):
    tenant: str


@op(description="Look again at a tenant's waiting challenger on today's holdout (no retraining): promote, reject or keep waiting")
def look_at_challenger_op(
    context: OpExecutionContext, config: ChallengerConfig, mongo: MongoResource, training: TrainingResource,
    lifecycle: LifecycleResource, gpu: GPUResource,
) -> dict:
    registry = _registry(training, lifecycle, config.tenant)
    try:
        with mongo.open(config.tenant) as store:
            holdout = holdout_from_store(store, config.tenant, lifecycle.holdout_share, dataset_mode=training.dataset_mode,
                                         max_text_chars=training.max_text_chars)
        decision = look_at_challenger(registry, holdout, lifecycle.policy(), ensemble_predictor(gpu.device_setting(), EVAL_PRECISION),
                                      actor=run_actor(context), run_id=context.run_id)
    except (ValueError, ChampionUnavailableError, StoreUnavailableError) as exc:
        raise Failure(description=f"look_at_challenger: {exc}") from None
    if decision is None:
        context.log.info(f"tenant {config.tenant}: no challenger waits")
        return {"tenant": config.tenant, "outcome": "none"}
    if decision.promoted and not decision.standing:
        _mirror_champion(context, registry, config.tenant, decision.version)
    context.log.info(f"tenant {config.tenant}: challenger {decision.version}: {_WORDS[decision.outcome]}: {decision.reason}")
    context.add_output_metadata({"tenant": config.tenant, "challenger_version": decision.version, **decision_metadata(decision)})
    return {"tenant": config.tenant, "version": decision.version, "outcome": _WORDS[decision.outcome], "reason": decision.reason}


class PromoteConfig(Config):
    tenant: str
    version: str
    reason: str = "explicit promotion by an operator"


class RollbackConfig(Config):
    tenant: str
    reason: str = "explicit rollback by an operator"


def _registry(training: TrainingResource, lifecycle: LifecycleResource, tenant: str) -> ModelRegistry:
    try:
        return lifecycle.registry(training, tenant)
    except ValueError as exc:
        raise Failure(description=str(exc)) from None


@op(description="Make a version the champion (skips the comparison: an operator's decision, recorded as such)")
def promote_version(context: OpExecutionContext, config: PromoteConfig, training: TrainingResource, lifecycle: LifecycleResource) -> dict:
    try:
        record = _registry(training, lifecycle, config.tenant).promote(config.version, actor=run_actor(context), reason=config.reason)
    except (ValueError, ChampionUnavailableError) as exc:
        raise Failure(description=str(exc)) from None
    _mirror_champion(context, _registry(training, lifecycle, config.tenant), config.tenant, config.version)
    context.log.info(f"tenant {config.tenant}: {config.version} promoted (was {record['previous_champion']})")
    return record


@op(description="Put the previous champion back in service")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig, training: TrainingResource, lifecycle: LifecycleResource) -> dict:
    try:
        record = _registry(training, lifecycle, config.tenant).rollback(actor=run_actor(context), reason=config.reason)
    except (ValueError, ChampionUnavailableError) as exc:
        raise Failure(description=str(exc)) from None
    _mirror_champion(context, _registry(training, lifecycle, config.tenant), config.tenant, record["version"])
    context.log.info(f"tenant {config.tenant}: rolled back to {record['version']} (from {record['rolled_back_from']})")
    return record


@job(description="Look at a tenant's waiting challenger on today's holdout: Launchpad config ops.look_at_challenger_op.config {tenant}; the retraining sensor launches it when enough reviews landed in the holdout")
def challenger_job():
    look_at_challenger_op()


@job(description="Promote a version explicitly: Launchpad config ops.promote_version.config {tenant, version}")
def promote_job():
    promote_version()


@job(description="Roll back to the previous champion: Launchpad config ops.rollback_champion.config {tenant}")
def rollback_job():
    rollback_champion()
