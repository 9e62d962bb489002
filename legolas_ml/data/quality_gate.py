"""The quality gate: which documents become training data, and why the others did not.

The differential training rule:

* **first training** of a tenant (no finished ensemble exists): human reviews plus the trusted LLM
  classifications (see ``store.trusted_llm_query``);
* **retraining** (an ensemble exists): ``RetrainData`` says what. By default (``"reviews"``) the
  rule as the design notes wrote it: human reviews only. ``"switch"`` keeps the first training's
  data (human reviews + trusted LLM labels, a human review wins) until every class has
  ``min_reviews_per_class`` reviewed training rows, then trains on human reviews only;
  ``"unflagged"`` never switches and is confident learning: it drops the LLM labels the label audit
  flags or doubts (``"switch"`` and ``"reviews"`` keep the first training's trusted labels, whatever
  the audit says of them: it doubts many right labels of a rare class, and dropping them starved it).
  Under every policy a class with fewer reviewed rows than K folds need keeps its trusted LLM rows,
  and a class that still has too few rows is left out of that training, so a rare class never fails
  the run; the gate's reason says which classes did what. The evidence for the default (a retraining
  warm-started from the champion learns from the reviews alone) is in ``docs/loop_rounds.md``.

Every input document ends in exactly one bucket: *accepted*, *quarantined* (with a reason),
*superseded* (a human review beats an LLM label; among reviews of one session the latest valid
``reviewed_at`` wins) or, in a retraining, *left out* by ``RetrainData`` (``left_out_by_retrain_data``). Bad records never crash the gate and are never silently dropped.

Label normalisation policy: Unicode NFKC, surrounding whitespace stripped, lower-cased, inner runs
of whitespace replaced by one ``_``. So ``" Billing  Issue"`` and ``"billing issue"`` are the same
class ``billing_issue``; a label that is empty after this is quarantined as ``missing_label``.
"""

from __future__ import annotations

import re
import reprlib
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from legolas_ml.core.ids import normalise_session_id
from legolas_ml.core.timestamps import parse_timestamp
from legolas_ml.core.review_cursor import ReviewCursor
from legolas_ml.core.choices import RETRAIN_DATA
from legolas_ml.core.datasets import content_hash

MODES = ("auto", "first", "retrain")
QUARANTINE_REASONS = (
    "missing_session_id",
    "empty_text",
    "non_string_text",
    "invalid_utf8",
    "text_too_long",
    "no_text",
    "missing_label",
    "non_string_label",
    "invalid_reviewed_at",
)
_WS = re.compile(r"\s+")
COLUMNS = ["session_id", "text", "label", "source"]
# Quarantine samples preview containers with bounded depth: a deeply nested value must not recurse.
_PREVIEW = reprlib.Repr()
_PREVIEW.maxstring, _PREVIEW.maxother, _PREVIEW.maxlevel = 80, 80, 3


@dataclass
class GateSettings:
    """Limits of the gate.

    Args:
        max_text_chars: texts longer than this are quarantined as ``text_too_long``.
        samples_per_reason: how many quarantined records per reason are kept as examples.
    """

    max_text_chars: int = 20_000
    samples_per_reason: int = 5

    def __post_init__(self) -> None:
        if self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be >= 1, got {self.max_text_chars}")
        if self.samples_per_reason < 0:
            raise ValueError(f"samples_per_reason must be >= 0, got {self.samples_per_reason}")


@dataclass(frozen=True)
class RetrainData:
    """What a retraining trains on (see the module docstring).

    Args:
        policy: ``"reviews"`` (default: the design notes' rule), ``"switch"`` or ``"unflagged"``.
        min_reviews_per_class: with ``"switch"``, the reviewed training rows every class needs
            before a retraining drops the LLM labels.
    """

    policy: str = "reviews"
    min_reviews_per_class: int = 50

    def __post_init__(self) -> None:
        if self.policy not in RETRAIN_DATA:
            raise ValueError(f"retrain_data must be one of {list(RETRAIN_DATA)}, got {self.policy!r}")
        if isinstance(self.min_reviews_per_class, bool) or not isinstance(self.min_reviews_per_class, int) or self.min_reviews_per_class < 1:
            raise ValueError(f"retrain_min_reviews_per_class must be an integer >= 1, got {self.min_reviews_per_class!r}")


