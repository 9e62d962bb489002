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
    ...     catalogue.add("insurance", {"n_folds": 3})
    ...     [t.name for t in catalogue.tenants()]
    ['demo', 'insurance']
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from legolas_ml.data.store import connect, embedded_store_dir, list_tenants
from legolas_ml.core.identity import validate_database
from legolas_ml.data.store_lock import DEFAULT_WAIT_S, StoreWriterLock
from legolas_ml.core.identity import validate_tenant

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
    review_reasons: tuple[str, ...] | None = None  # audit reasons computed and recorded
    review_flag_reasons: tuple[str, ...] | None = None  # of them, those that flag a document (the others are only recorded)
    queue_size: int | None = None  # at most this many documents wait in the review queue
    random_share: float | None = None  # share of the queue drawn at random from the unflagged documents, in [0, 0.5]
    field_map: dict[str, str] | None = None  # `legolas import-conversations`: target -> the tenant's field name (--map wins)
    collection: str | None = None  # the tenant's classification collection (an existing MongoDB's); default "classifications"
    annotations: str | None = None  # "inline" or "separate": where LEGOLAS writes its own fields (default: by who created the collection)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the field, the allowed values and what was received."""
        _whole("n_folds", self.n_folds, 2)
        _whole("epochs", self.epochs, 1)
        _whole("max_length", self.max_length, 8)
        _whole("retrain_threshold", self.retrain_threshold, 1)
        _whole("queue_size", self.queue_size, 1)
        if self.model_name is not None:
            from legolas_ml.core.settings import is_local_model_path, split_model_revision

            if not isinstance(self.model_name, str) or not self.model_name.strip():
                raise ValueError(f"tenant setting model_name must be a Hugging Face id or a local directory, got {self.model_name!r}")
            split_model_revision(self.model_name, "tenant setting model_name")
            if is_local_model_path(self.model_name) and not Path(self.model_name).expanduser().is_dir():
                raise ValueError(
                    f"tenant setting model_name must be a Hugging Face id (org/name) or an existing local model "
                    f"directory, got {self.model_name!r}: no such directory"
                )
        if self.retrain_max_age_hours is not None:
            _number("retrain_max_age_hours", self.retrain_max_age_hours, "a number of hours >= 0 (0 turns it off)", lambda v: v >= 0)
        for name in ("min_confidence", "max_entropy", "max_flagged_share"):
            _number(name, getattr(self, name), "a number in [0, 1]", lambda v: 0 <= v <= 1)
        # Literal 0.5: review.audit.MAX_RANDOM_SHARE, not imported here for numpy's sake (as REASONS below).
        _number("random_share", self.random_share, "a number in [0, 0.5]", lambda v: 0 <= v <= 0.5)
        if self.review_reasons is not None:
            from legolas_ml.core.choices import REASONS  # numpy: only when a tenant sets its own reasons

            if not isinstance(self.review_reasons, tuple):
                raise ValueError(f"tenant setting review_reasons must be a list among {list(REASONS)}, got {self.review_reasons!r}")
            unknown = [r for r in self.review_reasons if r not in REASONS]
            if unknown or not self.review_reasons:
                raise ValueError(
                    f"tenant setting review_reasons must be a non-empty list among {list(REASONS)}, got {list(self.review_reasons)!r}"
                )
        if self.field_map is not None:
            from legolas_ml.data.conversation_import import parse_field_map

            if not isinstance(self.field_map, dict) or not self.field_map:
                raise ValueError(f"tenant setting field_map must be a non-empty object of target: field name, got {self.field_map!r}")
            parse_field_map(self.field_map)  # names the allowed targets and the one received
        if self.collection is not None:
            from legolas_ml.data.annotations import validate_collection

            validate_collection(self.collection)
        if self.annotations is not None:
            from legolas_ml.data.annotations import annotation_mode

            annotation_mode(self.annotations, created_by_legolas=True)  # names the allowed values
        if self.review_flag_reasons is not None:
            from legolas_ml.core.choices import REASONS

            # Empty is allowed: the queue then holds external flags and random samples only.
            if not isinstance(self.review_flag_reasons, tuple) or any(r not in REASONS for r in self.review_flag_reasons):
                shown = list(self.review_flag_reasons) if isinstance(self.review_flag_reasons, tuple) else self.review_flag_reasons
                raise ValueError(f"tenant setting review_flag_reasons must be a list among {list(REASONS)}, got {shown!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TenantSettings":
        """Settings from a stored or typed mapping; unknown keys are refused with the known ones listed."""
        if values is not None and not isinstance(values, dict):
            raise ValueError(f"tenant settings must be an object of settings, got {values!r}")
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tenant setting(s) {unknown}; the settings are {sorted(known)}")
        for name in ("review_reasons", "review_flag_reasons"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        if isinstance(values.get("model_name"), str) and values["model_name"].startswith(("./", "../", "~")):
            # Stored absolute: the Dagster run does not start in the directory the command ran in.
            values["model_name"] = str(Path(values["model_name"]).expanduser().resolve())
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that are set (what the tenant changes), JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items()) or "deployment defaults"

    def merged(self, changes: dict[str, Any], unset: tuple[str, ...] = ()) -> "TenantSettings":
        """These settings with ``changes`` on top and the ``unset`` fields back to the deployment's."""
        values = {**self.to_dict(), **changes}
        unknown = sorted(set(unset) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown tenant setting(s) {unknown} to unset; the settings are {sorted(f.name for f in fields(self))}")
        return TenantSettings.from_dict({k: v for k, v in values.items() if k not in unset})


def key_name(tenant: str) -> str:
    """The tenant's name where only letters, digits and '_' are allowed (asset keys, job names):
    '.' and '-' become '_'. Two tenants with the same key name cannot share a deployment."""
    return re.sub(r"[^A-Za-z0-9_]", "_", tenant)


def training_job_name(tenant: str) -> str:
    """``<key name>__training_job``: the tenant's Dagster job (every asset, its fold partitions in one run)."""
    return f"{key_name(tenant)}__training_job"


def fold_layout(tenant_settings: TenantSettings, preset: dict[str, Any]) -> dict[str, Any]:
    """``{"n_folds": K, "kfold": bool, "n_partitions": P}``: the tenant's K, else the preset's.

    A tenant that sets ``n_folds`` trains K-fold whatever the preset; otherwise the preset decides
    (``dev``: one train/val split, so one partition). The code location's fold partitions and
    ``legolas train``'s partition range both come from here.

    Args:
        tenant_settings: the tenant's own settings.
        preset: the deployment's preset (``settings.preset()``: ``n_folds`` and ``kfold``).
    """
    if tenant_settings.n_folds is not None:
        n_folds, kfold = tenant_settings.n_folds, True
    else:
        n_folds, kfold = preset["n_folds"], preset["kfold"]
    return {"n_folds": n_folds, "kfold": kfold, "n_partitions": n_folds if kfold else 1}


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
    refused: list[str]  # why, one line each
    removed: list[str]
    held_back: list[str] = field(default_factory=list)  # valid names refused for their settings or key name

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
        """Active tenants, sorted by name. Refused, never used, and reported with the reason: names
        that are not valid tenants, tenants whose stored settings are invalid (never trained with the
        deployment's settings instead), and tenants whose key name another known tenant already has.
        """
        refused: list[str] = []
        entries: dict[str, dict] = {}
        for doc in self.collection.find({}, {"_id": 0}):
            name = doc.get("name")
            if not _valid(name):
                refused.append(f"tenants collection: {name!r} is not a valid tenant name")
                continue
            entries[name] = doc
        removed = sorted(n for n, d in entries.items() if d.get("removed"))
        found: dict[str, Tenant] = {}
        held_back: list[str] = []
        for name in list_tenants(self.db):
            if not _valid(name):
                refused.append(f"documents: tenant {name!r} is not a valid tenant name")
            elif name not in entries:
                found[name] = Tenant(name)
        for name, doc in entries.items():
            if doc.get("removed"):
                continue
            try:
                settings = TenantSettings.from_dict(doc.get("settings"))
            except (TypeError, ValueError) as exc:
                refused.append(f"tenant {name!r}: its settings are invalid, so it is not trained until `legolas tenants add {name}` fixes them: {exc}")
                held_back.append(name)
                continue
            found[name] = Tenant(name, settings, in_catalogue=True, added_at=doc.get("added_at"))
        # Two tenants with one key name would share asset keys and asset values: the first name (in
        # sort order, removed tenants included) keeps it, the others are refused.
        owners: dict[str, str] = {}
        for name in sorted(set(found) | set(removed)):
            owner = owners.setdefault(key_name(name), name)
            if owner != name and name in found:
                del found[name]
                held_back.append(name)
                refused.append(f"tenant {name!r}: its key name {key_name(name)!r} is tenant {owner!r}'s ('.' and '-' become '_'); rename it")
        return Discovery(sorted(found.values(), key=lambda t: t.name), refused, removed, sorted(held_back))

    def known(self) -> bool:
        """Whether the store names any valid tenant at all (documents or catalogue, active or removed)."""
        names = set(list_tenants(self.db)) | {d.get("name") for d in self.collection.find({}, {"name": 1})}
        return any(_valid(n) for n in names)

    def check_new_name(self, name: str) -> None:
        """Refuse a tenant whose key name another known tenant has (``acme-eu`` beside ``acme_eu``).

        Raises:
            ValueError: naming both tenants.
        """
        validate_tenant(name)
        names = set(list_tenants(self.db)) | {d.get("name") for d in self.collection.find({}, {"name": 1})}
        for other in sorted(n for n in names if isinstance(n, str) and n != name):
            if key_name(other) == key_name(name):
                raise ValueError(
                    f"tenant {name!r} cannot be added: its key name {key_name(name)!r} (with '.' and '-' as '_') is "
                    f"tenant {other!r}'s; choose another name"
                )

    def tenants(self) -> list[Tenant]:
        return self.discover().tenants

    def get(self, name: str) -> Tenant | None:
        validate_tenant(name)
        return next((t for t in self.tenants() if t.name == name), None)

    def add(self, name: str, changes: dict[str, Any] | None = None, *, unset: tuple[str, ...] = (),
            actor: str = "legolas tenants add") -> Tenant:
        """Add a tenant, or bring a removed one back, or change some of its settings.

        The stored settings are kept: ``changes`` (setting -> value) go on top and the ``unset``
        fields go back to the deployment's values. The result is validated before anything is written.

        Raises:
            ValueError: a bad name, a key-name collision, or a bad setting (naming it).
        """
        self.check_new_name(name)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with self._writing():
            doc = self.collection.find_one({"name": name}) or {}
            try:
                stored = TenantSettings.from_dict(doc.get("settings"))
            except (TypeError, ValueError):
                stored = TenantSettings()  # invalid stored settings: replaced by what is given now
            settings = stored.merged(dict(changes or {}), unset)
            self.collection.update_one(
                {"name": name},
                {"$set": {"name": name, "settings": settings.to_dict(), "removed": False, "updated_at": now, "updated_by": actor},
                 "$setOnInsert": {"added_at": now}},
                upsert=True,
            )
        return Tenant(name, settings, in_catalogue=True, added_at=doc.get("added_at", now))

    def remove(self, name: str, *, actor: str = "legolas tenants remove") -> bool:
        """Take a tenant out of the deployment; its documents and artifacts stay. ``False``: unknown tenant."""
        validate_tenant(name)
        active = {d.get("name") for d in self.collection.find({"removed": {"$ne": True}}, {"name": 1})}
        removed = {d.get("name") for d in self.collection.find({"removed": True}, {"name": 1})}
        if name not in (active | set(list_tenants(self.db))) - removed:
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
        """Writes hold the embedded store's writer lock; the unique index keeps one document per tenant."""
        lock = self.writer_lock if self.writer_lock is not None else contextlib.nullcontext()
        with lock:
            if "tenant_name" not in self.collection.index_information():
                self.collection.create_index([("name", 1)], unique=True, name="tenant_name")
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
