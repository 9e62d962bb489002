"""Incremental scoring: the ensemble in service writes its prediction into every unreviewed document.

A document is (re)scored when it has no prediction of the model in service, or when its text
changed since it was scored (``ml_text_sha256`` is the SHA-256 of the text that was scored). A
new champion therefore re-scores everything; running twice with nothing changed writes nothing.

Fields written per document, in one atomic update each (a store failing mid-run leaves every
document fully scored or untouched, and the next run finishes the job)::

    ml_prediction     the class with the highest mean probability
    ml_confidence     that probability
    ml_probabilities  {class: probability} for every class of the model
    ml_model_version  the champion version that scored it
    ml_scored_at      when (UTC)
    ml_text_sha256    the SHA-256 of the text that was scored

Never written: documents a human decided (a review exists, or the classification method names a
human), the LLM's fields (``llm_prediction``, ``llm_confidence``), ``needs_review``. A document
reviewed while the run goes is re-checked right before its batch is written, and a document whose
text changed between read and write is left for the next run (the update matches on the text).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.data.store import FieldChanges, holding_writer_lock

SCORE_FIELDS = ("ml_prediction", "ml_confidence", "ml_probabilities", "ml_model_version", "ml_scored_at", "ml_text_sha256")
#: Why a document is scored in this run.
SCORE_REASONS = ("new", "model_changed", "text_changed")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ScoringReport:
    """What a scoring run found and did; ``coverage`` is the share of scorable unreviewed documents
    that carry a prediction of ``model_version`` after the run."""

    model_version: str
    documents: int = 0  # classification documents of the tenant
    reviewed: int = 0  # a human decided: never scored
    unscorable: int = 0  # no text, or a text that is not a non-empty string
    up_to_date: int = 0  # already scored by this model on this text
    to_score: Counter = field(default_factory=Counter)  # per reason in SCORE_REASONS
    scored: int = 0  # written in this run
    reviewed_meanwhile: int = 0  # a review arrived while the batch was scored: never written
    edited_meanwhile: int = 0  # the text changed (or vanished) between read and write: left for the next run
    seconds: float = 0.0

    @property
    def scorable(self) -> int:
        return self.documents - self.reviewed - self.unscorable

    @property
    def coverage(self) -> float:
        """Share of the documents still unreviewed that carry a prediction of ``model_version``."""
        still_unreviewed = self.scorable - self.reviewed_meanwhile
        return (self.up_to_date + self.scored) / still_unreviewed if still_unreviewed else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "documents": self.documents,
            "reviewed": self.reviewed,
            "unscorable": self.unscorable,
            "scorable": self.scorable,
            "up_to_date": self.up_to_date,
            "to_score": {reason: self.to_score.get(reason, 0) for reason in SCORE_REASONS},
            "scored": self.scored,
            "reviewed_meanwhile": self.reviewed_meanwhile,
            "edited_meanwhile": self.edited_meanwhile,
            "coverage": self.coverage,
            "seconds": self.seconds,
            "documents_per_s": self.scored / self.seconds if self.seconds > 0 else 0.0,
        }


def scoring_reason(doc: dict[str, Any], model_version: str) -> str | None:
    """Why ``doc`` must be scored by ``model_version`` (one of SCORE_REASONS), or ``None`` if up to date."""
    if doc.get("ml_model_version") is None:
        return "new"
    if doc.get("ml_model_version") != model_version:
        return "model_changed"
    if doc.get("ml_text_sha256") != text_sha256(doc["text"]):
        return "text_changed"
    return None


def plan_scoring(store, model_version: str) -> tuple[list[Any], ScoringReport]:
    """The stored session ids to score (texts are read again batch by batch), and the counts."""
    report = ScoringReport(model_version)
    reviewed = store.reviewed_session_ids()
    pending: list[Any] = []
    for doc in store.classification_fields(("text", "ml_model_version", "ml_text_sha256")):
        report.documents += 1
        if normalise_session_id(doc.get("session_id")) in reviewed:
            report.reviewed += 1
        elif not isinstance(doc.get("text"), str) or not doc["text"].strip():
            report.unscorable += 1
        elif (reason := scoring_reason(doc, model_version)) is None:
            report.up_to_date += 1
        else:
            report.to_score[reason] += 1
            pending.append(doc["session_id"])
    return pending, report


def prediction_values(probs: np.ndarray, labels: list[str], model_version: str, text: str) -> dict[str, Any]:
    """One text's prediction from its probability row ``(n_classes,)``: every field of SCORE_FIELDS but
    ``ml_scored_at`` (the served model, ``scoring/pyfunc.py``, answers these same values)."""
    top = int(probs.argmax())
    return {
        "ml_prediction": labels[top],
        "ml_confidence": round(float(probs[top]), 6),
        "ml_probabilities": {label: round(float(p), 6) for label, p in zip(labels, probs)},
        "ml_model_version": model_version,
        "ml_text_sha256": text_sha256(text),
    }


def prediction_fields(probs: np.ndarray, labels: list[str], model_version: str, text: str, now: datetime) -> dict[str, Any]:
    """The fields one document's score writes (``SCORE_FIELDS``: name -> value), from its probability row ``(n_classes,)``."""
    return {**prediction_values(probs, labels, model_version, text), "ml_scored_at": now}