def retraining_rows(
    dataset: pd.DataFrame,
    data: RetrainData,
    *,
    min_rows_per_class: int = 0,
    held_out: Callable[[str], bool] | None = None,
) -> tuple[pd.DataFrame, str, dict[str, int]]:
    """The rows a retraining keeps from the gate's human + trusted-LLM table, and why (pure).

    Args:
        dataset: the gate's table (``session_id, text, label, source``), a human review already
            winning over the LLM label of its session.
        data: the retraining policy.
        min_rows_per_class: the training rows a class needs for K folds; a class with fewer
            reviewed rows keeps its LLM rows under every policy.
        held_out: whether a session is in the tenant's evaluation holdout; held-out reviews do not
            count (they are never trained on).

    Returns:
        ``(rows, reason, kept)``: ``kept`` is the number of LLM rows kept per class (empty when the
        retraining uses human reviews only).

    Example:
        >>> df = pd.DataFrame({"session_id": ["a", "b", "c"], "text": ["x"] * 3, "label": ["p", "p", "q"], "source": ["human", "llm", "llm"]})
        >>> retraining_rows(df, RetrainData("reviews"), min_rows_per_class=1)[1]
        "human reviews only, except the trusted LLM rows of ['q'] (fewer than 1 reviewed training rows: q 0)"
    """
    human = dataset["source"] == "human"
    counted = dataset[human]
    if held_out is not None and len(counted):
        counted = counted[~counted["session_id"].astype(str).map(held_out)]
    reviewed = Counter(counted["label"])
    classes = sorted(set(dataset["label"]))
    llm_per_class = Counter(dataset.loc[~human, "label"])

    def keeping(keep: set[str], reason: str) -> tuple[pd.DataFrame, str, dict[str, int]]:
        rows = dataset[human | dataset["label"].isin(keep)].reset_index(drop=True)
        # A class that even its LLM rows cannot lift to what K folds need (the audit doubts most of
        # them, say) is left out of this training rather than failing it: the candidate cannot
        # predict it, and the holdout comparison sees that (its recall there is 0).
        held = rows["session_id"].astype(str).map(held_out).astype(bool) if held_out is not None and len(rows) else pd.Series(False, index=rows.index)
        counts = Counter(rows.loc[~held, "label"])
        thin = {c: counts[c] for c in classes if counts[c] < min_rows_per_class}
        if thin:
            # Only its training rows go: its held-out reviews stay, so the holdout still judges the class.
            rows = rows[~(rows["label"].isin(thin) & ~held)].reset_index(drop=True)
            reason += (f"; left out of this training, too few rows for K folds (need {min_rows_per_class}): {_shown(thin)}: "
                       "the candidate cannot predict them and the promotion rule compares it with that")
        return rows, reason, {c: llm_per_class[c] for c in sorted(keep - set(thin)) if llm_per_class[c]}

    if data.policy == "unflagged":
        return keeping(set(classes), "human reviews + the LLM labels the audit neither flags nor doubts (retrain_data 'unflagged': confident learning)")
    need = max(data.min_reviews_per_class, min_rows_per_class) if data.policy == "switch" else min_rows_per_class
    short = {c: reviewed[c] for c in classes if reviewed[c] < need}
    if data.policy == "switch":
        if short:
            return keeping(set(classes), f"human reviews + trusted LLM labels until every class has {need} reviewed training rows ({_shown(short)})")
        return keeping(set(), f"every class has >= {need} reviewed training rows: human reviews only" if classes else "no labelled rows")
    if short:
        return keeping(set(short), f"human reviews only, except the trusted LLM rows of {sorted(short)} (fewer than {need} reviewed training rows: {_shown(short)})")
    return keeping(set(), "human reviews only (retrain_data 'reviews')")


def _shown(short: dict[str, int]) -> str:
    """``{class: rows}`` as a reason shows it: ``"a 3, b 0"``."""
    return ", ".join(f"{c} {n}" for c, n in short.items())


@dataclass
class GateResult:
    """The accepted training table and the account of every input document."""

    dataset: pd.DataFrame
    mode: str
    mode_reason: str
    counts: dict[str, int]
    per_source: dict[str, int]
    per_class: dict[str, int]
    quarantined: dict[str, int]
    superseded: dict[str, int]
    quarantine_samples: list[dict[str, Any]] = field(default_factory=list)
    content_hash: str = ""
    reviews_cursor: str | None = None  # the last-received review read (highest seq), as a serialized ReviewCursor
    llm_kept: dict[str, int] = field(default_factory=dict)  # a retraining's LLM rows kept, per class (RetrainData)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "counts": self.counts,
            "per_source": self.per_source,
            "per_class": self.per_class,
            "quarantined": self.quarantined,
            "superseded": self.superseded,
            "quarantine_samples": self.quarantine_samples,
            "content_hash": self.content_hash,
            "reviews_cursor": self.reviews_cursor,
            "llm_kept": self.llm_kept,
        }


