"""The label audit over a tenant's store: honest probabilities, ``audit_labels``, and the flags written back.

Audited: every document with an LLM label and a text that no human decided and that the model in
service has scored (``ml_model_version``; ``ensemble_predictions`` runs first). Flags written per
document, in one atomic update each, and only where they change (a second run writes nothing)::

    needs_review          true while the audit (or anyone else) wants a person to look
    review_reason         the flagging reasons of ``audit.REASONS`` that hold, or ["random_sample"]
    review_signals        the other reasons that hold (signals that do not flag: context, never the cause)
    review_priority       1 - cleanlab label quality: the queue's order
    review_label_quality  cleanlab's self-confidence score of the LLM label
    review_probabilities  {class: probability} the rules saw (calibrated, out-of-fold where honest):
                          what the export shows, so a reviewer sees the numbers that raised the flag
    review_flagged_by     "label_audit" when the audit raised the flag, "external" when it was set before
    review_model_version  the champion version the audit used
    review_flagged_at     when the flag (or its reasons) last changed
    review_sample         "random" on a random sample of the queue (``audit.plan_queue``); unlike the
                          fields above it stays after the review, so that the lifecycle can tell the
                          reviewed sessions drawn at random (``TenantStore.random_sample_ids``) from the
                          hard cases; removed only if the audit takes the document out of the queue
                          before any review (a smaller budget), as it was then never reviewed as one

The queue budget (``review.queue_size``, ``review.random_share``) decides which of the rules'
flags are written (``audit.plan_queue``). A document that no longer qualifies is un-flagged only if
the audit flagged it: a flag somebody else set stays (its stale reasons are removed).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.data.quality_gate import normalise_label
from legolas_ml.data.splits import SplitPlan
from legolas_ml.data.store import FieldChanges, holding_writer_lock
from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
from legolas_ml.scoring.predictions import text_sha256
from legolas_ml.review.calibration import TemperatureFit, apply_temperature, fit_calibration
from legolas_ml.review.audit import AuditResult, AuditSettings, audit_labels, plan_queue, summary_by
from legolas_ml.review.novelty import NoveltyModel, embed_texts
from legolas_ml.review.out_of_fold import out_of_fold_probabilities

AUDITOR = "label_audit"
FLAG_FIELDS = (
    "needs_review", "review_reason", "review_priority", "review_label_quality", "review_flagged_by",
    "review_model_version", "review_flagged_at", "review_signals", "review_probabilities", "review_doubted",
)
#: On a document the rules flag but the queue budget leaves out: its LLM label is not trusted for
#: training either (``store.trusted_llm_query``), though no reviewer is asked about it yet.
DOUBT_FIELD = "review_doubted"
#: Kept after the review (the module docstring): not a flag field.
SAMPLE_FIELD = "review_sample"
_READ_FIELDS = (
    "text", "llm_prediction", "llm_confidence", "ml_probabilities", "ml_model_version", "ml_text_sha256", *FLAG_FIELDS, SAMPLE_FIELD,
)
#: Training examples embedded for the novelty threshold (a deterministic sample beyond this).
MAX_NOVELTY_REFERENCES = 5000


@dataclass
class AuditReport:
    """What the audit read, decided and wrote."""

    model_version: str
    documents: int = 0
    reviewed: int = 0  # a human decided: never audited, never flagged (an audit flag left from before is cleared)
    without_llm_label: int = 0
    without_text: int = 0
    unscored: int = 0  # no prediction of the model in service for the current text yet
    audited: int = 0
    out_of_fold: int = 0  # audited with the probabilities of the fold that did not train on them
    flagged: int = 0  # audited documents in the queue after the budget: the rules' flags kept, external ones, random samples
    flagged_by_rules: int = 0  # before the budget
    cut_by_budget: int = 0  # flagged by the rules, left out by review.queue_size
    random_sampled: int = 0  # random samples in the queue (review.random_share)
    external_flags: int = 0  # unreviewed flags somebody else set: they take places in the budget
    queue_size: int = 0  # the budget applied
    newly_flagged: int = 0
    unflagged: int = 0
    cleared_after_review: int = 0  # audit flags removed because a human has reviewed the session since
    updated: int = 0  # documents written (flag raised, changed or cleared)
    skipped_meanwhile: int = 0
    per_reason: dict[str, int] = field(default_factory=dict)
    per_signal: dict[str, int] = field(default_factory=dict)  # audited documents each enabled reason holds on, flagging or not
    per_class: dict[str, int] = field(default_factory=dict)  # flagged, by LLM label
    noise_rate: dict[str, float] = field(default_factory=dict)
    novelty_threshold: float | None = None
    temperature: float = 1.0  # applied to out-of-fold rows before the rules (calibration.py)
    calibration_rows: int = 0
    temperature_at_bound: str | None = None  # "lower"/"upper": the fit wanted a temperature beyond its search interval
    ece_before: float | None = None  # expected calibration error of those rows, before and after the temperature
    ece_after: float | None = None
    ensemble_temperature: float = 1.0  # applied to the ensemble's rows, fitted on the test split
    ensemble_calibration_rows: int = 0
    ensemble_temperature_at_bound: str | None = None
    ensemble_ece_before: float | None = None
    ensemble_ece_after: float | None = None
    novelty_references: int = 0
    top: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.audited if self.audited else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items()}
        values["flagged_share"] = self.flagged_share
        return values

    def record_calibration(self, fit: TemperatureFit, *, ensemble: bool) -> None:
        """Keep ``fit`` as the out-of-fold rows' calibration, or the ensemble's rows' one."""
        prefix = "ensemble_" if ensemble else ""
        setattr(self, f"{prefix}temperature", fit.temperature)
        setattr(self, f"{prefix}calibration_rows", fit.rows)
        setattr(self, f"{prefix}temperature_at_bound", fit.at_bound)
        setattr(self, f"{prefix}ece_before", fit.ece_before)
        setattr(self, f"{prefix}ece_after", fit.ece_after)


