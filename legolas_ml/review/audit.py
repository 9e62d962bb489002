"""Which LLM labels are probably wrong, and why: cleanlab's confident learning plus routing rules.

Given each document's LLM label and honest class probabilities (out-of-fold for sessions the
ensemble trained on, the ensemble's for the rest), a document is flagged for human review with one
or more reasons:

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

Priority: ``1 - q``, where ``q`` is cleanlab's label quality score
(``rank.get_label_quality_scores``, self-confidence: the probability the model gives the LLM's
label). The queue is ordered by it: the labels most likely wrong first. ``label_not_in_model``
gets priority 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REASONS = ("label_issue", "disagreement", "low_confidence", "high_entropy", "novelty", "label_not_in_model")


@dataclass(frozen=True)
class AuditSettings:
    """The routing rules of the audit.

    Args:
        reasons: which reasons flag a document (any subset of ``REASONS``).
        min_confidence: ``low_confidence`` below this top probability, in (0, 1].
        max_entropy: ``high_entropy`` above this normalised entropy, in [0, 1).
        novelty_quantile: the training data's own nearest-distance quantile that ``novelty`` exceeds.
        max_flagged_share: the ``flagged_share_under_threshold`` check warns above this share.
    """

    reasons: tuple[str, ...] = REASONS
    min_confidence: float = 0.7
    max_entropy: float = 0.5
    novelty_quantile: float = 0.99
    max_flagged_share: float = 0.3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.reasons) - set(REASONS))
        if unknown:
            raise ValueError(f"review.reasons must be among {list(REASONS)}, got unknown {unknown}")
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
    """Per document (aligned with the input): reasons, priority and quality; per class: noise rates."""

    reasons: list[list[str]]
    priority: np.ndarray  # (n,) in [0, 1], higher = review first
    label_quality: np.ndarray  # (n,) cleanlab self-confidence; nan for labels the model does not know
    predicted: list[str]
    confidence: np.ndarray  # (n,) top probability
    entropy: np.ndarray  # (n,) normalised entropy
    noise_rate: dict[str, float]  # cleanlab's estimate of P(true class != c | LLM said c), per class
    per_reason: Counter = field(default_factory=Counter)
    session_ids: list[str] = field(default_factory=list)  # aligned with the rows, when the caller knows them
    probabilities: np.ndarray | None = None  # (n, n_classes) the calibrated rows the rules saw, when the caller keeps them

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
    reasons = [[r for r in REASONS if r in enabled and checks[r][i]] for i in range(n)]
    priority = np.where(known, 1.0 - np.nan_to_num(quality, nan=0.0), 1.0)
    per_reason = Counter(r for rs in reasons for r in rs)
    return AuditResult(
        reasons=reasons,
        priority=np.round(priority, 6),
        label_quality=quality,
        predicted=[classes[i] for i in top],
        confidence=confidence,
        entropy=entropy,
        noise_rate=noise_rate,
        per_reason=per_reason,
    )


def summary_by(values: Sequence[Any], flagged: np.ndarray) -> dict[str, int]:
    """How many flagged documents per value (class, reason...), sorted by name."""
    counts = Counter(str(v) for v, f in zip(values, flagged) if f)
    return dict(sorted(counts.items()))
