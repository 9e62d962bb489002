"""Where LEGOLAS writes its own per-document fields: into the classification documents, or beside them.

LEGOLAS writes two kinds of fields per conversation: the scoring's (``ml_*``) and the label audit's
(``needs_review`` when it flags, ``review_*``). In a store LEGOLAS created (the embedded store,
``legolas demo-data``, an import into an empty collection) they go into the classification
documents themselves (``"inline"``). In a collection somebody else owns they go to
``legolas_annotations`` instead (``"separate"``), one document per (tenant, session id), and every
read of a classification joins it back: the annotation's fields win over the document's, so the
quality gate, the scoring and the audit see one merged document whichever way it was stored, and
the user's documents are never written.

"Created by LEGOLAS" is recorded, not guessed: when LEGOLAS writes the first documents into an
empty classification collection it writes a marker ``{"_id": <collection>, "created_by":
"legolas"}`` into ``legolas_collections``. A tenant setting ``annotations`` overrides the decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

ANNOTATIONS = "legolas_annotations"
#: One marker per classification collection that LEGOLAS created: ``{"_id": name, "created_by": "legolas", "created_at": ...}``.
COLLECTION_MARKERS = "legolas_collections"
MODES = ("inline", "separate")
#: Collections LEGOLAS keeps for itself: a tenant's classification collection cannot be one of them.
RESERVED_COLLECTIONS = ("human_reviews", "review_sequences", "tenants", ANNOTATIONS, COLLECTION_MARKERS)
_KEY_FIELDS = ("_id", "tenant", "session_id")


def validate_collection(name: Any) -> str:
    """A tenant's classification collection name (tenant setting ``collection``).

    Raises:
        ValueError: naming the setting, what is allowed and the name received.
    """
    if (
        not isinstance(name, str) or not name or len(name) > 120 or "$" in name or "\x00" in name
        or name.startswith(("system.", ".")) or name.endswith(".") or name in RESERVED_COLLECTIONS
    ):
        raise ValueError(
            f"tenant setting collection must be a MongoDB collection name (1-120 characters, no '$', not starting "
            f"with 'system.', none of {list(RESERVED_COLLECTIONS)}), got {name!r}"
        )
    return name


def annotation_mode(setting: str | None, created_by_legolas: bool) -> tuple[str, str]:
    """Where LEGOLAS's own fields go for one tenant, and why.

    Args:
        setting: the tenant setting ``annotations`` (``"inline"``, ``"separate"``) or ``None``.
        created_by_legolas: the embedded store, or a collection with LEGOLAS's marker.

    Returns:
        ``(mode, reason)`` with ``mode`` one of ``MODES``.

    Raises:
        ValueError: naming the setting, the allowed values and what was received.

    Example:
        >>> annotation_mode(None, created_by_legolas=False)[0]
        'separate'
    """
    if setting is not None:
        if setting not in MODES:
            raise ValueError(f"tenant setting annotations must be one of {list(MODES)}, got {setting!r}")
        return setting, f"tenant setting annotations={setting!r}"
    if created_by_legolas:
        return "inline", "LEGOLAS created this classification collection: its fields go into the documents"
    return "separate", f"LEGOLAS did not create this classification collection: its fields go to {ANNOTATIONS!r}"


def merge(doc: dict[str, Any], annotation: dict[str, Any] | None) -> dict[str, Any]:
    """The document as LEGOLAS reads it: the annotation's fields over the document's (keys kept)."""
    if not annotation:
        return doc
    return {**doc, **{k: v for k, v in annotation.items() if k not in _KEY_FIELDS}}


def joined(
    docs: Iterable[dict[str, Any]],
    annotations_of,
    query: dict[str, Any],
    fields: Iterable[str] | None = None,
    chunk: int = 1000,
) -> Iterator[dict[str, Any]]:
    """The merged documents that match ``query``, read ``chunk`` at a time.

    The query is evaluated on the merged documents by litemongo's matcher, so a query means the
    same on MongoDB and on the embedded store, whichever collection a field it names lives in.

    Args:
        docs: the tenant's classification documents (whole, so that the query sees every field).
        annotations_of: session ids -> their annotation documents.
        query: the filter, as ``TenantStore`` writes it for one collection.
        fields: keep only these (and ``_id``, ``session_id``); ``None`` keeps every field.
    """
    from litemongo._vendor.mongomock.filtering import filter_applies

    keep = None if fields is None else {"_id", "session_id", *fields}
    batch: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        notes = {a.get("session_id"): a for a in annotations_of([d.get("session_id") for d in batch])}
        for doc in batch:
            merged = merge(doc, notes.get(doc.get("session_id")))
            if filter_applies(query, merged):
                yield merged if keep is None else {k: v for k, v in merged.items() if k in keep}

    for doc in docs:
        batch.append(doc)
        if len(batch) >= chunk:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
