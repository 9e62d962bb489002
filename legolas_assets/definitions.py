"""The LEGOLAS code location: one Definitions object, one set of assets, checks and job per tenant.

The tenants are discovered in the store when the code location loads (``tenancy.discover_tenants``):
add one with ``legolas tenants add`` or by importing its documents, then reload the code location.
"""

from dagster import Definitions, in_process_executor

from legolas_ml import settings

from .io_manager import JsonIOManager
from .jobs import challenger_job, promote_job, rollback_job, tenant_assets, tenant_checks, tenant_job
from .resources import LifecycleResource, ReviewLoopResource, default_resources
from .reviews import build_human_reviews
from .sensors import build_retrain_sensor
from .tenancy import TenantPlan, discover_tenants


def build_definitions(tenants: list[TenantPlan] | None = None, resources: dict | None = None) -> Definitions:
    """Every tenant's assets (``<tenant>/<asset>``), checks and ``<tenant>__training_job``, one sensor.

    Args:
        tenants: the tenants to build; default: those discovered in the store.
        resources: the resources; default: wired to the ``LEGOLAS_*`` variables.
    """
    tenants = discover_tenants() if tenants is None else tenants
    assets, checks, jobs = [], [], []
    for tenant in tenants:
        own = tenant_assets(tenant)
        assets += [*own, build_human_reviews(tenant)]  # the reviews: a source asset the sensor observes
        checks += tenant_checks(tenant)
        jobs.append(tenant_job(tenant, own))
    resources = resources if resources is not None else {
        **default_resources(), "lifecycle": LifecycleResource(), "review": ReviewLoopResource(),
        "io_manager": JsonIOManager(base_dir=str(settings.output_dir() / "asset_values")),
    }
    return Definitions(
        assets=assets,
        # One process per run: the folds of a run already train one after another inside one step,
        # and a process per step would re-import torch ~15 times per run for no parallelism.
        executor=in_process_executor,
        asset_checks=checks,
        jobs=[*jobs, promote_job, rollback_job, challenger_job],
        sensors=[build_retrain_sensor(tenants, jobs)] if tenants else [],  # every tenant removed: nothing to watch
        resources=resources,
    )


defs = build_definitions()
