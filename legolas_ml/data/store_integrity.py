"""Find and repair documents that break a unique index of the store, one tenant at a time.

Before writers were serialised, two embedded-store imports of one file could both keep a review, and
from then on every open failed. ``find_duplicates`` names such copies; ``remove_duplicates`` keeps
the first copy of each key (the one the unique index would have kept) and deletes the others, after
writing them to a JSON-lines backup file, so a repair never loses a document's content.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_preview = reprlib.Repr()
_preview.maxstring, _preview.maxother, _preview.maxlevel = 60, 60, 3


class StoreIntegrityError(RuntimeError):
    """The store holds documents that its unique index forbids; the message names one of them."""


@dataclass
class Duplicates:
    """Copies of one key of a unique index: ``ids[0]`` is kept by a repair, the others are extra."""

    collection: str
    index: str
    key: dict[str, Any]
    ids: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        key = ", ".join(f"{name}={_safe_repr(value)}" for name, value in self.key.items())
        shown = ", ".join(_safe_repr(i) for i in self.ids[:4])
        return f"{self.collection} ({key}) is stored {len(self.ids)} times (_id {shown})"


def _safe_repr(value: Any) -> str:
    try:
        return _preview.repr(value)
    except (ValueError, RecursionError):  # e.g. an int past str()'s digit limit
        return f"<{type(value).__name__}>"


def _hashable(value: Any) -> Any:
    """A dictionary key for an index value; unhashable values (lists, dicts) compare by their repr."""
    try:
        hash(value)
        return value
    except TypeError:
        return ("<unhashable>", _safe_repr(value))


def find_duplicates(documents: Iterable[dict[str, Any]], collection: str, index: str, keys: Sequence[str]) -> list[Duplicates]:
    """Every key of ``index`` that more than one of ``documents`` share, in the documents' order.

    Args:
        documents: one tenant's documents of ``collection`` (at least ``_id`` and the ``keys``).
        collection: the collection's name (for the report).
        index: the unique index's name (for the report).
        keys: the index's fields; a missing field counts as ``None``, as the index treats it.
    """
    seen: dict[tuple, Duplicates] = {}
    for doc in documents:
        values = {name: doc.get(name) for name in keys}
        entry = seen.setdefault(tuple(_hashable(v) for v in values.values()), Duplicates(collection, index, values))
        entry.ids.append(doc["_id"])
    return [entry for entry in seen.values() if len(entry.ids) > 1]


def integrity_error(duplicates: list[Duplicates], tenant: str, where: str) -> StoreIntegrityError:
    """The error an open raises when ``duplicates`` is not empty: names the first copy and the fix."""
    extra = sum(len(d.ids) - 1 for d in duplicates)
    return StoreIntegrityError(
        f"{where} breaks the unique index {duplicates[0].index}: {duplicates[0].describe()}; "
        f"{extra} extra copies over {len(duplicates)} keys for tenant {tenant!r}. Run "
        f"`legolas repair-store --tenant {tenant}` to keep one copy of each (the removed copies are "
        f"saved to a backup file first)"
    )


def remove_duplicates(store, unique_indexes: dict[str, tuple[str, Sequence[str]]], backup_dir: str | Path) -> dict[str, Any]:
    """Keep the first copy of every duplicated key of the tenant, back up and delete the others.

    Args:
        store: the tenant's ``TenantStore``, opened with ``verify=False`` (its writer lock is taken here).
        unique_indexes: ``{collection name: (index name, fields)}``.
        backup_dir: where the removed copies are written, one JSON-lines file per repair.

    Returns:
        ``{"removed": {collection: count}, "backup": path or None}``.
    """
    from bson import json_util

    store.start_writing(create_indexes=False)  # a missing unique index cannot be created over the duplicates
    extras: list[tuple[str, dict[str, Any]]] = []
    for dup in store.duplicates():
        query = {"tenant": store.tenant, "_id": {"$in": dup.ids[1:]}}
        extras += [(dup.collection, doc) for doc in store.db[dup.collection].find(query)]
    removed = {name: 0 for name in unique_indexes}
    backup: Path | None = None
    if extras:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        backup = Path(backup_dir) / f"removed-duplicates-{store.tenant}-{stamp}.jsonl"
        backup.parent.mkdir(parents=True, exist_ok=True)
        # The backup is on disk before the first delete: a crash in between leaves a copy, never a loss.
        with open(backup, "x", encoding="utf-8") as handle:
            for name, doc in extras:
                handle.write(json_util.dumps({"collection": name, "document": doc}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for name, doc in extras:
            removed[name] += store.db[name].delete_one({"_id": doc["_id"], "tenant": store.tenant}).deleted_count
    store.create_indexes()
    return {"removed": removed, "backup": str(backup) if backup else None}
