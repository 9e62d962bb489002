"""Which LLM labels are probably wrong, and why: cleanlab's confident learning plus routing rules.

Given each document's LLM label and honest class probabilities (out-of-fold for sessions the
ensemble trained on, the ensemble's for the rest), each of these reasons is computed per document;
the flagging ones (below) send it to human review:

``label_issue``
    cleanlab's ``filter.find_label_issues`` (confident learning, prune by noise rate) says the
    given label is likely wrong.
``disagreement``
    the model's most probable class is not the LLM's label.
``low_confidence``
    the model's highest probability is below ``min_confidence`` (default 0.7).
``high_entropy``
    the normalised entropy ``H(p) / log(C)`` is above ``max_entropy`` (default 0.5).
``novelty``
    the text is farther from every training example than the training data is from itself
    (``novelty.py``).
``label_not_in_model``
    the LLM's label is not a class the model knows (cleanlab cannot rank it).

Flagging reasons and signals: every reason of ``settings.reasons`` is computed (a *signal*), but
only those also in ``settings.flag_reasons`` put a document in the queue. The
default flags on ``label_issue`` and ``disagreement``, whose precision (share of the flagged LLM
labels that are truly wrong) was 0.98 and 0.93 on the demo (``bench/label_audit.py``, docs/label_audit.md
"Measured on the demo tenant"), far above the base rate (0.097 of the LLM labels are wrong), and
on ``label_not_in_model``, a label the model cannot judge at all. ``low_confidence`` (0.094),
``high_entropy`` (0.024) and ``novelty`` (0.0) fire at or below the base rate: flagging on them
filled the queue with right labels (89% of the demo's unreviewed documents). They stay recorded on
a flagged document (``review_signals``) and in the benchmark, and never flag on their own. The queue's
order is the priority alone: it already ranks first the documents whose LLM label the model
doubts, which is what those signals threshold.

Priority: ``1 - q``, where ``q`` is cleanlab's label quality score
(``rank.get_label_quality_scores``, self-confidence: the probability the model gives the LLM's
label). The queue is ordered by it: the labels most likely wrong first. ``label_not_in_model``
gets priority 1.

The queue budget (``plan_queue``): at most ``queue_size`` documents wait per tenant. Of them,
``ceil(queue_size * random_share)`` are a random sample (``random_sample``) of the audited
documents the rules do not put in the queue, so that reviews also measure the service's accuracy
and not only the hard cases; the rest go to the flagged documents, highest priority first. A flag
set by someone else (``external``) is never removed by the budget but takes a place in it: the
reviewers have one queue.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from legolas_ml.core.choices import FLAG_REASONS, MAX_RANDOM_SHARE, RANDOM_SAMPLE, REASONS



@dataclass(frozen=True)
class AuditSettings:
    """The routing rules of the audit.

    Args:
        reasons: which reasons are computed and recorded (any subset of ``REASONS``).
        flag_reasons: which of them flag a document (any subset of ``REASONS``; one outside
            ``reasons`` is not computed, so never flags; empty: only external flags and random samples wait).
        min_confidence: ``low_confidence`` below this top probability, in (0, 1].
        max_entropy: ``high_entropy`` above this normalised entropy, in [0, 1).
        novelty_quantile: the training data's own nearest-distance quantile that ``novelty`` exceeds.
        max_flagged_share: the ``flagged_share_under_threshold`` check warns above this share.
        queue_size: at most this many documents wait in the tenant's queue (``plan_queue``), >= 1.
        random_share: the share of ``queue_size`` drawn at random, in [0, ``MAX_RANDOM_SHARE``].
    """

    reasons: tuple[str, ...] = REASONS
    flag_reasons: tuple[str, ...] = FLAG_REASONS
    min_confidence: float = 0.7
    max_entropy: float = 0.5
    novelty_quantile: float = 0.99
    max_flagged_share: float = 0.3
    queue_size: int = 100
    random_share: float = 0.1

    def __post_init__(self) -> None:
        for name in ("reasons", "flag_reasons"):
            unknown = sorted(set(getattr(self, name)) - set(REASONS))
            if unknown:
                raise ValueError(f"review.{name} must be among {list(REASONS)}, got unknown {unknown}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f"review.queue_size must be a whole number >= 1, got {self.queue_size!r}")
        share = self.random_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= MAX_RANDOM_SHARE:
            raise ValueError(f"review.random_share must be a number in [0, {MAX_RANDOM_SHARE}], got {share!r}")
        for name, value, low_open in (
            ("min_confidence", self.min_confidence, False),
            ("max_entropy", self.max_entropy, False),
            ("novelty_quantile", self.novelty_quantile, True),
            ("max_flagged_share", self.max_flagged_share, False),
        ):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (0 < value if low_open else 0 <= value) and value <= 1
            if not ok:
                raise ValueError(f"review.{name} must be a number in {'(0' if low_open else '[0'}, 1], got {value!r}")


@dataclass
class AuditResult:
    """Per document (aligned with the input): reasons, priority and quality; per class: noise rates.

    ``signals`` are all the enabled reasons that hold; ``reasons`` those of them that flag (before
    the queue budget: ``plan_queue`` decides which flags are written).
    """

    reasons: list[list[str]]
    priority: np.ndarray  # (n,) in [0, 1], higher = review first
    label_quality: np.ndarray  # (n,) cleanlab self-confidence; nan for labels the model does not know
    predicted: list[str]
    confidence: np.ndarray  # (n,) top probability
    entropy: np.ndarray  # (n,) normalised entropy
    noise_rate: dict[str, float]  # cleanlab's estimate of P(true class != c | LLM said c), per class
    per_reason: Counter = field(default_factory=Counter)
    signals: list[list[str]] = field(default_factory=list)
    per_signal: Counter = field(default_factory=Counter)  # documents each enabled reason holds on, flagging or not
    session_ids: list[str] = field(default_factory=list)  # aligned with the rows, when the caller knows them
    probabilities: np.ndarray | None = None  # (n, n_classes) the calibrated rows the rules saw, when the caller keeps them
    queue: "QueuePlan | None" = None  # the budget's decision (``plan_queue``), when the caller applied it

    @property
    def flagged(self) -> np.ndarray:
        return np.array([bool(r) for r in self.reasons], dtype=bool)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """``H(p) / log(C)`` per row, in [0, 1] (0: certain, 1: uniform)."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1) / np.log(probs.shape[1])


