"""The tenants of the code location: each one gets its own assets, checks, fold partitions and job.

**Why an asset factory with one key prefix per tenant** (and not a tenant partition dimension):
tenants differ in K, so their fold partitions differ (``0..2`` for one, ``0..9`` for another); a
``tenant x fold`` multi-partition would force one fold range on every tenant. A prefix also gives
each tenant its own lineage group, checks, materialization history and job in the UI, and every
tenant's assets keep the single-tenant commands: ``--select insurance/fold_models --partition 2``.

**The default tenant's keys are unprefixed.** The tenant named by ``LEGOLAS_TENANT`` (default
``demo``) owns ``fold_models``, ``cv_metrics``, ... so the single-tenant commands work as written
(``--select fold_models --partition 3``); every other tenant keeps ``<tenant>/<asset>``. A tenant
whose key name is one of those asset names would put its folder beside the default tenant's asset
of the same name (and its values under the same directory): it is refused while the default tenant
is loaded (``key_clashes``). Groups and jobs stay per tenant for all (``demo``, ``demo__training_job``).

Tenants are discovered when Dagster loads the code location (``legolas_ml.data.tenants``), every
time it loads: a tenant added, changed or removed with ``legolas tenants`` or by importing its
documents appears at the next load, without code changes; the ``reload_on_tenant_change`` sensor
(``live_tenants``) sees the difference and has the code location reloaded. When the store cannot
be read at load time the tenants of the last successful discovery
(``$LEGOLAS_HOME/output/tenants.json``) are used, so a store outage never makes the UI lose its
assets. A store that names no tenant at all (a fresh deployment) shows ``LEGOLAS_TENANT`` (default
``demo``), whose first run says how to load data; a deployment whose tenants were all removed
shows none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dagster import AssetIn, AssetKey, StaticPartitionsDefinition

from legolas_ml.core import settings
from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.data.tenants import Discovery, TenantSettings, fold_layout, key_name, open_catalogue, training_job_name
from legolas_ml.core.identity import validate_tenant

from .configuration import reported_in_one_line

log = logging.getLogger("legolas.tenants")

#: A tenant's materializable assets in pipeline order, then its source asset: the default tenant's
#: unprefixed keys, so no other tenant may take one of them as its key name.
ASSET_NAMES = (
    "labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble",
    "explainability_report", "ensemble_predictions", "label_audit",
)
SOURCE_ASSET_NAMES = ("human_reviews",)


def dagster_name(tenant: str) -> str:
    """The tenant's name where Dagster allows only letters, digits and '_' (key prefix, group, job)."""
    return key_name(tenant)


