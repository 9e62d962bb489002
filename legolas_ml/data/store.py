"""Tenant-scoped access to the classification and review collections, on MongoDB or embedded.

With a URI, LEGOLAS talks to a real MongoDB through pymongo. Without one it opens litemongo, an
embedded on-disk store with pymongo's API: durable across processes (webserver, daemon and CLI see
the same data), crash-safe, with unique indexes and aggregate, and fast enough at 100k documents.
Every query here is written in a form that both evaluate identically (regexes as compiled
``re.Pattern`` objects, never ``{"$not": {"$regex": ..., "$options": ...}}``, which litemongo rejects).

Every review carries ``seq``: the order the store received it in, numbered per tenant by a counter
document in ``review_sequences`` (``{"_id": tenant, "seq": last}``, one atomic ``$inc``). The
retraining sensor counts reviews by it, never by the reviewer-supplied ``reviewed_at``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from legolas_ml.data import annotations as annotation_store
from legolas_ml.data.annotations import ANNOTATIONS, COLLECTION_MARKERS
from legolas_ml.core.ids import normalise_session_id
from legolas_ml.data.store_integrity import StoreIntegrityError, find_duplicates, integrity_error
from legolas_ml.data.store_lock import DEFAULT_WAIT_S, StoreBusyError, StoreWriterLock
from legolas_ml.core.identity import validate_database

CLASSIFICATIONS = "classifications"
REVIEWS = "human_reviews"
#: One counter per tenant: ``{"_id": tenant, "seq": <last number given>, "legacy_seq": <see number_reviews>}``.
SEQUENCES = "review_sequences"
SEQ = "seq"
#: The deployment's tenants and their settings (``tenants.TenantCatalogue``); read here for a tenant's collection layout.
TENANT_CATALOGUE = "tenants"
DEFAULT_DATABASE = "legolas"
# (collection, fields, options) of every index; the unique ones are what a repair restores.
INDEXES = (
    (CLASSIFICATIONS, (("tenant", 1), ("session_id", 1)), {"unique": True, "name": "tenant_session"}),
    (REVIEWS, (("tenant", 1), ("session_id", 1), ("reviewed_at", 1)), {"unique": True, "name": "tenant_session_reviewed"}),
    (REVIEWS, (("tenant", 1), ("reviewed_at", 1), ("_id", 1)), {"name": "tenant_reviewed_at"}),
    (REVIEWS, (("tenant", 1), (SEQ, 1)), {"name": "tenant_seq"}),
)
#: One annotation per (tenant, session): created only for a tenant whose annotations are separate.
ANNOTATION_INDEX = (ANNOTATIONS, (("tenant", 1), ("session_id", 1)), {"unique": True, "name": "tenant_session"})
UNIQUE_INDEXES = {
    collection: (options["name"], tuple(name for name, _ in fields))
    for collection, fields, options in INDEXES
    if options.get("unique")
}
def trusted_llm_query(tenant: str, *, despite_audit: bool = False) -> dict[str, Any]:
    """The trusted-LLM rule: method matches "llm" and neither "human" nor "ml" (case-insensitive),
    a prediction exists and is not null, the document is not waiting for review, and the label
    audit does not doubt it (``review_doubted``: flagged by its rules, left out of the queue by the
    budget). With ``despite_audit``, a flag or doubt of the label audit itself does not count."""
    return {
        "tenant": tenant,
        "$and": [
            {"classification_method": re.compile("llm", re.IGNORECASE)},
            {"classification_method": {"$not": re.compile("human", re.IGNORECASE)}},
            {"classification_method": {"$not": re.compile("ml", re.IGNORECASE)}},
            {"llm_prediction": {"$exists": True, "$ne": None}},
            *(
                # The first training's rule, which a retraining under retrain_data 'switch' keeps: the
                # label audit's own flags and doubts do not un-trust a label (a flag raised before it,
                # by the LLM pipeline or a person, still does). Confident learning is 'unflagged'.
                [{"$or": [{"needs_review": {"$ne": True}}, {"review_flagged_by": "label_audit"}]}]
                if despite_audit else [{"needs_review": {"$ne": True}}, {"review_doubted": {"$ne": True}}]
            ),
        ],
    }


#: A classification decided by a person (``human_review``, ``llm+human``): the loop never touches it.
HUMAN_METHOD = re.compile("human", re.IGNORECASE)


@dataclass(frozen=True)
class FieldChanges:
    """What one write does to a classification's fields: which take which values (``set``) and which go away (``unset``).

    The store is the only module that writes MongoDB's update operators: the review and scoring
    stages say which fields change in these terms, and ``TenantStore`` turns them into ``$set`` and
    ``$unset`` (``to_update``), for the document itself or its annotation.
    """

    set: Mapping[str, Any] = field(default_factory=dict)
    unset: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.unset, str):  # frozenset("review_doubted") would be its letters
            raise TypeError(f"FieldChanges.unset must be a collection of field names, got the string {self.unset!r}")
        # Copies: a caller changing its dict or set afterwards does not change this value.
        object.__setattr__(self, "set", dict(self.set))
        object.__setattr__(self, "unset", frozenset(self.unset))
        operators = sorted(name for name in (*self.set, *self.unset) if str(name).startswith("$"))
        if operators:
            raise ValueError(f"FieldChanges takes field names, not update operators (the store writes those), got {operators}")
        both = sorted(self.unset.intersection(self.set))
        if both:
            raise ValueError(f"fields both set and unset in one FieldChanges: {both}")

    @property
    def is_empty(self) -> bool:
        """Whether nothing changes."""
        return not self.set and not self.unset

    def __bool__(self) -> bool:
        return not self.is_empty

    def to_update(self) -> dict[str, Any]:
        """The MongoDB update document: ``{"$set": {...}, "$unset": {name: ""}}``, only the parts that are not empty."""
        update: dict[str, Any] = {}
        if self.set:
            update["$set"] = dict(self.set)
        if self.unset:
            update["$unset"] = {name: "" for name in sorted(self.unset)}
        return update


def _field_changes(changes: Any, method: str) -> FieldChanges:
    """``changes`` itself, or a TypeError naming ``method``'s argument, the expected type and what came."""
    if not isinstance(changes, FieldChanges):
        raise TypeError(
            f"TenantStore.{method}: changes must be a FieldChanges (legolas_ml.data.store), "
            f"got {type(changes).__name__}: {changes!r:.200}"
        )
    if changes.is_empty:
        raise ValueError(f"TenantStore.{method}: changes is an empty FieldChanges (nothing to write)")
    return changes


