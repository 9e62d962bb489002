"""Asset checks: one table of (asset, name, blocking, severity, verdict), one factory.

The verdicts are pure functions of ``legolas_ml.evaluation.checks``; a row here says which asset
it guards, whether downstream assets of the same run must wait for it (``blocking``), how loud a
failure is, and how to gather the function's arguments from the asset's value. ``build_checks``
turns every row into a Dagster check (Dagster's asset-checks factory pattern), so adding a check
is one function and one row.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from dagster import (
    AssetChecksDefinition,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetIn,
    AssetKey,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset_check,
)

from legolas_ml.core.contracts import LabeledDataset, StratifiedSplits
from legolas_ml.data.splits import SplitPlan
from legolas_ml.evaluation import checks as verdicts
from legolas_ml.evaluation.baseline import BASELINE_NAME
from legolas_ml.evaluation.checks import CheckOutcome, CheckTable
from legolas_ml.core.datasets import read_dataset

from .resources import TrainingResource
from .tenancy import TenantPlan

ERROR, WARN = AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN


def members_needed(tenant: TenantPlan) -> int:
    """Sessions a class needs so that, after the 20% test split, every fold of the tenant still sees it."""
    return verdicts.members_needed(tenant.layout["n_folds"], tenant.layout["kfold"])


def load_plan(stratified_splits: StratifiedSplits) -> SplitPlan:
    """The split plan a ``stratified_splits`` value points at."""
    return SplitPlan.load(stratified_splits.path)


def _label_of(labeled_dataset: LabeledDataset) -> dict[str, str]:
    df = read_dataset(labeled_dataset.path)
    return dict(zip(df["session_id"], df["label"]))


@dataclass(frozen=True)
class CheckRow:
    """One check: the asset it guards, its name, whether it blocks, its severity, and its verdict.

    ``arguments(value, upstream, training, tenant)`` gathers the keyword arguments of ``verdict``
    from the asset's value (its contract, ``legolas_ml.core.contracts``) and ``upstream``'s, when
    the row names one.
    """

    asset: str
    name: str
    blocking: bool
    severity: AssetCheckSeverity
    description: str
    verdict: Callable[..., CheckOutcome]
    arguments: Callable[[Any, Any, TrainingResource, TenantPlan], dict]
    upstream: str | None = None


CHECKS: tuple[CheckRow, ...] = (
    CheckRow("labeled_dataset", "at_least_two_classes", True, ERROR, "at least 2 classes",
             verdicts.at_least_two_classes, lambda v, u, t, p: {"classes": v.classes}),
    CheckRow("labeled_dataset", "enough_members_per_class", True, ERROR, "every class has enough members for K folds",
             verdicts.enough_members_per_class, lambda v, u, t, p: {"per_class": v.per_class, "needed": members_needed(p)}),
    CheckRow("labeled_dataset", "unique_session_ids", True, ERROR, "no duplicate session_id",
             verdicts.unique_session_ids, lambda v, u, t, p: {"session_ids": read_dataset(v.path)["session_id"].tolist()}),
    CheckRow("labeled_dataset", "quarantine_share", True, ERROR, "quarantined share of inputs under the threshold",
             verdicts.quarantine_share, lambda v, u, t, p: {"counts": v.summary["counts"], "max_share": t.max_quarantine_share}),
    CheckRow("labeled_dataset", "training_set_not_halved", False, WARN, "the training set did not shrink by more than half against the champion's",
             verdicts.training_set_not_halved, lambda v, u, t, p: {"summary": v.summary, "champion_dataset": v.champion_dataset}),
    CheckRow("stratified_splits", "no_test_leakage", True, ERROR, "no session in both test and train/val",
             verdicts.no_test_leakage, lambda v, u, t, p: {"plan": load_plan(v)}),
    CheckRow("stratified_splits", "fold_class_proportions", False, WARN, "per-fold class proportions close to the pool's",
             verdicts.fold_class_proportions,
             lambda v, u, t, p: {"plan": load_plan(v), "label_of": _label_of(u), "classes": v.classes}, upstream="labeled_dataset"),
    # Not blocking: promoted_ensemble applies the same chance rule first and records the rejection;
    # a check only reports (it records nothing).
    CheckRow("ensemble_model", "ensemble_above_chance", False, ERROR, "test balanced accuracy above chance (promotion rejects it otherwise)",
             verdicts.ensemble_above_chance,
             lambda v, u, t, p: {"test_balanced_accuracy": v.test_metrics["balanced_accuracy"], "n_classes": len(v.labels)}),
    CheckRow("cv_metrics", "cv_fold_spread", False, WARN, f"best and worst fold balanced accuracy within {verdicts.FOLD_SPREAD_TOLERANCE}",
             verdicts.cv_fold_spread, lambda v, u, t, p: {"per_fold": v.per_fold}),
    CheckRow("ensemble_model", "ensemble_consistent_with_cv", False, WARN, "test balanced accuracy not far below the folds' mean",
             verdicts.ensemble_consistent_with_cv,
             lambda v, u, t, p: {"test_balanced_accuracy": v.test_metrics["balanced_accuracy"], "cv_mean": v.manifest["cv_balanced_accuracy"]["mean"]}),
    # A warning, not a gate: on a small or mostly LLM-labelled test set the baseline may win by noise.
    CheckRow("ensemble_model", "ensemble_beats_baseline", False, WARN,
             f"test balanced accuracy (mixed) at least the {BASELINE_NAME}'s on the same test sessions",
             verdicts.ensemble_beats_baseline, lambda v, u, t, p: {"ensemble_model": v.manifest}),
    CheckRow("explainability_report", "attributions_converged", False, ERROR, f"at least {verdicts.MIN_CONVERGED_SHARE:.0%} of texts converged",
             verdicts.attributions_converged,
             lambda v, u, t, p: {"share_converged": v.share_converged, "mean_steps": v.mean_steps}),
)

#: The checks ``fold_models`` yields itself over the folds of its run (a partitioned asset's checks
#: cannot run as their own step over every partition): name, blocking, description.
FOLD_CHECKS = (
    ("finite_losses", True, "no NaN/inf loss in any epoch"),
    ("above_chance", True, "val balanced accuracy > 1/C + margin"),
)


def _utc(timestamp: float) -> str:
    return f"{datetime.fromtimestamp(timestamp, timezone.utc):%Y-%m-%dT%H:%M:%S} UTC"


def evaluated_materialization(context: AssetCheckExecutionContext) -> dict:
    """The materialization a check read (its run and time) and when the check ran, in UTC.

    A check reads the asset's latest stored value: in the run that materialized it, that run's;
    executed on its own later, the one before. The UI's check timestamp is when the check ran, so
    these say which materialization the verdict is about.
    """
    asset_key = context.check_specs[0].asset_key
    event = context.instance.get_latest_materialization_event(asset_key)
    checked_at = _utc(datetime.now(timezone.utc).timestamp())
    if event is None:
        return {"evaluated_materialization": "none recorded", "checked_at": checked_at}
    return {
        "evaluated_run": MetadataValue.dagster_run(event.run_id),
        "evaluated_materialized_at": _utc(event.timestamp),
        "evaluated_in_this_run": event.run_id == context.run.run_id,
        "checked_at": checked_at,
    }


def metadata_of(outcome: CheckOutcome) -> dict:
    """The outcome's metadata as Dagster shows it: a ``CheckTable`` becomes a table, floats stay numbers."""

    def shown(value):
        if isinstance(value, CheckTable):
            return MetadataValue.table(
                records=[TableRecord(row) for row in value.rows],
                schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in value.columns]),
            )
        return value

    return {key: shown(value) for key, value in outcome.metadata.items()}