@dataclass(frozen=True)
class TenantPlan:
    """One tenant as the code location builds it: its name, its settings and what they decide."""

    name: str
    settings: TenantSettings = field(default_factory=TenantSettings)
    #: The deployment's default tenant, whose asset keys are unprefixed; ``None``: whether the name is
    #: ``LEGOLAS_TENANT``'s, decided once here so that every key of the plan agrees.
    is_default: bool | None = None

    def __post_init__(self) -> None:
        validate_tenant(self.name)
        if self.is_default is None:
            with reported_in_one_line():
                default = settings.tenant()
            object.__setattr__(self, "is_default", self.name == default)  # frozen: set once, before any key

    @property
    def prefix(self) -> str:
        """The key name: the asset key prefix (but the default tenant's), group and job name prefix."""
        return dagster_name(self.name)

    @property
    def job_name(self) -> str:
        return training_job_name(self.name)

    def key(self, asset: str) -> AssetKey:
        """``<asset>`` for the default tenant, ``<tenant>/<asset>`` for every other one."""
        return AssetKey([asset]) if self.is_default else AssetKey([self.prefix, asset])

    def ins(self, *assets: str) -> dict[str, AssetIn]:
        """The tenant's upstream assets, by the parameter names of the asset function."""
        return {asset: AssetIn(key=self.key(asset)) for asset in assets}

    @cached_property
    def layout(self) -> dict:
        """``{"n_folds": K, "kfold": bool, "n_partitions": P}``: the tenant's K, else the preset's (dev: one split)."""
        with reported_in_one_line():
            base = settings.preset()
        return fold_layout(self.settings, base)

    @property
    def n_partitions(self) -> int:
        return self.layout["n_partitions"]

    @cached_property
    def fold_partitions(self) -> StaticPartitionsDefinition:
        """One partition per fold, "0".."K-1"."""
        return StaticPartitionsDefinition([str(k) for k in range(self.n_partitions)])

    def range_tags(self) -> dict[str, str]:
        """The tags of a run over every fold partition (what ``--partition-range 0...K-1`` sets)."""
        return {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": str(self.n_partitions - 1)}


def tenants_cache_path() -> Path:
    return settings.output_dir() / "tenants.json"


def discover_tenants() -> list[TenantPlan]:
    """The tenants of this deployment, read from the store (see the module docstring for fallbacks).

    Tenants the store names but that cannot be used (invalid name or settings, a key name another
    tenant has or one of the default tenant's asset names) are logged and left out; the others load.
    ``legolas tenants list`` shows why (the ``reload_on_tenant_change`` sensor's reason for the last).

    Raises:
        ConfigurationError: a ``LEGOLAS_*`` setting is invalid; one line naming it.
    """
    from pymongo.errors import PyMongoError

    cache = tenants_cache_path()
    with reported_in_one_line():
        uri, data_dir, database = settings.mongo_uri(), settings.data_dir(), settings.database_name()
    try:
        with open_catalogue(uri, data_dir, database, timeout_s=5.0) as catalogue:
            found, known = catalogue.discover(), catalogue.known()
    except (StoreUnavailableError, PyMongoError, OSError) as exc:
        cached = _cached_plans(cache)
        log.warning(f"the store cannot be read, using the tenants of the last discovery ({cache if cached is not None else 'none yet'}): {exc}")
        if cached is not None:
            return cached
        found, known = None, False  # never discovered: show the default tenant, whose runs then report the outage
    plans, refused = plan_tenants(found, known)
    for problem in refused:
        log.warning(f"tenant refused: {problem}")
    if found is not None:
        try:
            # A store that names no tenant caches none: an outage then never shows the default tenant as found.
            write_json_atomic(cache, {"tenants": [{"name": p.name, "settings": p.settings.to_dict()} for p in plans if known]})
        except OSError as exc:
            log.warning(f"could not write the tenants cache {cache}: {exc}")
    return plans


def plan_tenants(found: Discovery | None, known: bool) -> tuple[list[TenantPlan], list[str]]:
    """What a load of the code location builds from a discovery: ``(plans, why each refused one was)``.

    The one rule for the load and for the ``reload_on_tenant_change`` sensor, so that the sensor
    never sees a difference a reload would not remove (and never asks for reloads forever).

    Args:
        found: the store's discovery; ``None`` when the store was never read.
        known: whether the store names any tenant at all; if not, the default tenant is shown.

    Raises:
        ConfigurationError: ``LEGOLAS_TENANT`` is invalid; one line naming it.
    """
    if not known:
        return [TenantPlan(_default_tenant())], []
    plans = [TenantPlan(t.name, t.settings) for t in found.tenants] if found is not None else []
    refused = list(found.refused) if found is not None else []
    clashes = key_clashes(plans)
    refused += clashes.values()
    return [p for p in plans if p.name not in clashes], refused


def key_clashes(plans: list[TenantPlan]) -> dict[str, str]:
    """``{tenant: why}`` for each tenant whose key name is one of the default tenant's unprefixed keys.

    Only while the default tenant is among ``plans``: without it no key is unprefixed. The default
    tenant keeps its keys (the documented commands name them); the other tenant is the one refused.
    """
    default = next((p for p in plans if p.is_default), None)
    if default is None:
        return {}
    taken = set(ASSET_NAMES) | set(SOURCE_ASSET_NAMES)
    return {
        p.name: (
            f"tenant {p.name!r}: its key name {p.prefix!r} is an asset key of the default tenant {default.name!r} "
            f"(LEGOLAS_TENANT, whose keys are unprefixed); a tenant's key name must not be one of {sorted(taken)}: "
            "rename the tenant, or make another tenant the default"
        )
        for p in plans if not p.is_default and p.prefix in taken
    }


def validate_tenant_keys(plans: list[TenantPlan]) -> None:
    """Refuse tenants given together whose asset keys would clash (see ``key_clashes``).

    Raises:
        ValueError: naming each clashing tenant, the key and the names a tenant may not take.
    """
    clashes = key_clashes(plans)
    if clashes:
        raise ValueError("; ".join(clashes.values()))


def _default_tenant() -> str:
    with reported_in_one_line():
        return settings.tenant()


def _cached_plans(cache: Path) -> list[TenantPlan] | None:
    """The tenants of the last discovery; ``None`` when there was none (or its file is unreadable)."""
    if not cache.exists():
        return None
    try:
        entries = json.loads(cache.read_text())["tenants"]
        return [TenantPlan(e["name"], TenantSettings.from_dict(e["settings"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(f"ignoring the unreadable tenants cache {cache}: {exc}")
        return None
