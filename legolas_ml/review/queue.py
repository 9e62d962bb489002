"""The human review queue as a file a reviewer fills in and gives back to ``legolas import-reviews``.

Each record is a review waiting for its ``label``: ``session_id``, ``label`` (empty),
``reviewed_at`` (empty: the import stamps it), ``reviewer`` and ``notes`` (optional) are the
import's own fields; ``conversation``, ``llm_label``, ``llm_confidence``, ``ensemble_top3``,
``review_reason`` and ``review_priority`` are context for the reviewer, which the import ignores.
The conversation is deliberately not called ``text``: a review's ``text`` replaces the stored one
in training, and a spreadsheet may truncate or alter a cell. In CSV, context cells that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``) are prefixed with ``'``.
Records come in priority order: the audit's ``review_priority`` (the labels most likely wrong
first), then documents flagged without a priority (by the LLM pipeline or a person). The audit's
random samples (``review_reason: ["random_sample"]``) are spread evenly through that order, so that
every prefix of the file holds about the queue's share of them: a reviewer who stops after the first
N records has still reviewed a random part, which tells the service's accuracy apart from the hard
cases'. ``ensemble_top3`` shows the probabilities the audit flagged on (``review_probabilities``:
calibrated, out-of-fold where honest), or the ensemble's scores for a flag the audit did not raise.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

import hashlib

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.core.choices import RANDOM_SAMPLE

FORMATS = ("jsonl", "csv")
#: The import's fields first, then the reviewer's context.
COLUMNS = (
    "session_id", "label", "reviewed_at", "reviewer", "notes",
    "conversation", "llm_label", "llm_confidence", "ensemble_top3", "review_reason", "review_priority",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FIELDS = ("text", "llm_prediction", "llm_confidence", "ml_probabilities", "review_probabilities", "review_reason", "review_priority")


def _top3(probabilities: Any) -> list[dict[str, Any]]:
    if not isinstance(probabilities, dict):
        return []
    ranked = sorted(((float(p), str(c)) for c, p in probabilities.items() if isinstance(p, (int, float))), reverse=True)
    return [{"class": c, "probability": round(p, 4)} for p, c in ranked[:3]]


def queue_record(doc: dict[str, Any]) -> dict[str, Any]:
    """One queued document as an import record with an empty label."""
    reasons = doc.get("review_reason")
    return {
        "session_id": normalise_session_id(doc.get("session_id")),
        "label": None,
        "reviewed_at": None,
        "reviewer": None,
        "notes": None,
        "conversation": doc.get("text") if isinstance(doc.get("text"), str) else None,
        "llm_label": doc.get("llm_prediction"),
        "llm_confidence": doc.get("llm_confidence"),
        "ensemble_top3": _top3(doc.get("review_probabilities") if isinstance(doc.get("review_probabilities"), dict) else doc.get("ml_probabilities")),
        "review_reason": list(reasons) if isinstance(reasons, list) else ["flagged_before_audit"],
        "review_priority": doc.get("review_priority"),
    }


def review_queue(store, limit: int | None = None) -> list[dict[str, Any]]:
    """The tenant's documents flagged for review that no human decided yet, highest priority first,
    with the random samples spread through them (``interleave``) before ``limit`` cuts the list.

    Raises:
        ValueError: if ``limit`` is given and < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    reviewed = store.reviewed_session_ids()
    records = [
        queue_record(doc)
        for doc in store.flagged_for_review(_FIELDS)
        if normalise_session_id(doc.get("session_id")) not in reviewed and normalise_session_id(doc.get("session_id"))
    ]

    def order(record):
        priority = record["review_priority"]
        known = isinstance(priority, (int, float)) and not isinstance(priority, bool)
        return (0 if known else 1, -priority if known else 0.0, record["session_id"])

    flagged = sorted((r for r in records if r["review_reason"] != [RANDOM_SAMPLE]), key=order)
    # Content-free order among the random samples: a hash of the id, not its priority or its age.
    sampled = sorted((r for r in records if r["review_reason"] == [RANDOM_SAMPLE]),
                     key=lambda r: hashlib.sha256(r["session_id"].encode()).hexdigest())
    records = interleave(flagged, sampled)
    return records[:limit] if limit else records


def interleave(flagged: list, sampled: list) -> list:
    """``flagged`` in order with ``sampled`` spread evenly: position ``i`` (from 1) holds a sample when
    ``floor(i * S / N)`` steps up (``S`` samples, ``N`` records), so every prefix of length ``k``
    holds ``floor(k * S / N)`` of them: with 10 of 100, records 10, 20, ..., 100."""
    total, n_sampled = len(flagged) + len(sampled), len(sampled)
    out, f, r = [], iter(flagged), iter(sampled)
    for i in range(1, total + 1):
        out.append(next(r) if (i * n_sampled) // total > ((i - 1) * n_sampled) // total else next(f))
    return out


def queue_size(store) -> int:
    """How many documents wait in the queue (ids only: no text is read)."""
    reviewed = store.reviewed_session_ids()
    return sum(
        1 for doc in store.flagged_for_review(())
        if (sid := normalise_session_id(doc.get("session_id"))) is not None and sid not in reviewed
    )


def write_queue(records: Iterable[dict[str, Any]], handle: TextIO, fmt: str = "jsonl") -> int:
    """Write ``records`` as JSON lines or CSV; returns how many were written.

    Raises:
        ValueError: naming the allowed formats if ``fmt`` is not one of them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    n = 0
    if fmt == "jsonl":
        for record in records:
            handle.write(json.dumps({k: record[k] for k in COLUMNS}, ensure_ascii=False) + "\n")
            n += 1
        return n
    writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {k: ("" if record[k] is None else record[k]) for k in COLUMNS}
        row["ensemble_top3"] = "; ".join(f"{t['class']}={t['probability']:.4f}" for t in record["ensemble_top3"])
        row["review_reason"] = "; ".join(record["review_reason"])
        for key in ("conversation", "llm_label"):
            if isinstance(row[key], str) and row[key].startswith(_FORMULA_START):
                row[key] = "'" + row[key]  # shown as text by spreadsheets, never evaluated
        writer.writerow(row)
        n += 1
    return n