def _probability_row(doc: dict[str, Any], classes: list[str]) -> np.ndarray | None:
    stored = doc.get("ml_probabilities")
    if not isinstance(stored, dict):
        return None
    try:
        row = np.array([float(stored.get(c, 0.0)) for c in classes])
    except (TypeError, ValueError):
        return None
    total = row.sum()
    return row / total if total > 0 and np.isfinite(total) else None


def flag_changes(
    doc: dict[str, Any],
    reasons: list[str],
    priority: float,
    quality: float,
    model_version: str,
    now: datetime,
    *,
    signals: list[str] = (),
    probabilities: dict[str, float] | None = None,
    sample: bool = False,
    doubted: bool = False,
) -> FieldChanges | None:
    """The field changes that make ``doc``'s flags say ``reasons`` (empty: not flagged), or ``None`` if they already do.

    Args:
        signals: every reason that holds; those not in ``reasons`` are recorded as ``review_signals``.
        probabilities: ``{class: probability}`` the rules saw, recorded as ``review_probabilities``.
        sample: the document is in the queue as a random sample (``review_sample: "random"``).
        doubted: the rules flag it but the queue budget leaves it out (``review_doubted``).
    """
    by = doc.get("review_flagged_by")
    if by is None and doc.get("needs_review") is True:
        by = "external"  # flagged before (by the LLM pipeline or a person): the audit never clears it
    # An unreviewed sample leaving the queue was never reviewed as one: it stops being a sample.
    unsample = {SAMPLE_FIELD} if doc.get(SAMPLE_FIELD) is not None and not sample else set()
    if reasons:
        wanted = {
            "needs_review": True,
            "review_reason": reasons,
            "review_signals": [r for r in signals if r not in reasons],
            "review_priority": round(float(priority), 6),
            "review_label_quality": None if np.isnan(quality) else round(float(quality), 6),
            "review_probabilities": probabilities,
            "review_flagged_by": by or AUDITOR,
            "review_model_version": model_version,
        }
        if sample:
            wanted[SAMPLE_FIELD] = "random"
        unset = unsample | ({DOUBT_FIELD} if DOUBT_FIELD in doc else set())
        if all(doc.get(k) == v for k, v in wanted.items()) and not unset:
            return None
        return FieldChanges(set={**wanted, "review_flagged_at": now}, unset=frozenset(unset))
    stale = tuple(k for k in FLAG_FIELDS if k not in ("needs_review", "review_flagged_by", DOUBT_FIELD))
    doubt = {DOUBT_FIELD: True} if doubted and doc.get(DOUBT_FIELD) is not True else {}
    undoubt = {DOUBT_FIELD} if not doubted and DOUBT_FIELD in doc else set()
    if by == AUDITOR:
        return FieldChanges(set={"needs_review": False, **doubt}, unset=frozenset({*stale, "review_flagged_by"} | unsample | undoubt))
    if any(k in doc for k in stale) or unsample or doubt or undoubt:
        return FieldChanges(set=doubt, unset=frozenset({k for k in stale if k in doc} | unsample | undoubt))
    return None


