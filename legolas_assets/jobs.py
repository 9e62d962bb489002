"""Each tenant's assets, checks and training job (the sensor's target and the UI's one-click retrain)."""

from dagster import define_asset_job

from .checks import build_checks
from .data import build_labeled_dataset
from .evaluation import build_evaluation
from .explainability import build_explainability_report
from .lifecycle import build_promoted_ensemble, challenger_job, promote_job, rollback_job
from .loop import build_ensemble_predictions, build_label_audit
from .reviews import build_human_reviews
from .splits import build_stratified_splits
from .tenancy import ASSET_NAMES, TenantPlan
from .training import build_fold_models

__all__ = ["tenant_assets", "tenant_checks", "tenant_job", "promote_job", "rollback_job", "challenger_job", "ASSET_NAMES"]


def tenant_assets(tenant: TenantPlan) -> list:
    """The tenant's materializable assets, in pipeline order."""
    return [
        build_labeled_dataset(tenant), build_stratified_splits(tenant), build_fold_models(tenant), *build_evaluation(tenant),
        build_promoted_ensemble(tenant), build_explainability_report(tenant), build_ensemble_predictions(tenant),
        build_label_audit(tenant),
    ]


def tenant_checks(tenant: TenantPlan) -> list:
    return build_checks(tenant)


def tenant_job(tenant: TenantPlan, assets: list):
    """``<tenant>__training_job``: every asset of the tenant, all its fold partitions in one run."""
    return define_asset_job(
        tenant.job_name,
        selection=assets,
        tags={"legolas/tenant": tenant.name},  # one run per tenant at a time (dagster.yaml), from the UI too
        description=f"Tenant {tenant.name}: every asset, all fold partitions in one run: launch with the partition range "
        f"0...{tenant.n_partitions - 1}",
    )
