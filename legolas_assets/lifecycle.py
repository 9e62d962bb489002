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

from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
from legolas_ml.lifecycle.artifacts import read_dataset
from legolas_ml.lifecycle.promotion import compare_on_holdout, decide_promotion
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.evaluation.metrics import classification_metrics
from legolas_ml.tracking import redacted, tracker_from_settings

from .resources import GPUResource, LifecycleResource, TrainingResource
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
        })
        for c in comparison.per_class_support
    ]
    return MetadataValue.table(rows, schema=TableSchema(columns=[
        TableColumn("class", "string"), TableColumn("support", "int"), TableColumn("candidate_recall", "float"),
        TableColumn("champion_recall", "float"), TableColumn("change", "float"),
    ]))


def build_promoted_ensemble(tenant: TenantPlan) -> AssetsDefinition:
    """``<tenant>/promoted_ensemble``: the tenant's champion/challenger decision."""

    @asset(
        key=tenant.key("promoted_ensemble"), ins=tenant.ins("ensemble_model", "labeled_dataset"),
        **placement(tenant, LIFECYCLE), backfill_policy=SINGLE_RUN, check_specs=[promotion_check(tenant)],
    )
    def promoted_ensemble(
        context: AssetExecutionContext,
        ensemble_model: dict,
        labeled_dataset: dict,
        training: TrainingResource,
        lifecycle: LifecycleResource,
        gpu: GPUResource,
    ):
        """The ensemble in service: the candidate if it beat the promotion rule, else the champion it challenged."""
        version = ensemble_model["version"]
        registry = lifecycle.registry(training, tenant.name)
        policy = lifecycle.policy()
        try:
            champion = registry.champion()
        except ChampionUnavailableError as exc:
            raise Failure(description=f"promoted_ensemble: {exc}") from None
        holdout = read_dataset(labeled_dataset["holdout_path"])
        metadata: dict = {"tenant": tenant.name, "candidate_version": version, "holdout_n": len(holdout),
                          "holdout_per_class": MetadataValue.json(labeled_dataset["summary"]["holdout"]["per_class"])}
        earlier = registry.decision_for(version)
        if champion is not None and champion["version"] == version:
            promoted, reason, record = True, "the candidate is already the champion (same data, split and config)", None
        elif earlier is not None and earlier.get("previous_champion") == (champion or {}).get("version"):
            # Decided against this very champion before (a re-materialization): the decision stands.
            promoted, reason, record = earlier["action"] == "promoted", f"decided at {earlier['at']}: {earlier['reason']}", earlier
        else:
            comparison = None
            if len(holdout):
                texts, y_true = holdout["text"].tolist(), holdout["label"].tolist()
                candidate_pred = FoldEnsemble(ensemble_model["checkpoints"], device=gpu.device, precision=EVAL_PRECISION).predict(texts)
                holdout_metrics = classification_metrics(y_true, candidate_pred, classes=sorted(set(y_true)))
                metadata["candidate_holdout_balanced_accuracy"] = round(holdout_metrics["balanced_accuracy"], 4)
                if champion is not None:
                    champion_pred = FoldEnsemble(champion["checkpoints"], device=gpu.device, precision=EVAL_PRECISION).predict(texts)
                    comparison = compare_on_holdout(y_true, candidate_pred, champion_pred, policy, seed=training.seed)
            decision = decide_promotion(
                ensemble_model["test_metrics"]["balanced_accuracy"], len(ensemble_model["labels"]), comparison, champion is not None, policy
            )
            details = {"decision": decision.to_dict(), "run_id": context.run_id}
            action = registry.promote if decision.promote else registry.reject
            record = action(version, actor=run_actor(context), reason=decision.reason, **details)
            promoted, reason = decision.promote, decision.reason
            if comparison is not None:
                metadata.update({
                    "champion_holdout_balanced_accuracy": round(comparison.champion_balanced_accuracy, 4),
                    "difference": round(comparison.difference, 4),
                    "difference_ci_low": round(comparison.ci_low, 4),
                    "difference_ci_high": round(comparison.ci_high, 4),
                    "recall_by_class": _recall_table(comparison),
                })
        if promoted and record is not None:
            metadata.update(_mirror_champion(context, registry, tenant.name, version))
        pruned = registry.prune(lifecycle.keep_decided, keep={version})
        serving = registry.champion_version()
        metadata.update({
            "decision": "promoted" if promoted else "rejected",
            "reason": reason,
            "champion_version": serving or "none",
            "previous_champion": (record or {}).get("previous_champion") or "none",
            "pruned_versions": MetadataValue.json(pruned),
            "decisions_log": MetadataValue.path(str(registry.decisions_path)),
        })
        (context.log.info if promoted else context.log.warning)(f"candidate {version}: {'promoted' if promoted else 'rejected'}: {reason}")
        yield Output(
            {"tenant": tenant.name, "champion_version": serving, "candidate_version": version, "promoted": promoted, "reason": reason},
            metadata=metadata,
        )
        yield AssetCheckResult(
            check_name="candidate_promoted", passed=promoted, severity=AssetCheckSeverity.WARN,
            metadata={"candidate_version": version, "champion_version": serving or "none", "reason": reason},
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
    return {"mlflow_model_version": f"legolas-{tenant} version {number} (alias champion)"}


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


@job(description="Promote a version explicitly: Launchpad config ops.promote_version.config {tenant, version}")
def promote_job():
    promote_version()


@job(description="Roll back to the previous champion: Launchpad config ops.rollback_champion.config {tenant}")
def rollback_job():
    rollback_champion()