def audit_labels(
    given: Sequence[str | None],
    pred_probs: np.ndarray,
    classes: Sequence[str],
    settings: AuditSettings = AuditSettings(),
    novel: np.ndarray | None = None,
) -> AuditResult:
    """Flag the documents whose LLM label is probably wrong or that the model cannot vouch for.

    Args:
        given: the LLM's (normalised) label per document; ``None`` or a class outside ``classes``
            becomes ``label_not_in_model``.
        pred_probs: honest probabilities ``(n, len(classes))``, rows summing to 1.
        classes: the model's classes, the column order of ``pred_probs``.
        novel: ``(n,)`` booleans from the novelty model, or ``None`` to skip that reason.

    Returns:
        An ``AuditResult`` aligned with ``given``.
    """
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n, n_classes = pred_probs.shape
    if len(given) != n or n_classes != len(classes):
        raise ValueError(f"pred_probs has shape {pred_probs.shape}, expected ({len(given)}, {len(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([g in index for g in given], dtype=bool)
    labels = np.array([index.get(g, -1) for g in given], dtype=np.int64)
    quality = np.full(n, np.nan)
    issue = np.zeros(n, dtype=bool)
    noise_rate: dict[str, float] = {}
    rows = np.flatnonzero(known)
    # cleanlab needs every class among the given labels; a class the LLM never used cannot be
    # mislabelled as itself and is left out of its estimate.
    present = sorted(set(labels[rows].tolist()))
    if len(rows) and len(present) >= 2:
        remap = {c: i for i, c in enumerate(present)}
        sub_labels = np.array([remap[c] for c in labels[rows]])
        sub_probs = pred_probs[rows][:, present]
        sub_probs = sub_probs / sub_probs.sum(axis=1, keepdims=True).clip(min=1e-12)
        quality[rows] = get_label_quality_scores(sub_labels, sub_probs, method="self_confidence")
        # n_jobs=1: no worker processes forked from a process that holds torch threads.
        issue[rows] = find_label_issues(sub_labels, sub_probs, filter_by="prune_by_noise_rate", n_jobs=1)
        _, _, inverse_noise, _ = estimate_py_and_noise_matrices_from_probabilities(sub_labels, sub_probs)
        noise_rate = {classes[c]: float(1.0 - inverse_noise[i, i]) for c, i in remap.items()}
    elif len(rows):
        quality[rows] = pred_probs[rows, labels[rows]]
    top = pred_probs.argmax(axis=1)
    confidence = pred_probs.max(axis=1)
    entropy = normalised_entropy(pred_probs)
    enabled = set(settings.reasons)
    checks = {
        "label_issue": issue,
        "disagreement": known & (top != labels),
        "low_confidence": confidence < settings.min_confidence,
        "high_entropy": entropy > settings.max_entropy,
        "novelty": np.zeros(n, dtype=bool) if novel is None else np.asarray(novel, dtype=bool),
        "label_not_in_model": ~known,
    }
    signals = [[r for r in REASONS if r in enabled and checks[r][i]] for i in range(n)]
    flagging = set(settings.flag_reasons)
    reasons = [[r for r in held if r in flagging] for held in signals]
    priority = np.where(known, 1.0 - np.nan_to_num(quality, nan=0.0), 1.0)
    per_reason = Counter(r for rs in reasons for r in rs)
    return AuditResult(
        reasons=reasons,
        signals=signals,
        per_signal=Counter(r for rs in signals for r in rs),
        priority=np.round(priority, 6),
        label_quality=quality,
        predicted=[classes[i] for i in top],
        confidence=confidence,
        entropy=entropy,
        noise_rate=noise_rate,
        per_reason=per_reason,
    )


@dataclass
class QueuePlan:
    """What the budget decided, per audited document (aligned with ``plan_queue``'s input)."""

    reasons: list[list[str]]  # what review_reason says: the rules' (kept), [RANDOM_SAMPLE], or [] (not in the queue)
    random: np.ndarray  # (n,) bool: in the queue as a random sample
    flagged_part: int  # places for flags: queue_size minus the random part
    random_part: int  # ceil(queue_size * random_share)
    wanted: int  # documents the rules flag, before the budget (external and random ones included)
    cut: int  # flagged by the rules, left out by the budget
    external: int  # unreviewed flags somebody else set (audited or not): never removed, they take places
    random_kept: int  # random samples from an earlier audit still waiting
    random_drawn: int  # random samples drawn now
    reason: str = ""

    @property
    def queued(self) -> np.ndarray:
        return np.array([bool(r) for r in self.reasons], dtype=bool)


def random_key(key: str, session_id: str) -> str:
    """A document's place in the random order for ``key``: a fixed permutation of the session ids,
    independent of their content and of which other documents exist (drawing from a pool that
    shrank as reviews arrived leaves the other documents' places as they were)."""
    return hashlib.sha256(f"{key}\x00{session_id}".encode()).hexdigest()


def plan_queue(
    session_ids: Sequence[str],
    reasons: Sequence[Sequence[str]],
    priority: np.ndarray,
    *,
    external: np.ndarray,
    sampled: np.ndarray,
    external_elsewhere: int = 0,
    settings: AuditSettings = AuditSettings(),
    key: str = "",
) -> QueuePlan:
    """Which audited documents the queue holds within ``settings.queue_size``, and why.

    1. The random part, ``ceil(queue_size * random_share)``: the random samples of an earlier
       audit that still wait stay (dropping one because the rules now flag it would leave the
       sample without its hardest cases); the rest is drawn in the order of ``random_key(key, id)``
       among the documents neither flagged nor sampled (those the budget cuts included).
    2. The flagged part, ``queue_size`` minus the random part: every external flag takes a place
       and stays; the remaining places go to the rules' flags by priority (ties: session id), and
       the flags beyond them are cut.

    Args:
        session_ids: normalised ids of the audited documents.
        reasons: the rules' flagging reasons per document (``AuditResult.reasons``).
        priority: ``(n,)`` the audit's priority.
        external: ``(n,)`` flagged by somebody else (kept, with the rules' reasons).
        sampled: ``(n,)`` a random sample of an earlier audit, not reviewed yet.
        external_elsewhere: external flags on unreviewed documents that were not audited.
        key: the random order's key: the model version (and seed), so one champion draws one sample.

    Returns:
        A ``QueuePlan`` aligned with ``session_ids``.
    """
    n = len(session_ids)
    external, sampled = np.asarray(external, dtype=bool), np.asarray(sampled, dtype=bool) & ~np.asarray(external, dtype=bool)
    random_part = math.ceil(settings.queue_size * settings.random_share - 1e-9)  # 100 * 0.1 is 10.000000000000002
    flagged_part = settings.queue_size - random_part
    order = sorted(range(n), key=lambda i: random_key(key, session_ids[i]))
    kept = [i for i in order if sampled[i]][:random_part]
    random = np.zeros(n, dtype=bool)
    random[kept] = True
    wanted = [i for i in range(n) if reasons[i] and not external[i] and not random[i]]
    n_external = int(external.sum()) + external_elsewhere
    places = max(0, flagged_part - n_external)
    ranked = sorted(wanted, key=lambda i: (-float(priority[i]), session_ids[i]))
    flagged = set(ranked[:places])
    final = [
        [RANDOM_SAMPLE] if random[i] else list(reasons[i]) if (external[i] or i in flagged) else []
        for i in range(n)
    ]
    pool = [i for i in order if not final[i] and not sampled[i] and not external[i]]
    drawn = pool[: random_part - len(kept)]
    for i in drawn:
        random[i], final[i] = True, [RANDOM_SAMPLE]
    cut = len(wanted) - len(flagged)
    return QueuePlan(
        reasons=final, random=random, flagged_part=flagged_part, random_part=random_part,
        wanted=sum(1 for r in reasons if r), cut=cut,
        external=n_external, random_kept=len(kept), random_drawn=len(drawn),
        reason=(
            f"queue of at most {settings.queue_size}: {len(flagged)} of {len(wanted)} rule flags within the "
            f"{places} places left by {n_external} external flags ({cut} cut, lowest priority), "
            f"{len(kept) + len(drawn)} of {random_part} random samples ({len(kept)} kept, {len(drawn)} drawn)"
        ),
    )


def summary_by(values: Sequence[Any], flagged: np.ndarray) -> dict[str, int]:
    """How many flagged documents per value (class, reason...), sorted by name."""
    counts = Counter(str(v) for v, f in zip(values, flagged) if f)
    return dict(sorted(counts.items()))