def score_documents(
    store,
    predict_proba: Callable[[list[str]], np.ndarray],
    labels: list[str],
    model_version: str,
    *,
    batch_size: int = 512,
    log: Callable[[str], None] = print,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc).replace(tzinfo=None),
) -> ScoringReport:
    """Score every unreviewed document that lacks a current prediction, ``batch_size`` at a time.

    Memory holds the ids to score and one batch of texts, never the whole collection.

    Args:
        store: the tenant's ``TenantStore``.
        predict_proba: texts -> probabilities ``(n, len(labels))`` (the ensemble's ``predict_proba``).
        labels: the class of each probability column.
        model_version: the champion version, written as ``ml_model_version``.
        batch_size: documents read, scored and written together (progress is logged per batch).
        log: receives one progress line per batch, with throughput and the remaining time.

    Raises:
        ValueError: if ``batch_size`` < 1.
        Any store error (e.g. ``pymongo.errors.PyMongoError``): documents written before it stay
            complete; rerun to finish.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    pending, report = plan_scoring(store, model_version)
    total = len(pending)
    log(
        f"model {model_version}: {report.documents} documents, {report.reviewed} reviewed by a human, "
        f"{report.up_to_date} up to date, {total} to score {dict(report.to_score)}"
    )
    for start in range(0, total, batch_size):
        chunk = pending[start : start + batch_size]
        docs = [d for d in store.classification_fields(("text",), chunk) if isinstance(d.get("text"), str) and d["text"].strip()]
        probs = predict_proba([d["text"] for d in docs]) if docs else np.zeros((0, len(labels)))  # (batch, n_classes)
        # The writer lock is held per batch only (an import never waits for a whole scoring run),
        # and reviews are re-checked under it: a review imported while the batch was scored wins.
        with holding_writer_lock(store):
            reviewed_now = store.reviewed_session_ids(among=[d["session_id"] for d in docs])
            now = clock()
            for doc, row in zip(docs, probs):
                if normalise_session_id(doc["session_id"]) in reviewed_now:
                    report.reviewed_meanwhile += 1
                    continue
                changes = FieldChanges(set=prediction_fields(row, labels, model_version, doc["text"], now))
                if store.update_unreviewed(doc["session_id"], changes, text=doc["text"]):
                    report.scored += 1
                else:  # the text changed since it was read (or a human classified it meanwhile)
                    report.edited_meanwhile += 1
        report.edited_meanwhile += len(chunk) - len(docs)
        done = min(start + batch_size, total)
        elapsed = time.perf_counter() - started
        rate = report.scored / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        log(f"scored {done}/{total} documents ({rate:.1f}/s, about {eta:.0f} s left)")
    report.seconds = time.perf_counter() - started
    return report
