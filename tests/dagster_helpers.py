"""Run the Dagster chain in process on a tiny model and a small demo tenant."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from legolas_assets.io_manager import JsonIOManager
from legolas_assets.jobs import tenant_assets, tenant_checks
from legolas_assets.tenancy import TenantPlan
from legolas_assets.resources import GPUResource, LifecycleResource, MongoResource, ReviewLoopResource, TrainingResource
from synthetic import TINY_TRAINING


#: The tenant of most tests: "demo" with the preset's K (tests set LEGOLAS_N_FOLDS=3).
DEMO = TenantPlan("demo")
ASSETS = tenant_assets(DEMO)
ALL_CHECKS = tenant_checks(DEMO)


def key(asset: str, tenant: TenantPlan = DEMO) -> AssetKey:
    """An asset of the tenant: ``<asset>`` for the default tenant (demo), ``<tenant>/<asset>`` for others."""
    return tenant.key(asset)


def resources(home: Path, mongo: MongoResource | None = None, lifecycle: dict | None = None, **training) -> dict:
    return {
        "lifecycle": LifecycleResource(**(lifecycle or {})),
        "review": ReviewLoopResource(),
        "mongo": mongo or MongoResource(data_dir=str(home)),
        "gpu": GPUResource(device="cpu", precision="fp32"),
        "training": TrainingResource(output_dir=str(home / "output"), **{**TINY_TRAINING, **training}),
        "io_manager": JsonIOManager(base_dir=str(home / "output" / "asset_values")),
    }


def run_chain(
    home: Path, instance: DagsterInstance, n_folds: int = 3, selection=None, raise_on_error=True, mongo=None, lifecycle=None,
    tenant: TenantPlan = DEMO, **training
):
    """Materialize a tenant's chain (all fold partitions in one run, as the CLI's --partition-range does).

    ``selection`` names assets of the tenant (``["labeled_dataset"]``), or is any Dagster selection.
    """
    if isinstance(selection, (list, tuple)) and all(isinstance(s, str) for s in selection):
        selection = [tenant.key(s) for s in selection]
    return materialize(
        tenant_assets(tenant) + tenant_checks(tenant),
        selection=selection,
        resources=resources(home, mongo=mongo, lifecycle=lifecycle, **training),
        instance=instance,
        tags={"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": str(n_folds - 1)},
        raise_on_error=raise_on_error,
    )


def retrain_sensor(tenants: list[TenantPlan] = (DEMO,)):
    """The retraining sensor of a code location with these tenants (the definitions build one for all)."""
    from legolas_assets.jobs import tenant_job
    from legolas_assets.sensors import build_retrain_sensor

    return build_retrain_sensor(list(tenants), [tenant_job(t, tenant_assets(t)) for t in tenants])


retrain_on_new_reviews = retrain_sensor()


def tenant_state(cursor: str | None, tenant: str = "demo") -> str | None:
    """One tenant's entry of the retraining sensor's cursor (``None``: the tenant has none yet)."""
    from legolas_ml.lifecycle.retraining import parse_tenant_states

    return parse_tenant_states(cursor, legacy_tenant=tenant).get(tenant)


def training_session(tenant: str, k: int) -> str:
    """The k-th session id ``s<i>`` outside the tenant's holdout bucket (default share): its reviews count
    for the retraining threshold (reviews in the holdout count for a challenger's look instead)."""
    from legolas_ml.lifecycle.holdout import in_holdout

    found = _TRAINING_IDS.setdefault(tenant, [])
    i = int(found[-1][1:]) + 1 if found else 0
    while len(found) <= k:
        if not in_holdout(tenant, f"s{i}"):
            found.append(f"s{i}")
        i += 1
    return found[k]


_TRAINING_IDS: dict[str, list[str]] = {}