def decide_mode(requested: str, has_model: bool) -> tuple[str, str]:
    """``first`` or ``retrain``, from an operator override or the tenant's model artifacts."""
    if requested not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {requested!r}")
    if requested != "auto":
        return requested, f"mode forced to {requested!r} by configuration"
    if has_model:
        return "retrain", "a trained ensemble exists for this tenant: a retraining"
    return "first", "no trained ensemble exists for this tenant: human reviews + trusted LLM labels"


def normalise_label(label: Any) -> tuple[str | None, str | None]:
    """(normalised label, None) or (None, quarantine reason)."""
    if label is None:
        return None, "missing_label"
    if not isinstance(label, str):
        return None, "non_string_label"
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return None, "invalid_utf8"
    text = _WS.sub("_", unicodedata.normalize("NFKC", label).strip()).lower()
    return (text, None) if text else (None, "missing_label")


def check_text(text: Any, max_chars: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, quarantine reason)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if text is None:
        return None, "no_text"
    if not isinstance(text, str):
        return None, "non_string_text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not representable in UTF-8
        return None, "invalid_utf8"
    if not text.strip():
        return None, "empty_text"
    if len(text) > max_chars:
        return None, "text_too_long"
    return text, None


def _session_id(doc: Mapping[str, Any]) -> str | None:
    return normalise_session_id(doc.get("session_id"))


def _preview(value: Any) -> str:
    """A bounded ``repr`` that never raises (deep nesting, ints past ``str()``'s digit limit)."""
    try:
        if isinstance(value, (dict, list, tuple, set)):
            return _PREVIEW.repr(value)[:80]
        return repr(value)[:80]
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _tiebreak_id(doc: Mapping[str, Any]) -> str:
    """``str(_id)`` for ordering ties, or ``""`` for an ``_id`` that has no bounded string."""
    value = doc.get("_id", "")
    if isinstance(value, (dict, list, tuple)):  # a nested _id: str() could recurse without bound
        return _preview(value)
    try:
        return str(value)
    except (ValueError, RecursionError):
        return ""


def _sample(doc: Mapping[str, Any], reason: str, source: str) -> dict[str, Any]:
    text = doc.get("text")
    preview = _preview(text) if text is not None else None
    return {"reason": reason, "source": source, "session_id": _plain_id(doc.get("session_id")), "text": preview}


def _plain_id(value: Any) -> str:
    """A sample's session id as people type it (``conv-000013``, not ``'conv-000013'``), at most 60 characters.

    A string is shown as it is (unprintable characters escaped); anything else as a bounded repr.
    """
    if value is None:
        return "(missing)"
    if isinstance(value, str):
        text = value if value.isprintable() else value.encode("unicode_escape", "backslashreplace").decode("ascii")
        return text[:60]
    return _preview(value)[:60]


def run_gate(
    reviews: Iterable[Mapping[str, Any]],
    llm_docs: Iterable[Mapping[str, Any]] | None,
    texts_by_session: Mapping[str, Any],
    mode: str,
    mode_reason: str = "",
    settings: GateSettings | None = None,
) -> GateResult:
    """Apply the gate to documents already read from the store (pure: no I/O, never raises on data).

    Args:
        reviews: human review documents of the tenant.
        llm_docs: trusted LLM classification documents (ignored in ``retrain`` mode).
        texts_by_session: classification texts, for reviews that carry no text of their own.
        mode: ``"first"`` or ``"retrain"``.
        mode_reason: why that mode was chosen (kept in the summary).
        settings: limits; defaults to ``GateSettings()``.

    Returns:
        A ``GateResult`` whose ``dataset`` has one row per session: ``session_id, text, label, source``.
    """
    if mode not in ("first", "retrain"):
        raise ValueError(f"mode must be 'first' or 'retrain' (resolve 'auto' with decide_mode), got {mode!r}")
    account = _Account(settings or GateSettings())
    best_review = _latest_reviews(reviews, texts_by_session, account)
    # Trusted LLM labels count in a first training only.
    best_llm = _latest_llm_labels(llm_docs, best_review, account) if mode == "first" and llm_docs is not None else {}
    return _gate_result(best_review, best_llm, account, mode, mode_reason)


