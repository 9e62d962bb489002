"""The tenants of the code location: each one gets its own assets, checks, fold partitions and job.

**Why an asset factory with one key prefix per tenant** (and not a tenant partition dimension):
tenants differ in K, so their fold partitions differ (``0..2`` for one, ``0..9`` for another); a
``tenant x fold`` multi-partition would force one fold range on every tenant. A prefix also gives
each tenant its own lineage group, checks, materialization history and job in the UI, and every
tenant's assets keep the single-tenant commands: ``--select insurance/fold_models --partition 2``.

Tenants are discovered when Dagster loads the code location (``legolas_ml.data.tenants``): a tenant
added with ``legolas tenants add`` or by importing its documents appears after a reload of the code
location, without code changes. When the store cannot be read at load time the tenants of the
last successful discovery (``$LEGOLAS_HOME/output/tenants.json``) are used, so a store outage never
makes the UI lose its assets. A store that names no tenant at all (a fresh deployment) shows
``LEGOLAS_TENANT`` (default ``demo``), whose first run says how to load data; a deployment whose
tenants were all removed shows none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dagster import AssetIn, AssetKey, StaticPartitionsDefinition

from legolas_ml import settings
from legolas_ml.atomic_io import write_json_atomic
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.data.tenants import TenantSettings, fold_layout, key_name, open_catalogue, training_job_name
from legolas_ml.lifecycle.artifacts import validate_tenant

from .configuration import reported_in_one_line

log = logging.getLogger("legolas.tenants")


def dagster_name(tenant: str) -> str:
    """The tenant's name where Dagster allows only letters, digits and '_' (key prefix, group, job)."""
    return key_name(tenant)


@dataclass(frozen=True)
class TenantPlan:
    """One tenant as the code location builds it: its name, its settings and what they decide."""

    name: str
    settings: TenantSettings = field(default_factory=TenantSettings)

    def __post_init__(self) -> None:
        validate_tenant(self.name)

    @property
    def prefix(self) -> str:
        """The asset key prefix and group name: the tenant's name, '.' and '-' written as '_'."""
        return dagster_name(self.name)

    @property
    def job_name(self) -> str:
        return training_job_name(self.name)

    def key(self, asset: str) -> AssetKey:
        return AssetKey([self.prefix, asset])

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
    tenant has) are logged and left out; the others load. ``legolas tenants list`` shows why.

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
        known = False  # never discovered: show the default tenant, whose runs then report the outage
        found = None
    plans = []
    if found is not None:
        for problem in found.refused:
            log.warning(f"tenant refused: {problem}")
        plans = [TenantPlan(t.name, t.settings) for t in found.tenants]
        try:
            write_json_atomic(cache, {"tenants": [{"name": p.name, "settings": p.settings.to_dict()} for p in plans]})
        except OSError as exc:
            log.warning(f"could not write the tenants cache {cache}: {exc}")
    if not known:
        with reported_in_one_line():
            plans = [TenantPlan(settings.tenant())]
    return plans


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
