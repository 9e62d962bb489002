"""The tenants of a deployment: discovered in the store, with optional per-tenant settings.

A tenant exists when its documents are in the store (``legolas demo-data`` or ``legolas
import-reviews --tenant T`` is enough) or when the ``tenants`` collection names it (``legolas
tenants add``). That collection also holds what differs per tenant (K, model, epochs, retraining
threshold, review rules) and which tenants were removed from the deployment: a removed tenant keeps
its documents and artifacts (nothing is deleted), it only stops being trained, watched and shown,
until ``legolas tenants add`` brings it back.

Every name read from the store passes ``validate_tenant`` before it names an asset, a directory or
a run: a hostile name (``../x``) stored by some other writer is skipped and reported, never used.

Example:
    >>> with open_catalogue(None, "var") as catalogue:  # doctest: +SKIP
    ...     catalogue.add("insurance", TenantSettings(n_folds=3))
    ...     [t.name for t in catalogue.tenants()]
    ['demo', 'insurance']
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from legolas_ml.data.store import connect, embedded_store_dir, list_tenants, validate_database
from legolas_ml.data.store_lock import DEFAULT_WAIT_S, StoreWriterLock
from legolas_ml.lifecycle.artifacts import validate_tenant

TENANTS = "tenants"


@dataclass(frozen=True)
class TenantSettings:
    """What one tenant changes from the deployment's settings; ``None`` keeps the deployment's value.

    The deployment's values come from ``LEGOLAS_*`` (the preset, ``LEGOLAS_MODEL``,
    ``LEGOLAS_RETRAIN_THRESHOLD``, ...) and the resources' defaults.
    """

    n_folds: int | None = None  # K of K-fold for this tenant (its fold partitions 0..K-1)
    model_name: str | None = None  # a Hugging Face id or a local model directory
    epochs: int | None = None  # at most this many epochs per fold
    max_length: int | None = None  # tokens per text
    retrain_threshold: int | None = None  # waiting reviews that trigger a retraining
    retrain_max_age_hours: float | None = None  # or the oldest waiting review's age; 0 turns it off
    min_confidence: float | None = None  # audit: low_confidence below this top probability
    max_entropy: float | None = None  # audit: high_entropy above this normalised entropy
    max_flagged_share: float | None = None  # check: flagged share of audited documents stays under
    review_reasons: tuple[str, ...] | None = None  # audit reasons that flag a document

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the field, the allowed values and what was received."""
        _whole("n_folds", self.n_folds, 2)
        _whole("epochs", self.epochs, 1)
        _whole("max_length", self.max_length, 8)
        _whole("retrain_threshold", self.retrain_threshold, 1)
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name.strip()):
            raise ValueError(f"tenant setting model_name must be a Hugging Face id or a local directory, got {self.model_name!r}")
        if self.retrain_max_age_hours is not None:
            _number("retrain_max_age_hours", self.retrain_max_age_hours, "a number of hours >= 0 (0 turns it off)", lambda v: v >= 0)
        for name in ("min_confidence", "max_entropy", "max_flagged_share"):
            _number(name, getattr(self, name), "a number in [0, 1]", lambda v: 0 <= v <= 1)
        if self.review_reasons is not None:
            from legolas_ml.review.audit import REASONS  # numpy: only when a tenant sets its own reasons

            unknown = [r for r in self.review_reasons if r not in REASONS]
            if not isinstance(self.review_reasons, tuple) or unknown or not self.review_reasons:
                raise ValueError(
                    f"tenant setting review_reasons must be a non-empty list among {list(REASONS)}, got {list(self.review_reasons)!r}"
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TenantSettings":
        """Settings from a stored or typed mapping; unknown keys are refused with the known ones listed."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tenant setting(s) {unknown}; the settings are {sorted(known)}")
        if isinstance(values.get("review_reasons"), list):
            values["review_reasons"] = tuple(values["review_reasons"])
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that are set (what the tenant changes), JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items()) or "deployment defaults"


def _whole(name: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"tenant setting {name} must be a whole number >= {minimum}, got {value!r}")


def _number(name: str, value: Any, allowed: str, ok) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"tenant setting {name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class Tenant:
    """One tenant of the deployment and where it was found."""

    name: str
    settings: TenantSettings = field(default_factory=TenantSettings)
    in_catalogue: bool = False  # named in the `tenants` collection (else found through its documents)
    added_at: datetime | None = None


@dataclass
class Discovery:
    """The tenants found, and what was found but refused (hostile names, unreadable settings)."""

    tenants: list[Tenant]
    refused: list[str]
    removed: list[str]

    def names(self) -> list[str]:
        return [t.name for t in self.tenants]


class TenantCatalogue:
    """The deployment's tenants: the ``tenants`` collection plus the tenants the documents name.

    Args:
        database: a pymongo (or litemongo) ``Database``.
        writer_lock: the embedded store's writer lock (``None`` on MongoDB).
    """

    def __init__(self, database, writer_lock: StoreWriterLock | None = None) -> None:
        self.db = database
        self.collection = database[TENANTS]
        self.writer_lock = writer_lock

    def discover(self) -> Discovery:
        """Active tenants, sorted by name; refused names and unreadable settings are reported, not used."""
        refused: list[str] = []
        entries: dict[str, dict] = {}
        for doc in self.collection.find({}, {"_id": 0}):
            name = doc.get("name")
            if not _valid(name):
                refused.append(f"tenants collection: {name!r} is not a valid tenant name")
                continue
            entries[name] = doc
        found: dict[str, Tenant] = {}
        removed = sorted(n for n, d in entries.items() if d.get("removed"))
        for name in list_tenants(self.db):
            if not _valid(name):
                refused.append(f"documents: tenant {name!r} is not a valid tenant name")
            elif name not in removed:
                found[name] = Tenant(name)
        for name, doc in entries.items():
            if doc.get("removed"):
                continue
            try:
                settings = TenantSettings.from_dict(doc.get("settings"))
            except (TypeError, ValueError) as exc:
                refused.append(f"tenants collection: {name}: {exc}")
                continue
            found[name] = Tenant(name, settings, in_catalogue=True, added_at=doc.get("added_at"))
        return Discovery(sorted(found.values(), key=lambda t: t.name), refused, removed)

    def tenants(self) -> list[Tenant]:
        return self.discover().tenants

    def get(self, name: str) -> Tenant | None:
        validate_tenant(name)
        return next((t for t in self.tenants() if t.name == name), None)

    def add(self, name: str, settings: TenantSettings | None = None, *, actor: str = "legolas tenants add") -> Tenant:
        """Add (or bring back) a tenant with its settings; replaces the settings of an existing one."""
        validate_tenant(name)
        settings = settings or TenantSettings()
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with self._writing():
            self.collection.update_one(
                {"name": name},
                {"$set": {"name": name, "settings": settings.to_dict(), "removed": False, "updated_at": now, "updated_by": actor},
                 "$setOnInsert": {"added_at": now}},
                upsert=True,
            )
        return Tenant(name, settings, in_catalogue=True, added_at=now)

    def remove(self, name: str, *, actor: str = "legolas tenants remove") -> bool:
        """Take a tenant out of the deployment; its documents and artifacts stay. ``False``: unknown tenant."""
        validate_tenant(name)
        if self.get(name) is None:
            return False
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with self._writing():
            self.collection.update_one(
                {"name": name},
                {"$set": {"name": name, "removed": True, "updated_at": now, "updated_by": actor}, "$setOnInsert": {"added_at": now, "settings": {}}},
                upsert=True,
            )
        return True

    @contextlib.contextmanager
    def _writing(self):
        if self.writer_lock is None:
            yield
            return
        with self.writer_lock:
            yield


def _valid(name: Any) -> bool:
    try:
        validate_tenant(name)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def open_catalogue(uri: str | None, data_dir: str | Path, database: str = "legolas", timeout_s: float = 5.0,
                   lock_wait_s: float = DEFAULT_WAIT_S):
    """Connect and yield the deployment's ``TenantCatalogue``; the client is always closed.

    Raises:
        StoreUnavailableError: if the store cannot be reached or opened.
    """
    validate_database(database)
    client = connect(uri, data_dir, timeout_s)
    try:
        lock = None if uri else StoreWriterLock(embedded_store_dir(data_dir), lock_wait_s)
        yield TenantCatalogue(client[database], lock)
    finally:
        client.close()