@dataclass
class _Documents:
    """The documents one audit read, sorted: those it audits, and the reviewed ones whose flags a review answered."""

    docs: list[dict[str, Any]] = field(default_factory=list)  # audited, each with "sid" (the normalised session id)
    given: list[str | None] = field(default_factory=list)  # their LLM labels, normalised
    rows: list[np.ndarray] = field(default_factory=list)  # their stored probability rows (model in service, current text)
    resolved: list[Any] = field(default_factory=list)  # reviewed sessions the audit had flagged: the review answered the flag
    undoubted: list[Any] = field(default_factory=list)  # reviewed sessions the audit had doubted: the review answered the doubt
    external_elsewhere: int = 0  # external flags on documents this audit cannot score: they still take places


def run_label_audit(
    store, manifest: dict[str, Any], *, plan: SplitPlan | None, training: pd.DataFrame | None, settings: AuditSettings = AuditSettings(),
    device: str = "auto", log: Callable[[str], None] = print, top_n: int = 20, seed: int = 0, write: bool = True,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc).replace(tzinfo=None), warn: Callable[[str], None] | None = None,
) -> tuple[AuditReport, AuditResult | None]:
    """Audit the tenant's LLM labels against the ensemble ``manifest`` and write the flags back.

    Args:
        store: the tenant's ``TenantStore``.
        manifest: the champion's manifest (``version``, ``labels``, ``checkpoints``).
        plan: the split the champion's folds were trained on, for out-of-fold probabilities;
            ``None`` uses the ensemble's probabilities for every document (and no calibration).
        training: the champion's training rows (``session_id``, ``text``, ``label``): with ``plan``,
            their out-of-fold probabilities calibrate the temperature; their texts are the novelty
            references. ``None`` skips both.
        settings: the routing rules and the queue budget.
        device: where the fold models run.
        log: progress lines.
        seed: with the model version, the key of the random sample's order (one champion, one sample).
        write: write the flags back; ``False`` only computes them (benchmarks).
        warn: lines that need attention (a calibration at its bound); default ``log``.
    """
    started = time.perf_counter()
    version, classes = manifest["version"], list(manifest["labels"])
    report = AuditReport(version, queue_size=settings.queue_size)
    read = _read_documents(store, version, classes, report)
    if write:
        _clear_answered(store, read, report)
    log(f"auditing {len(read.docs)} LLM labels with model {version} ({report.reviewed} reviewed, {report.unscored} not scored yet)")
    if not read.docs:
        report.seconds = time.perf_counter() - started
        return report, None
    pred_probs = _honest_probabilities(manifest, read.docs, read.rows, plan, training, device, report, log, warn or log)
    novel = _novelty(manifest, read.docs, training, settings, device, seed, report, log)
    result = _audit_and_plan(read, pred_probs, classes, settings, novel, key=f"{seed}:{version}")
    log(result.queue.reason)
    if write:
        _write_flags(store, read.docs, result, classes, version, report, clock)
    _fill_report(report, read, result, top_n)
    report.seconds = time.perf_counter() - started
    log(f"{report.flagged} of {report.audited} flagged ({report.per_reason}); {report.updated} documents updated")
    return report, result