def _check(row: CheckRow, tenant: TenantPlan) -> AssetChecksDefinition:
    """One row as a Dagster check of ``tenant``'s asset."""
    options = dict(asset=tenant.key(row.asset), name=row.name, blocking=row.blocking, description=row.description)

    def result(context: AssetCheckExecutionContext, value: Any, upstream: Any, training: TrainingResource) -> AssetCheckResult:
        outcome = row.verdict(**row.arguments(value, upstream, training, tenant))
        return AssetCheckResult(
            passed=bool(outcome.passed), severity=row.severity, metadata={**metadata_of(outcome), **evaluated_materialization(context)},
        )

    if row.upstream is None:
        @asset_check(**options)
        def check(context: AssetCheckExecutionContext, value: Any, training: TrainingResource) -> AssetCheckResult:
            return result(context, value, None, training)
    else:
        @asset_check(**options, additional_ins={"upstream": AssetIn(key=tenant.key(row.upstream))})
        def check(context: AssetCheckExecutionContext, value: Any, upstream: Any, training: TrainingResource) -> AssetCheckResult:
            return result(context, value, upstream, training)

    return check


def build_checks(tenant: TenantPlan) -> list[AssetChecksDefinition]:
    """The asset checks of one tenant's assets that run as their own step: one per row of ``CHECKS``."""
    return [_check(row, tenant) for row in CHECKS]


def fold_check_specs(tenant: TenantPlan) -> list[AssetCheckSpec]:
    """The checks ``<tenant>/fold_models`` yields itself, over the folds of its run."""
    return [
        AssetCheckSpec(name, asset=tenant.key("fold_models"), blocking=blocking, description=description)
        for name, blocking, description in FOLD_CHECKS
    ]


def fold_check_results(results: dict[str, dict], n_classes: int, asset_key: AssetKey):
    """The fold checks over the folds trained in this run (yielded by the fold_models asset)."""
    outcomes = {"finite_losses": verdicts.finite_losses(results), "above_chance": verdicts.folds_above_chance(results, n_classes)}
    for name, _, _ in FOLD_CHECKS:
        yield AssetCheckResult(check_name=name, asset_key=asset_key, passed=outcomes[name].passed, metadata=metadata_of(outcomes[name]))