#: A session's kept document: ``(ordering key, text, label)``; the larger key wins.
_Kept = tuple[tuple, str, str]


@dataclass
class _Account:
    """What ``run_gate`` counts while it reads: every input ends accepted, quarantined or superseded."""

    settings: GateSettings
    inputs: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    superseded: Counter[str] = field(
        default_factory=lambda: Counter({"reviews_by_later_review": 0, "llm_by_human_review": 0, "llm_by_later_llm": 0})
    )

    def quarantine(self, doc: Mapping[str, Any], reason: str, source: str) -> None:
        """Count ``doc`` as quarantined for ``reason``, kept as a sample while its reason has fewer than the settings' samples."""
        self.quarantined[reason] += 1
        if sum(1 for s in self.samples if s["reason"] == reason) < self.settings.samples_per_reason:
            self.samples.append(_sample(doc, reason, source))

    def session_of(self, doc: Any, source: str) -> str | None:
        """The document's session id, or None after quarantining a document that has none."""
        sid = _session_id(doc) if isinstance(doc, Mapping) else None
        if sid is None:
            self.quarantine(doc if isinstance(doc, Mapping) else {}, "missing_session_id", source)
        return sid

    def keep_latest(self, best: dict[str, _Kept], sid: str, key: tuple, text: str, label: str, counter: str) -> None:
        """Keep the document with the larger key per session; the other one is superseded."""
        if sid in best:
            self.superseded[counter] += 1
            if key <= best[sid][0]:
                return
        best[sid] = (key, text, label)


def _checked_review(
    doc: Mapping[str, Any], sid: str, texts_by_session: Mapping[str, Any], max_chars: int,
) -> tuple[tuple | None, str | None]:
    """``((text, label, reviewed_at), None)`` for a valid review, else ``(None, quarantine reason)`` (pure).

    A review without a text of its own (or a blank one, where the session has a text) is judged on its session's text.
    """
    raw_text = doc.get("text")
    if raw_text is None or (isinstance(raw_text, str) and not raw_text.strip() and sid in texts_by_session):
        raw_text = texts_by_session.get(sid)
    text, problem = check_text(raw_text, max_chars)
    if problem is not None:
        return None, problem
    label, problem = normalise_label(doc.get("label"))
    if problem is not None:
        return None, problem
    ts = parse_timestamp(doc.get("reviewed_at"))
    if ts is None:
        return None, "invalid_reviewed_at"
    return (text, label, ts), None


def _latest_reviews(reviews: Iterable[Mapping[str, Any]], texts_by_session: Mapping[str, Any], account: _Account) -> dict[str, _Kept]:
    """Validate the human reviews, then keep the latest valid review of each session."""
    best_review: dict[str, _Kept] = {}
    for position, doc in enumerate(reviews):
        account.inputs["human"] += 1
        sid = account.session_of(doc, "human")
        if sid is None:
            continue
        checked, problem = _checked_review(doc, sid, texts_by_session, account.settings.max_text_chars)
        if problem is not None:
            account.quarantine(doc, problem, "human")
            continue
        text, label, ts = checked
        # Ties on reviewed_at are broken by _id, then input position: deterministic either way.
        account.keep_latest(best_review, sid, (ts, _tiebreak_id(doc), position), text, label, "reviews_by_later_review")
    return best_review


def _latest_llm_labels(llm_docs: Iterable[Mapping[str, Any]], best_review: dict[str, _Kept], account: _Account) -> dict[str, _Kept]:
    """Validate the trusted LLM labels and keep the latest of each session; a human review of the session wins."""
    best_llm: dict[str, _Kept] = {}
    for position, doc in enumerate(llm_docs):
        account.inputs["llm"] += 1
        sid = account.session_of(doc, "llm")
        if sid is None:
            continue
        text, problem = check_text(doc.get("text"), account.settings.max_text_chars)
        if problem is None:
            label, problem = normalise_label(doc.get("llm_prediction"))
        if problem is not None:
            account.quarantine(doc, problem, "llm")
            continue
        if sid in best_review:
            account.superseded["llm_by_human_review"] += 1
            continue
        key = (parse_timestamp(doc.get("created_at")) or datetime.min, _tiebreak_id(doc), position)
        account.keep_latest(best_llm, sid, key, text, label, "llm_by_later_llm")
    return best_llm