def _external_flag(doc: dict[str, Any]) -> bool:
    """An unreviewed flag somebody else set: it takes a place in the queue's budget."""
    return doc.get("needs_review") is True and doc.get("review_flagged_by") != AUDITOR


def _unaudited(doc: dict[str, Any], version: str, classes: list[str]) -> tuple[str | None, np.ndarray | None]:
    """``(why, None)``: the ``AuditReport`` count an unreviewed ``doc`` the audit cannot score adds to; else ``(None, row)``."""
    if not isinstance(doc.get("text"), str) or not doc["text"].strip():
        return "without_text", None
    if doc.get("llm_prediction") is None:
        return "without_llm_label", None
    current = doc.get("ml_model_version") == version and doc.get("ml_text_sha256") == text_sha256(doc["text"])
    row = _probability_row(doc, classes) if current else None
    return ("unscored", None) if row is None else (None, row)


def _read_documents(store, version: str, classes: list[str], report: AuditReport) -> _Documents:
    """Read and sort the tenant's documents, counting each kind in ``report``: a human decision is never audited."""
    read = _Documents()
    reviewed = store.reviewed_session_ids()
    for doc in store.classification_fields(_READ_FIELDS):
        report.documents += 1
        sid = normalise_session_id(doc.get("session_id"))
        if sid in reviewed:
            report.reviewed += 1
            if doc.get("review_flagged_by") == AUDITOR:
                read.resolved.append(doc["session_id"])  # the review answered the flag: it leaves the loop's fields
            elif doc.get(DOUBT_FIELD) is True:
                read.undoubted.append(doc["session_id"])  # the review answered the doubt too
            continue
        why, row = _unaudited(doc, version, classes)
        if why is not None:
            setattr(report, why, getattr(report, why) + 1)
            read.external_elsewhere += _external_flag(doc)
            continue
        read.docs.append({**doc, "sid": sid})
        read.given.append(normalise_label(doc["llm_prediction"])[0])
        read.rows.append(row)
    report.audited = len(read.docs)
    return read


def _clear_answered(store, read: _Documents, report: AuditReport) -> None:
    """Clear what the reviews since the last audit answered: its flags, then its doubts."""
    if read.resolved:
        report.cleared_after_review = _clear_resolved(store, read.resolved)
    if read.undoubted:
        with holding_writer_lock(store):
            undoubt = FieldChanges(unset=frozenset({DOUBT_FIELD}))
            report.cleared_after_review += sum(store.update_unreviewed(sid, undoubt) for sid in read.undoubted)


def _honest_probabilities(
    manifest: dict[str, Any], docs: list[dict[str, Any]], rows: list[np.ndarray], plan: SplitPlan | None,
    training: pd.DataFrame | None, device: str, report: AuditReport, log: Callable[[str], None], warn: Callable[[str], None],
) -> np.ndarray:
    """The rows the rules see: out-of-fold where that is honest, the ensemble's elsewhere, each calibrated by its temperature."""
    classes = list(manifest["labels"])
    pred_probs = np.vstack(rows)  # (n, n_classes): the ensemble's, until replaced by out-of-fold rows
    from_fold = np.zeros(len(docs), dtype=bool)
    if plan is not None and training is not None and len(training):
        texts = dict(zip(training["session_id"].astype(str), training["text"]))
        oof = out_of_fold_probabilities(manifest["checkpoints"], plan, texts, classes, device)
        for i, doc in enumerate(docs):
            # Honest only for the text the fold validated: an edited text keeps the ensemble's row.
            if doc["sid"] in oof and texts[doc["sid"]] == doc["text"]:
                pred_probs[i], from_fold[i] = oof[doc["sid"]], True
        report.out_of_fold = int(from_fold.sum())
        log(f"{report.out_of_fold} documents were training sessions: out-of-fold probabilities from the fold that validated each")
        _fit_temperatures(manifest, plan, training, texts, oof, device, report)
        _log_calibration(report, log, warn)
    else:
        log("no split or training data of the model in service: probabilities are not calibrated, no out-of-fold rows")
    pred_probs[from_fold] = apply_temperature(pred_probs[from_fold], report.temperature)
    pred_probs[~from_fold] = apply_temperature(pred_probs[~from_fold], report.ensemble_temperature)
    return pred_probs