class StoreUnavailableError(ConnectionError):
    """The store cannot be reached; the message names the host and never the password."""


def redact_uri(uri: str) -> str:
    """``mongodb://user:secret@host/db`` -> ``mongodb://user:***@host/db`` (also in query strings)."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = re.sub(r"(?i)(password|secret|token)=[^&]*", r"\1=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def uri_password(uri: str | None) -> str | None:
    """The password inside a URI, so any text can be scrubbed of it (including URL-decoded forms)."""
    if not uri:
        return None
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return None
    if "@" not in netloc:
        return None
    userinfo = netloc.rsplit("@", 1)[0]
    return userinfo.split(":", 1)[1] if ":" in userinfo else None


def scrub(text: str, uri: str | None) -> str:
    """Remove the URI's password from any text (logs, errors, metadata)."""
    from urllib.parse import unquote

    secret = uri_password(uri)
    if uri:
        text = text.replace(uri, redact_uri(uri))
    if secret:
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


def uri_hosts(uri: str) -> str:
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return "<unparseable URI>"
    return netloc.rsplit("@", 1)[-1] or "<no host>"


def embedded_store_dir(data_dir: str | Path) -> Path:
    """The directory of the embedded store under ``data_dir`` (its databases and its writer lock)."""
    return Path(data_dir) / "store"