def _gate_result(best_review: dict[str, _Kept], best_llm: dict[str, _Kept], account: _Account, mode: str, mode_reason: str) -> GateResult:
    """The accepted table (one row per session, sorted) and the account of every input (pure)."""
    rows = [(sid, text, label, "human") for sid, (_, text, label) in best_review.items()]
    rows += [(sid, text, label, "llm") for sid, (_, text, label) in best_llm.items()]
    dataset = pd.DataFrame(sorted(rows), columns=COLUMNS)
    inputs, quarantined, superseded = account.inputs, account.quarantined, account.superseded
    counts = {
        "inputs": inputs["human"] + inputs["llm"],
        "input_reviews": inputs["human"],
        "input_llm": inputs["llm"],
        "accepted": len(dataset),
        "quarantined": sum(quarantined.values()),
        "superseded": sum(superseded.values()),
    }
    return GateResult(
        dataset=dataset,
        mode=mode,
        mode_reason=mode_reason,
        counts=counts,
        per_source={"human": len(best_review), "llm": len(best_llm)},
        per_class=dict(sorted(Counter(dataset["label"]).items())),
        quarantined={r: quarantined.get(r, 0) for r in QUARANTINE_REASONS},
        superseded=dict(superseded),
        quarantine_samples=account.samples,
        content_hash=content_hash(dataset),
    )


def gate_from_store(
    store,
    has_model: bool,
    requested_mode: str = "auto",
    settings: GateSettings | None = None,
    *,
    retrain: RetrainData | None = None,
    min_rows_per_class: int = 0,
    held_out: Callable[[str], bool] | None = None,
) -> GateResult:
    """Read a tenant's documents from a ``TenantStore`` and run the gate on them.

    Args:
        store: the tenant's ``TenantStore``.
        has_model: whether the tenant has a finished ensemble (``TenantArtifacts.has_model()``).
        requested_mode: ``"auto"`` (decide from ``has_model``), ``"first"`` or ``"retrain"``.
        settings: gate limits.
        retrain: what a retraining trains on (default ``RetrainData()``); see ``retraining_rows``.
        min_rows_per_class: the training rows a class needs for K folds (a retraining keeps the
            LLM rows of a class with fewer reviewed ones).
        held_out: whether a session is in the tenant's evaluation holdout (its reviews do not count
            towards a class's reviewed training rows).
    """
    mode, reason = decide_mode(requested_mode, has_model)
    retrain = retrain or RetrainData()
    reviews = list(store.human_reviews())
    # A retraining reads the trusted LLM labels too: RetrainData decides which of them it keeps. Only
    # 'unflagged' (confident learning) drops the labels the audit flags or doubts: on a rare class the
    # audit doubts many right labels too (the champion is weakest there), and dropping them starved it.
    llm_docs = list(store.trusted_llm_classifications(despite_audit=mode == "retrain" and retrain.policy != "unflagged"))
    textless = [r.get("session_id") for r in reviews if not isinstance(r.get("text"), str) or not r["text"].strip()]
    texts = store.texts_for(textless) if textless else {}
    result = run_gate(reviews, llm_docs, texts, "first", reason, settings)
    result.mode = mode
    if mode == "retrain":
        rows, why, kept = retraining_rows(result.dataset, retrain, min_rows_per_class=min_rows_per_class, held_out=held_out)
        result.dataset, result.llm_kept = rows, kept
        result.mode_reason = f"{reason}: {why}"
        result.per_source = {"human": int((rows["source"] == "human").sum()), "llm": int((rows["source"] == "llm").sum())}
        result.per_class = dict(sorted(Counter(rows["label"]).items()))
        result.counts["left_out_by_retrain_data"] = result.counts["accepted"] - len(rows)
        result.counts["accepted"] = len(rows)
        result.content_hash = content_hash(rows)
    # Every review read is consumed once a decision is recorded, whatever its reviewed_at (even one
    # the gate quarantined: it was looked at). Counted by seq, the order the store received them.
    numbered = [r for r in reviews if r.get("seq") is not None]
    if numbered:
        result.reviews_cursor = max(ReviewCursor.of(r) for r in numbered).serialize()
    return result