def _fit_temperatures(
    manifest: dict[str, Any], plan: SplitPlan, training: pd.DataFrame, texts: dict[str, str], oof: dict, device: str, report: AuditReport,
) -> None:
    """Fit (into ``report``) the out-of-fold rows' temperature on the training labels, and the ensemble's rows' one."""
    classes = list(manifest["labels"])
    label_of = dict(zip(training["session_id"].astype(str), training["label"]))
    report.record_calibration(_calibrate(oof, label_of, classes), ensemble=False)
    # The ensemble's rows are a mean of K models, flatter than one fold's: their own temperature,
    # fitted on the test split (labelled, never trained on by any fold).
    test_texts = {sid: texts[sid] for sid in plan.test_ids if sid in texts}
    if test_texts:
        ensemble = FoldEnsemble(manifest["checkpoints"], device=device, precision=EVAL_PRECISION)
        test_probs = dict(zip(test_texts, ensemble.predict_proba(list(test_texts.values()))))
        report.record_calibration(_calibrate(test_probs, label_of, classes), ensemble=True)


def _log_calibration(report: AuditReport, log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Log both temperatures and their ECEs; warn of a fit at its bound (its thresholds mean less than they say)."""
    log(
        f"calibration: temperature {report.temperature:.3f} for out-of-fold rows ({report.calibration_rows} training "
        f"sessions, ECE {_ece(report.ece_before)} -> {_ece(report.ece_after)}), {report.ensemble_temperature:.3f} for the "
        f"ensemble's ({report.ensemble_calibration_rows} test sessions, ECE {_ece(report.ensemble_ece_before)} -> "
        f"{_ece(report.ensemble_ece_after)})"
    )
    for rows_of, bound, temperature in (
        ("out-of-fold", report.temperature_at_bound, report.temperature),
        ("ensemble", report.ensemble_temperature_at_bound, report.ensemble_temperature),
    ):
        if bound:
            warn(
                f"calibration of the {rows_of} rows hit the {bound} bound of its search interval (temperature "
                f"{temperature:.3f}): the probabilities stay mis-calibrated, the thresholds mean less than they say"
            )


def _novelty(
    manifest: dict[str, Any], docs: list[dict[str, Any]], training: pd.DataFrame | None, settings: AuditSettings,
    device: str, seed: int, report: AuditReport, log: Callable[[str], None],
) -> np.ndarray | None:
    """Which audited texts lie farther from the training texts than their novelty quantile; ``None`` when not measured."""
    if "novelty" not in settings.reasons or training is None or not len(training):
        return None
    references = training["text"].tolist()
    if len(references) > MAX_NOVELTY_REFERENCES:
        references = random.Random(seed).sample(references, MAX_NOVELTY_REFERENCES)
    reference_emb = embed_texts(manifest["checkpoints"][0], references, device)
    model = NoveltyModel.fit(reference_emb, settings.novelty_quantile)
    novel = model.distance(embed_texts(manifest["checkpoints"][0], [d["text"] for d in docs], device)) > model.threshold
    report.novelty_threshold, report.novelty_references = model.threshold, len(references)
    log(f"novelty: cosine distance above {model.threshold:.4f} (quantile {model.quantile} of {len(references)} training examples)")
    return novel


def _audit_and_plan(
    read: _Documents, pred_probs: np.ndarray, classes: list[str], settings: AuditSettings, novel: np.ndarray | None, *, key: str,
) -> AuditResult:
    """The rules' verdict on every audited document, and the queue the budget makes of it (pure)."""
    result = audit_labels(read.given, pred_probs, classes, settings, novel)
    result.session_ids = [d["sid"] for d in read.docs]
    result.probabilities = pred_probs
    result.queue = plan_queue(
        result.session_ids, result.reasons, result.priority,
        external=np.array([_external_flag(d) for d in read.docs], dtype=bool),
        sampled=np.array([d.get(SAMPLE_FIELD) == "random" for d in read.docs], dtype=bool),
        external_elsewhere=read.external_elsewhere, settings=settings, key=key,
    )
    return result


def _fill_report(report: AuditReport, read: _Documents, result: AuditResult, top_n: int) -> None:
    """The queue's counts, per reason, signal and class, and its top ``top_n`` documents, into ``report``."""
    flagged = result.queue.queued
    report.flagged = int(flagged.sum())
    report.flagged_by_rules = result.queue.wanted
    report.cut_by_budget = result.queue.cut
    report.random_sampled = int(result.queue.random.sum())
    report.external_flags = result.queue.external
    report.per_reason = dict(sorted(Counter(r for rs in result.queue.reasons for r in rs).items()))
    report.per_signal = dict(sorted(result.per_signal.items()))
    report.per_class = summary_by([g if g is not None else "(unknown)" for g in read.given], flagged)
    report.noise_rate = result.noise_rate
    report.top = _top_of_queue(read, result, top_n)


def _top_of_queue(read: _Documents, result: AuditResult, top_n: int) -> list[dict[str, Any]]:
    """The ``top_n`` queued documents by priority (ties by session id), as the report shows them."""
    docs, given = read.docs, read.given
    order = sorted(np.flatnonzero(result.queue.queued), key=lambda i: (-result.priority[i], docs[i]["sid"]))[:top_n]
    return [
        {
            "session_id": docs[i]["sid"],
            "llm_label": given[i] or str(docs[i]["llm_prediction"]),
            "ensemble_label": result.predicted[i],
            "ensemble_probability": round(float(result.confidence[i]), 4),
            "priority": round(float(result.priority[i]), 4),
            "reasons": ", ".join(result.queue.reasons[i]),
        }
        for i in order
    ]


def _calibrate(probs_of: dict, label_of: dict, classes: list[str]) -> TemperatureFit:
    """The temperature of ``probs_of`` (session -> row) against the training labels, with its row count and ECEs."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(p, index[label_of[sid]]) for sid, p in probs_of.items() if label_of.get(sid) in index]
    if not pairs:
        return TemperatureFit()
    return fit_calibration(np.vstack([p for p, _ in pairs]), np.array([t for _, t in pairs]))


def _ece(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _clear_resolved(store, session_ids: list) -> int:
    """Remove the audit's flag from sessions a human has reviewed since (the review answered it)."""
    changes = FieldChanges(set={"needs_review": False}, unset=frozenset(FLAG_FIELDS[1:]))
    with holding_writer_lock(store):
        return sum(store.clear_audit_flag(sid, AUDITOR, changes) for sid in session_ids)


def _write_flags(store, docs, result: AuditResult, classes: list[str], version: str, report: AuditReport, clock, batch: int = 500) -> None:
    """Write each document's flags, batch by batch, re-checking for reviews right before each batch."""
    for start in range(0, len(docs), batch):
        chunk = range(start, min(start + batch, len(docs)))
        with holding_writer_lock(store):  # held per batch: an import waits for one batch at most
            _write_batch(store, docs, chunk, result, classes, version, report, clock)


def _write_batch(store, docs, chunk, result: AuditResult, classes: list[str], version: str, report: AuditReport, clock) -> None:
    reviewed_now = store.reviewed_session_ids(among=[docs[i]["session_id"] for i in chunk])
    now = clock()
    queue = result.queue
    for i in chunk:
        doc = docs[i]
        reasons = queue.reasons[i]
        probabilities = {c: round(float(p), 4) for c, p in zip(classes, result.probabilities[i])}
        changes = flag_changes(
            doc, reasons, result.priority[i], result.label_quality[i], version, now,
            signals=result.signals[i], probabilities=probabilities, sample=bool(queue.random[i]),
            doubted=bool(result.reasons[i]) and not reasons,
        )
        if changes is None:
            continue
        if doc["sid"] in reviewed_now or not store.update_unreviewed(doc["session_id"], changes):
            report.skipped_meanwhile += 1
            continue
        report.updated += 1
        if reasons and doc.get("needs_review") is not True:
            report.newly_flagged += 1
        if not reasons and changes.set.get("needs_review") is False:
            report.unflagged += 1
