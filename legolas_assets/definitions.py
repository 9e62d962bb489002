"""The LEGOLAS code location: one Definitions object, one set of assets, checks and job per tenant.

The tenants are discovered in the store each time the code location loads (``tenancy.discover_tenants``):
add one with ``legolas tenants add`` or by importing its documents, and the ``reload_on_tenant_change``
sensor (``live_tenants``) sees it and has the code location reloaded (docs/tenants.md).
"""

from dagster import Definitions, in_process_executor

from legolas_ml.core import settings

from .configuration import reported_in_one_line
from .io_manager import JsonIOManager
from .live_tenants import build_tenants_sensor
from .jobs import challenger_job, promote_job, rollback_job, tenant_assets, tenant_checks, tenant_job
from .resources import LifecycleResource, ReviewLoopResource, WorkspaceResource, default_resources
from .reviews import build_human_reviews
from .sensors import build_retrain_sensor
from .tenancy import TenantPlan, discover_tenants, validate_tenant_keys


def build_definitions(tenants: list[TenantPlan] | None = None, resources: dict | None = None) -> Definitions:
    """Every tenant's assets (``<asset>`` for the default tenant, ``<tenant>/<asset>`` for the others), checks
    and ``<tenant>__training_job``, the retraining sensor and the tenants sensor.

    Args:
        tenants: the tenants to build; default: those discovered in the store.
        resources: the resources; default: wired to the ``LEGOLAS_*`` variables (given without
            ``workspace``: no webserver is asked for reloads).

    Raises:
        ValueError: ``tenants`` given include one whose key name is an unprefixed key of the default tenant.
    """
    if tenants is None:
        tenants = discover_tenants()  # a clashing tenant is refused there, with a warning, and the others load
    else:
        validate_tenant_keys(tenants)
    assets, checks, jobs = [], [], []
    for tenant in tenants:
        own = tenant_assets(tenant)
        assets += [*own, build_human_reviews(tenant)]  # the reviews: a source asset the sensor observes
        checks += tenant_checks(tenant)
        jobs.append(tenant_job(tenant, own))
    if resources is None:
        with reported_in_one_line():
            webserver_url = settings.dagster_url()
        resources = {
            **default_resources(), "lifecycle": LifecycleResource(), "review": ReviewLoopResource(),
            "io_manager": JsonIOManager(base_dir=str(settings.output_dir() / "asset_values")),
            "workspace": WorkspaceResource(webserver_url=webserver_url),
        }
    resources = {"workspace": WorkspaceResource(), **resources}
    return Definitions(
        assets=assets,
        # One process per run: the folds of a run already train one after another inside one step,
        # and a process per step would re-import torch ~15 times per run for no parallelism.
        executor=in_process_executor,
        asset_checks=checks,
        jobs=[*jobs, promote_job, rollback_job, challenger_job],
        # Every tenant removed: no reviews to watch, but a tenant added back must still be seen.
        sensors=[*([build_retrain_sensor(tenants, jobs)] if tenants else []), build_tenants_sensor(tenants)],
        resources=resources,
    )


defs = build_definitions()