def connect(uri: str | None, data_dir: str | Path, timeout_s: float = 5.0):
    """A pymongo-compatible client: MongoDB when ``uri`` is set, the embedded store otherwise.

    Raises:
        StoreUnavailableError: if MongoDB does not answer within ``timeout_s`` (names the host only).
    """
    if uri:
        import pymongo
        from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

        try:
            client = pymongo.MongoClient(
                uri,
                serverSelectionTimeoutMS=int(timeout_s * 1000),
                connectTimeoutMS=int(timeout_s * 1000),
                tz_aware=False,
            )
            client.admin.command("ping")
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise StoreUnavailableError(f"invalid MongoDB URI {redact_uri(uri)}: {scrub(str(exc), uri)}") from None
        except PyMongoError as exc:
            raise StoreUnavailableError(
                f"cannot reach MongoDB at {uri_hosts(uri)} within {timeout_s:g}s: {scrub(str(exc), uri)[:300]}"
            ) from None
        return client
    import litemongo

    path = embedded_store_dir(data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return litemongo.connect(str(path))
    except OSError as exc:
        raise StoreUnavailableError(f"cannot open the embedded store at {path}: {exc}") from None


class TenantStore:
    """The two collections of one tenant.

    Args:
        database: a pymongo (or litemongo) ``Database``.
        tenant: the tenant every query is scoped to.
        writer_lock: the embedded store's writer lock, taken by the first write and held until
            ``finish_writing``; ``None`` on MongoDB, whose server enforces the unique indexes.
        collection: the tenant's classification collection (tenant setting ``collection``).
        annotations: ``"inline"`` or ``"separate"`` (``annotations.annotation_mode``): where
            LEGOLAS's own per-document writes go.
    """

    def __init__(self, database, tenant: str, writer_lock: StoreWriterLock | None = None, *,
                 collection: str = CLASSIFICATIONS, annotations: str = "inline") -> None:
        from legolas_ml.core.identity import validate_tenant  # the name also names files (repair backups)

        self.db = database
        self.tenant = validate_tenant(tenant)
        self.classifications = database[collection]
        self.annotation_mode, _ = annotation_store.annotation_mode(annotations, created_by_legolas=True)
        self.annotations = database[ANNOTATIONS]
        self.reviews = database[REVIEWS]
        self.writer_lock = writer_lock
        self.writing = False  # whether this store holds the writer lock
        self.embedded = type(database).__module__.startswith("litemongo")

    def ensure_indexes(self, only_missing: bool = False) -> None:
        """Create the collections' indexes (idempotent: safe on every start).

        Args:
            only_missing: skip indexes that already exist. litemongo re-checks every document of a
                unique index it is asked to create again, so the embedded store only creates new ones
                and checks the tenant's documents with ``check_unique`` instead.
        """
        for collection, fields, options in (*INDEXES, *([ANNOTATION_INDEX] if self.separate else [])):
            if only_missing and options["name"] in self.db[collection].index_information():
                continue
            self.db[collection].create_index(list(fields), **options)

    def _unique_keys_of(self, collection: str, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        """The tenant's documents of ``collection``, as read for a uniqueness check."""
        if self.embedded:
            # litemongo's find() filters and copies each document in Python (~40x slower than this:
            # 12 s against 0.3 s for 30k documents); its own create_index reads the stored ones directly.
            return (d for d in self.db[collection]._store.documents if d.get("tenant") == self.tenant)
        return self.db[collection].find({"tenant": self.tenant}, {name: 1 for name in keys})

    def duplicates(self) -> list:
        """The tenant's keys that more than one document shares in a unique index (``Duplicates``)."""
        return [
            dup
            for collection, (index, keys) in UNIQUE_INDEXES.items()
            for dup in find_duplicates(self._unique_keys_of(collection, keys), collection, index, keys)
        ]

    def check_unique(self, where: str = "the store") -> None:
        """Raise if the tenant has documents that a unique index forbids (a store corrupted by
        concurrent writers before they were serialised).

        Raises:
            StoreIntegrityError: naming the first duplicated key and ``legolas repair-store``.
        """
        duplicates = self.duplicates()
        if duplicates:
            raise integrity_error(duplicates, self.tenant, where)

    def create_indexes(self) -> None:
        """The indexes a writer needs: all of them on MongoDB (idempotent there), the missing ones on
        the embedded store (created under its writer lock, never by a reader).

        Raises:
            StoreIntegrityError: if a missing unique index cannot be created over duplicate documents.
        """
        from pymongo.errors import DuplicateKeyError

        if self.writer_lock is None:
            self.ensure_indexes()
            return
        try:
            self.ensure_indexes(only_missing=True)
        except DuplicateKeyError:
            self.check_unique()  # names this tenant's duplicate when it has one
            raise StoreIntegrityError(
                "a unique index of the embedded store cannot be created: another tenant has duplicate "
                "documents; run `legolas repair-store` (every tenant)"
            ) from None

    def start_writing(self, create_indexes: bool = True) -> None:
        """Take the writer lock (embedded store) until ``finish_writing``; idempotent.

        Every write method calls this, so a store opened for reading becomes a writer at its first
        write.

        Args:
            create_indexes: create the missing indexes once the lock is held; a repair creates them
                only after removing the duplicates that would break them.

        Raises:
            StoreBusyError: if another writer keeps the lock longer than the lock's ``wait_s``.
        """
        if self.writer_lock is None or self.writing:
            return
        self.writer_lock.acquire()
        self.writing = True
        if create_indexes:
            self.create_indexes()

    def finish_writing(self) -> None:
        """Give the writer lock back (no-op if this store never wrote)."""
        if self.writing:
            self.writing = False
            self.writer_lock.release()

    # --- reads ---
    @property
    def separate(self) -> bool:
        """Whether LEGOLAS's own fields live in ``legolas_annotations`` (joined on every read)."""
        return self.annotation_mode == "separate"

    def _find(self, query: dict[str, Any], fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """``find(query)`` on the classification documents as LEGOLAS sees them (annotations joined in separate mode)."""
        if not self.separate:
            return self.classifications.find(query, None if fields is None else {n: 1 for n in ("session_id", *fields)})
        base = {k: query[k] for k in ("tenant", "session_id") if k in query}
        return annotation_store.joined(self.classifications.find(base), self._annotations_of, query, fields)

    def _annotations_of(self, session_ids: list[Any]) -> Iterator[dict[str, Any]]:
        return self.annotations.find({"tenant": self.tenant, "session_id": {"$in": session_ids}})

    def _annotate(self, query: dict[str, Any], changes: FieldChanges, *, requires: dict[str, Any] | None = None) -> bool:
        """Apply ``changes`` to LEGOLAS's fields of the one classification ``query`` matches: in the
        document itself (inline), or in its annotation (separate), the user's document untouched.

        Args:
            query: the classification document's filter (tenant, session id, conditions on its own fields).
            requires: conditions on LEGOLAS's own fields (``review_flagged_by``), met by the merged document.
        """
        update = changes.to_update()
        self.start_writing()
        if not self.separate:
            return self.classifications.update_one({**query, **(requires or {})}, update).matched_count == 1
        matches = list(self._find({**query, **(requires or {})}, ("session_id",)))
        if len(matches) != 1:
            return False
        # Known limit on MongoDB: the check and the write are two operations; under the embedded store's
        # writer lock nothing comes between them.
        key = {"tenant": self.tenant, "session_id": matches[0]["session_id"]}
        self.annotations.update_one(key, update, upsert=True)
        return True

    def trusted_llm_classifications(self, *, despite_audit: bool = False) -> Iterator[dict[str, Any]]:
        """The tenant's trusted LLM labels (``trusted_llm_query``); ``despite_audit`` keeps those the
        label audit flagged or doubts (not those flagged before it)."""
        return self._find(trusted_llm_query(self.tenant, despite_audit=despite_audit))

    def human_reviews(self) -> Iterator[dict[str, Any]]:
        return self.reviews.find({"tenant": self.tenant})

    def texts_for(self, session_ids: Iterable[str], chunk: int = 1000) -> dict[str, Any]:
        """The classification text of each session that has one (looked up in chunks).

        The result is keyed by the normalised id (``normalise_session_id``), and each id is looked
        up both as given and normalised: a review of ``" s1 "`` finds the text stored under ``"s1"``
        or under ``" s1 "``. (A classification written elsewhere as ``" s1 "`` is not found from a
        review of ``"s1"``: that would need a scan, not an indexed lookup.)
        """
        wanted: set[str] = set()
        forms: set[str] = set()  # each id as given and normalised: documents written elsewhere may keep either
        for raw in session_ids:
            sid = normalise_session_id(raw)
            if sid is not None:
                wanted.add(sid)
                forms.update({sid, raw} if isinstance(raw, str) else {sid})
        ids = sorted(forms)
        texts: dict[str, Any] = {}
        for start in range(0, len(ids), chunk):
            query = {"tenant": self.tenant, "session_id": {"$in": ids[start : start + chunk]}}
            for doc in self.classifications.find(query, {"session_id": 1, "text": 1}):
                sid = normalise_session_id(doc.get("session_id"))
                if sid in wanted and not isinstance(texts.get(sid), str):
                    texts[sid] = doc.get("text")
        return texts

    # --- the order reviews were received in ---
    def _reserve_seqs(self, n: int, *, numbering: bool = False) -> int:
        """Take ``n`` numbers from the tenant's counter (one atomic update); returns the last one.

        Args:
            numbering: ``number_reviews`` is asking. If the tenant has no counter yet, every review
                it numbers was stored by an older release: the counter remembers how many (``legacy_seq``).

        Known limit (MongoDB with concurrent writers): a number is taken before its review is inserted,
        so writer A can hold 10 while writer B's 11 is already stored and read by a training; A's
        review then sits behind that training's cursor and is not counted as waiting. The embedded
        store is safe (one writer at a time holds its lock); on MongoDB, import reviews from one
        process at a time until reads hold back past a gap.
        """
        from pymongo import ReturnDocument

        update: dict[str, Any] = {"$inc": {SEQ: n}}
        if numbering:
            update["$setOnInsert"] = {"legacy_seq": n}
        counter = self.db[SEQUENCES].find_one_and_update(
            {"_id": self.tenant}, update, upsert=True, return_document=ReturnDocument.AFTER
        )
        return counter[SEQ]

    def _unsequenced(self) -> list[dict[str, Any]]:
        """The tenant's reviews without a ``seq`` (``_id`` and ``reviewed_at`` only)."""
        if self.embedded:  # a scan of the stored documents: ~40x faster than litemongo's find (see _unique_keys_of)
            return [
                {"_id": d["_id"], "reviewed_at": d.get("reviewed_at")}
                for d in self.reviews._store.documents
                if d.get("tenant") == self.tenant and d.get(SEQ) is None
            ]
        return list(self.reviews.find({"tenant": self.tenant, SEQ: None}, {"reviewed_at": 1}))

    def number_reviews(self) -> int:
        """Give every review of the tenant stored without a ``seq`` one; returns how many were numbered.

        Reviews stored by a release before sequence numbers (or written around ``insert_review``)
        are numbered after every numbered review, in a deterministic order: those with a datetime
        ``reviewed_at`` by ``(reviewed_at, str(_id))``, the order the older releases counted them
        in (so a cursor they wrote covers a prefix: ``resolve_cursor``), then the others by
        ``str(_id)``. Idempotent: a numbered review is never renumbered (two processes numbering
        at once leave gaps, never a review with two numbers). ``open_tenant_store`` runs it at
        every open: an index lookup on MongoDB when there is nothing to number, a scan of the
        tenant's documents on the embedded store (like ``check_unique``), and about 1 ms a review
        once, at the first open after an upgrade.
        """
        docs = self._unsequenced()
        if not docs:
            return 0
        docs.sort(key=_numbering_key)
        last = self._reserve_seqs(len(docs), numbering=True)
        for seq, doc in enumerate(docs, last - len(docs) + 1):
            self.reviews.update_one({"tenant": self.tenant, "_id": doc["_id"], SEQ: None}, {"$set": {SEQ: seq}})
        return len(docs)

    def resolve_cursor(self, after: tuple[int | None, datetime | None, str | None] | None) -> int:
        """The ``seq`` a cursor (``ReviewCursor.as_tuple()``) stands for: the reviews numbered up to it are behind it.

        A cursor written by an older release, ``(None, reviewed_at, review_id)``, covered the reviews
        with ``(reviewed_at, str(_id))`` up to its own. It stands for the longest run of reviews, in
        ``seq`` order, that it covered, among those numbered when the tenant's reviews were first
        numbered (the only ones an older release can have read): on a store numbered by
        ``number_reviews`` that is exactly the reviews it covered, and a review received later, even
        one dated before the cursor, waits.
        """
        if after is None:
            return 0
        seq, reviewed_at, review_id = after
        if seq is not None:
            return seq
        numbered = {SEQ: {"$gte": 0}}
        later = [
            {"tenant": self.tenant, "reviewed_at": {"$gt": reviewed_at}, **numbered},
            {"tenant": self.tenant, "reviewed_at": {"$not": {"$type": "date"}}, **numbered},  # never counted by the old cursor
        ]
        firsts = [doc[SEQ] for query in later for doc in self.reviews.find(query, {SEQ: 1}).sort([(SEQ, 1)]).limit(1)]
        ties = self.reviews.find({"tenant": self.tenant, "reviewed_at": reviewed_at, **numbered}, {SEQ: 1})
        firsts += [doc[SEQ] for doc in ties if str(doc["_id"]) > review_id]
        counter = self.db[SEQUENCES].find_one({"_id": self.tenant}) or {}
        covered = counter.get("legacy_seq", 0)
        return min(covered, min(firsts) - 1) if firsts else covered

    def reviews_after(self, after: tuple[int | None, datetime | None, str | None] | None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Reviews received after the cursor (``ReviewCursor.as_tuple()``, see ``resolve_cursor``), by ``seq``, without their text.

        Every review counts, whatever its ``reviewed_at`` (older than the cursor's, in the future, a string).
        """
        query = {"tenant": self.tenant, SEQ: {"$gt": self.resolve_cursor(after)}}
        return list(self.reviews.find(query, {"text": 0}).sort([(SEQ, 1)]).limit(limit))

    def count_reviews_after(self, after: tuple[int | None, datetime | None, str | None] | None) -> int:
        """How many reviews ``reviews_after(after)`` would return without its limit (counted, not read)."""
        return self.reviews.count_documents({"tenant": self.tenant, SEQ: {"$gt": self.resolve_cursor(after)}})

    def counts(self) -> dict[str, Any]:
        newest = list(
            self.reviews.find({"tenant": self.tenant, "reviewed_at": {"$type": "date"}}, {"reviewed_at": 1})
            .sort([("reviewed_at", -1)])
            .limit(1)
        )
        return {
            "classifications": self.classifications.count_documents({"tenant": self.tenant}),
            "reviews": self.reviews.count_documents({"tenant": self.tenant}),
            "newest_review": newest[0]["reviewed_at"] if newest else None,
        }

    # --- the review loop: the ensemble's scores and the review queue ---
    def reviewed_session_ids(self, among: Iterable[str] | None = None) -> set[str]:
        """Sessions a human decided (normalised ids): a review exists, or a human classified the document.

        Args:
            among: look only these sessions up (a batch about to be written); ``None`` for all.
        """
        review_query: dict[str, Any] = {"tenant": self.tenant}
        human_query: dict[str, Any] = {"tenant": self.tenant, "classification_method": HUMAN_METHOD}
        if among is not None:
            forms = sorted({f for raw in among for f in (raw, normalise_session_id(raw)) if isinstance(f, str)})
            review_query["session_id"] = human_query["session_id"] = {"$in": forms}
        ids = {normalise_session_id(doc.get("session_id")) for doc in self.reviews.find(review_query, {"session_id": 1})}
        ids |= {normalise_session_id(doc.get("session_id")) for doc in self.classifications.find(human_query, {"session_id": 1})}
        ids.discard(None)
        return ids

    def classification_fields(self, fields: Iterable[str], session_ids: Iterable[Any] | None = None) -> Iterator[dict[str, Any]]:
        """The tenant's classification documents with only ``fields`` (and ``session_id``), all or some.

        Args:
            session_ids: the stored ``session_id`` values to read; ``None`` scans the tenant.
        """
        query: dict[str, Any] = {"tenant": self.tenant}
        if session_ids is not None:
            query["session_id"] = {"$in": list(session_ids)}
        return self._find(query, fields)

    def random_sample_ids(self) -> frozenset[str]:
        """Normalised session ids the review queue sent to a reviewer as random samples (``review_sample: "random"``,
        set by the label audit and kept after the review), for the holdout's service-like part.

        Intersected with the reviewed sessions, this is the part of the reviews drawn at random: an
        estimate of the service's accuracy, apart from the hard cases. A sample the audit took out of
        the queue before any review (a smaller budget) is not in it."""
        docs = self._find({"tenant": self.tenant, "review_sample": "random"}, ())
        return frozenset(str(sid) for sid in (normalise_session_id(d.get("session_id")) for d in docs) if sid)

    def update_unreviewed(self, session_id: Any, changes: FieldChanges, *, text: str | None = None) -> bool:
        """Apply ``changes`` to one classification in one atomic update,
        only if no human classified it and, when ``text`` is given, its text is still ``text``.

        A document is either fully updated or untouched: a store failing mid-batch leaves no
        half-written document. Returns whether the document matched.

        Raises:
            TypeError: if ``changes`` is not a ``FieldChanges`` (an update document is the store's to write).
            ValueError: if ``changes`` is empty.
        """
        changes = _field_changes(changes, "update_unreviewed")
        query: dict[str, Any] = {"tenant": self.tenant, "session_id": session_id, "classification_method": {"$not": HUMAN_METHOD}}
        if text is not None:
            query["text"] = text
        return self._annotate(query, changes)

    def has_review(self, session_id: str, label: str) -> bool:
        """Whether the session already has a review with exactly this label."""
        forms = sorted({session_id, normalise_session_id(session_id)} - {None})
        return self.reviews.find_one({"tenant": self.tenant, "session_id": {"$in": forms}, "label": label}, {"_id": 1}) is not None

    def clear_audit_flag(self, session_id: Any, auditor: str, changes: FieldChanges) -> bool:
        """Apply ``changes`` to one classification only if ``auditor`` raised its review flag
        (a reviewed document loses the audit's flag, never anything a person or the LLM set)."""
        changes = _field_changes(changes, "clear_audit_flag")
        return self._annotate({"tenant": self.tenant, "session_id": session_id}, changes, requires={"review_flagged_by": auditor})

    def flagged_for_review(self, fields: Iterable[str]) -> Iterator[dict[str, Any]]:
        """The tenant's classification documents with ``needs_review: true``."""
        return self._find({"tenant": self.tenant, "needs_review": True}, fields)

    # --- writes ---
    def _owned(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as stored: this tenant's, with its session id normalised."""
        owned = {**doc, "tenant": self.tenant}
        sid = normalise_session_id(doc.get("session_id"))
        if isinstance(doc.get("session_id"), str) and sid is not None:
            owned["session_id"] = sid
        return owned

    def insert_classifications(self, docs: list[dict[str, Any]]) -> int:
        """Insert classification documents of this tenant; returns how many were inserted."""
        if not docs:
            return 0
        self.start_writing()
        self._mark_if_creating()
        return len(self.classifications.insert_many([self._owned(d) for d in docs]).inserted_ids)

    def _mark_if_creating(self) -> None:
        """Record that LEGOLAS creates the classification collection, when it writes its first documents."""
        if self.classifications.find_one({}, {"_id": 1}) is None:
            from datetime import timezone

            self.db[COLLECTION_MARKERS].update_one(
                {"_id": self.classifications.name},
                {"$setOnInsert": {"created_by": "legolas", "created_at": datetime.now(timezone.utc).replace(tzinfo=None)}},
                upsert=True,
            )

    def upsert_classifications(self, docs: list[dict[str, Any]], fields: tuple[str, ...], *, write: bool = True) -> list[str]:
        """Store imported classification documents keyed by session id; returns ``"new"``, ``"updated"``
        or ``"unchanged"`` for each.

        Only ``fields`` belong to the import: a stored document whose ``fields`` already equal the
        given ones is left alone (a second import of the same file writes nothing), a changed one
        gets the new values (and loses the ``fields`` the new document lacks); the fields LEGOLAS
        wrote itself (predictions, review flags) stay, and an edited text is scored again because its
        ``ml_text_sha256`` no longer matches. ``created_at`` is set once, at the first import.

        Args:
            docs: documents with distinct normalised ``session_id`` (the importer rejects repeats).
            fields: the imported fields, compared and replaced.
            write: ``False`` reports what an import would do and writes nothing (``--dry-run``).
        """
        if not docs:
            return []
        owned = [self._owned(d) for d in docs]
        # One lookup per batch: litemongo scans the collection for every find.
        ids = [d["session_id"] for d in owned]
        stored = {
            d["session_id"]: d
            for d in self.classifications.find({"tenant": self.tenant, "session_id": {"$in": ids}}, {name: 1 for name in ("session_id", *fields)})
        }
        outcomes, new = [], []
        for doc in owned:
            before = stored.get(doc["session_id"])
            if before is None:
                outcomes.append("new")
                new.append(doc)
                continue
            changed = {k: doc[k] for k in fields if k in doc and before.get(k) != doc[k]}
            dropped = {k: "" for k in fields if k in before and k not in doc}
            if not changed and not dropped:
                outcomes.append("unchanged")
                continue
            outcomes.append("updated")
            if write:
                self.start_writing()
                update = {**({"$set": changed} if changed else {}), **({"$unset": dropped} if dropped else {})}
                self.classifications.update_one({"tenant": self.tenant, "session_id": doc["session_id"]}, update)
        if write and new:
            self.start_writing()
            self._mark_if_creating()
            self.classifications.insert_many(new)
        return outcomes

    def insert_review(self, doc: dict[str, Any]) -> bool:
        """Insert one review, numbered with the tenant's next ``seq`` (any ``seq`` it has is replaced);
        ``False`` if the same (session, reviewed_at) is already stored."""
        from pymongo.errors import DuplicateKeyError

        self.start_writing()
        doc = self._owned(doc)
        if self.embedded:
            # litemongo inserts first and deletes its copy on a conflict, which a reader could see;
            # under the writer lock, looking first is race-free and never stores the copy at all.
            key = {name: {"$eq": doc.get(name)} for name in UNIQUE_INDEXES[REVIEWS][1]}
            if self.reviews.find_one(key, {"_id": 1}) is not None:
                return False
        doc[SEQ] = self._reserve_seqs(1)  # on MongoDB a duplicate leaves a gap in the numbers: harmless
        try:
            self.reviews.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    def delete_tenant_documents(self) -> dict[str, int]:
        """Delete every classification and review of this tenant; returns how many of each.

        The review counter stays: a number is never given twice, so a cursor in ``decisions.jsonl``
        never covers a review received after the deletion."""
        if self.separate:
            raise ValueError(
                f"tenant {self.tenant!r} keeps its classifications in {self.classifications.name!r}, a collection LEGOLAS did "
                f"not create (annotations 'separate'): LEGOLAS never deletes them"
            )
        self.start_writing()
        deleted = {
            CLASSIFICATIONS: self.classifications.delete_many({"tenant": self.tenant}).deleted_count,
            REVIEWS: self.reviews.delete_many({"tenant": self.tenant}).deleted_count,
        }
        self.annotations.delete_many({"tenant": self.tenant})  # left from an earlier separate mode: stale
        return deleted


def _numbering_key(doc: dict[str, Any]) -> tuple:
    """Reviews stored without a ``seq`` are numbered datetime-dated first, by ``(reviewed_at, str(_id))``, then the rest by ``str(_id)``."""
    reviewed_at = doc.get("reviewed_at")
    if isinstance(reviewed_at, datetime):
        return (0, reviewed_at, str(doc["_id"]))
    return (1, datetime.min, str(doc["_id"]))


def _number_reviews_as_reader(store: TenantStore, store_dir: Path) -> None:
    """A reader of a store an older release wrote numbers its reviews once, if no writer holds the
    store: readers never wait for the writer lock, and a writer numbers them when it opens."""
    if not store._unsequenced():
        return
    try:
        with StoreWriterLock(store_dir, wait_s=0):
            store.number_reviews()
    except StoreBusyError:
        pass


def list_tenants(database) -> list[str]:
    tenants = set(database[CLASSIFICATIONS].distinct("tenant")) | set(database[REVIEWS].distinct("tenant"))
    return sorted(t for t in tenants if isinstance(t, str))


def tenant_layout(database, tenant: str, *, embedded: bool) -> tuple[str, str]:
    """The tenant's classification collection and annotation mode, from its settings in the catalogue.

    The embedded store is always LEGOLAS's own; on MongoDB a collection is LEGOLAS's when it carries
    LEGOLAS's marker (``annotations`` module docstring).

    Raises:
        ValueError: if the stored ``collection`` or ``annotations`` setting is invalid (naming it).
    """
    entry = database[TENANT_CATALOGUE].find_one({"name": tenant, "removed": {"$ne": True}}, {"settings": 1}) or {}
    stored = entry.get("settings") if isinstance(entry.get("settings"), dict) else {}
    collection = annotation_store.validate_collection(stored.get("collection") or CLASSIFICATIONS)
    created = embedded or database[COLLECTION_MARKERS].find_one({"_id": collection}, {"_id": 1}) is not None
    return collection, annotation_store.annotation_mode(stored.get("annotations"), created)[0]


@contextlib.contextmanager
def holding_writer_lock(store: TenantStore):
    """Hold the embedded store's writer lock for a block, then give it back, unless the caller
    already held it (then it stays held): long jobs write batch by batch so imports can interleave."""
    took = not store.writing
    store.start_writing()
    try:
        yield store
    finally:
        if took:
            store.finish_writing()


@contextlib.contextmanager
def open_tenant_store(
    uri: str | None,
    data_dir: str | Path,
    database: str,
    tenant: str,
    timeout_s: float = 5.0,
    *,
    writer: bool = False,
    lock_wait_s: float = DEFAULT_WAIT_S,
    verify: bool = True,
):
    """Connect, ensure the indexes, yield the tenant's ``TenantStore``, and always close the client.

    On MongoDB the indexes are created, and reviews written without a ``seq`` numbered, on every
    open, as the server enforces them. On the embedded store one writer at a time holds
    ``<data_dir>/store/writer.lock`` from its first write (or from the open, with ``writer=True``)
    until the store is closed; readers never wait for it and never write, except once after an
    upgrade: the first open numbers the reviews an older release stored, if no writer holds the lock.

    Args:
        uri: MongoDB URI; ``None`` or empty for the embedded store under ``data_dir``.
        data_dir: the directory that holds the embedded store.
        database: database name (see ``validate_database``).
        tenant: the tenant every query is scoped to.
        timeout_s: MongoDB server selection timeout.
        writer: take the writer lock at once (commands that write), so a second writer waits here,
            with a message naming the holder, before it reads anything.
        lock_wait_s: how long a writer waits for another one before ``StoreBusyError``.
        verify: check the tenant's documents against the unique indexes (embedded store); only
            ``repair-store`` opens a store without it.

    Raises:
        ValueError: if ``database`` is not a valid name.
        StoreUnavailableError: if the store cannot be reached or opened.
        StoreBusyError: if another writer holds the embedded store for longer than ``lock_wait_s``.
        StoreIntegrityError: if the tenant has documents its unique indexes forbid (names one).
    """
    validate_database(database)
    client = connect(uri, data_dir, timeout_s)
    store = None
    try:
        lock = None if uri else StoreWriterLock(embedded_store_dir(data_dir), lock_wait_s)
        collection, annotations = tenant_layout(client[database], tenant, embedded=lock is not None)
        store = TenantStore(client[database], tenant, lock, collection=collection, annotations=annotations)
        if lock is None:
            store.ensure_indexes()
            store.number_reviews()
        elif writer:
            store.start_writing()
        if lock is not None and verify:
            store.check_unique(f"the embedded store {embedded_store_dir(data_dir)} (database {database!r})")
            if store.writing:  # numbered once the documents are known to be unique (a repair opens without verify)
                store.number_reviews()
            else:
                _number_reviews_as_reader(store, embedded_store_dir(data_dir))
        yield store
    finally:
        try:
            client.close()
        finally:
            if store is not None:
                store.finish_writing()
