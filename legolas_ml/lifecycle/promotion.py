"""Champion/challenger: does a candidate ensemble replace the one in service?

The decision is made on the tenant's evaluation holdout (``holdout.py``): human-reviewed sessions
that neither ensemble trained on. A candidate is promoted when

1. it is above chance on its own test split (``1/C + chance_margin``), whatever else holds;
2. there is no champion (a first training is promoted on the checks alone), or
3. on the holdout, its balanced accuracy is not worse than the champion's by more than ``margin``
   and no class with at least ``min_class_support`` holdout sessions loses more than
   ``max_recall_drop`` of recall.

When the holdout has fewer than ``min_holdout`` sessions the comparison cannot prove anything; the
documented fallback is to **keep the champion** and reject the candidate with that reason (an
operator can still promote it explicitly with ``legolas promote``). The decision, like early
stopping's, is a value with its reason and every number behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from legolas_ml.evaluation.metrics import classification_metrics


@dataclass(frozen=True)
class PromotionPolicy:
    """The promotion rule's settings.

    Args:
        margin: how much lower the candidate's holdout balanced accuracy may be, >= 0 (default 0.01).
        max_recall_drop: how much recall any supported class may lose, in [0, 1] (default 0.10).
        min_class_support: holdout sessions a class needs for its recall to be compared, >= 1.
        min_holdout: holdout sessions needed to decide at all, >= 1; fewer keeps the champion.
        chance_margin: the candidate's test balanced accuracy must exceed 1/C by this much.
        n_bootstrap: paired bootstrap resamples for the confidence interval of the difference.
        confidence: the interval's coverage, in (0, 1).
    """

    margin: float = 0.01
    max_recall_drop: float = 0.10
    min_class_support: int = 5
    min_holdout: int = 30
    chance_margin: float = 0.05
    n_bootstrap: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        problems = []
        if not self.margin >= 0:
            problems.append(f"margin must be >= 0, got {self.margin!r}")
        if not 0 <= self.max_recall_drop <= 1:
            problems.append(f"max_recall_drop must be in [0, 1], got {self.max_recall_drop!r}")
        for name in ("min_class_support", "min_holdout", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.chance_margin < 1:
            problems.append(f"chance_margin must be in [0, 1), got {self.chance_margin!r}")
        if not 0 < self.confidence < 1:
            problems.append(f"confidence must be in (0, 1), got {self.confidence!r}")
        if problems:
            raise ValueError("invalid promotion policy: " + "; ".join(problems))


@dataclass
class Comparison:
    """Candidate vs champion on the same holdout sessions."""

    n: int
    per_class_support: dict[str, int]
    candidate_balanced_accuracy: float
    champion_balanced_accuracy: float
    difference: float  # candidate - champion
    ci_low: float
    ci_high: float
    confidence: float
    candidate_recall: dict[str, float]
    champion_recall: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromotionDecision:
    """Promote or not, why, and the numbers behind it."""

    promote: bool
    reason: str
    comparison: Comparison | None = None
    recall_drops: dict[str, float] = field(default_factory=dict)  # supported classes that fell too far

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparison"] = self.comparison.to_dict() if self.comparison else None
        return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[int]) -> float:
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in classes if (y_true == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def compare_on_holdout(
    y_true: Sequence[str],
    candidate_pred: Sequence[str],
    champion_pred: Sequence[str],
    policy: PromotionPolicy = PromotionPolicy(),
    seed: int = 0,
) -> Comparison:
    """Balanced accuracy of both ensembles on the same sessions, with a paired bootstrap interval.

    The interval resamples sessions with replacement (the same resample for both ensembles) and
    reports the ``confidence`` percentile interval of ``BA(candidate) - BA(champion)``.

    Raises:
        ValueError: if the three sequences differ in length or are empty.
    """
    if not (len(y_true) == len(candidate_pred) == len(champion_pred)) or not len(y_true):
        raise ValueError(
            f"y_true, candidate_pred and champion_pred must be equally long and non-empty, got "
            f"{len(y_true)}, {len(candidate_pred)}, {len(champion_pred)}"
        )
    classes = sorted(set(y_true))
    candidate = classification_metrics(list(y_true), list(candidate_pred), classes=classes)
    champion = classification_metrics(list(y_true), list(champion_pred), classes=classes)
    # Integer codes for the bootstrap; predictions of classes absent from the holdout map to -1.
    code = {c: i for i, c in enumerate(classes)}
    t = np.array([code[c] for c in y_true])
    a = np.array([code.get(c, -1) for c in candidate_pred])
    b = np.array([code.get(c, -1) for c in champion_pred])
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(policy.n_bootstrap):
        idx = rng.integers(0, len(t), len(t))
        present = np.unique(t[idx])
        diffs.append(_balanced_accuracy(t[idx], a[idx], present) - _balanced_accuracy(t[idx], b[idx], present))
    tail = (1 - policy.confidence) / 2 * 100
    low, high = np.nanpercentile(diffs, [tail, 100 - tail])
    return Comparison(
        n=len(t),
        per_class_support={c: int((t == code[c]).sum()) for c in classes},
        candidate_balanced_accuracy=candidate["balanced_accuracy"],
        champion_balanced_accuracy=champion["balanced_accuracy"],
        difference=candidate["balanced_accuracy"] - champion["balanced_accuracy"],
        ci_low=float(low),
        ci_high=float(high),
        confidence=policy.confidence,
        candidate_recall={c: candidate["per_class"][c]["recall"] for c in classes},
        champion_recall={c: champion["per_class"][c]["recall"] for c in classes},
    )


def decide_promotion(
    candidate_test_balanced_accuracy: float,
    n_classes: int,
    comparison: Comparison | None,
    has_champion: bool,
    policy: PromotionPolicy = PromotionPolicy(),
) -> PromotionDecision:
    """Apply the promotion rule (module docstring) and say why.

    Args:
        candidate_test_balanced_accuracy: the candidate's balanced accuracy on its own test split.
        n_classes: the candidate's number of classes (chance is 1/C).
        comparison: candidate vs champion on the holdout; ``None`` when there is no champion or
            the holdout is empty.
        has_champion: whether a model is in service.
        policy: the thresholds.
    """
    chance = 1 / max(n_classes, 1) + policy.chance_margin
    if not candidate_test_balanced_accuracy > chance:
        return PromotionDecision(
            False, f"test balanced accuracy {candidate_test_balanced_accuracy:.4f} is not above chance + margin {chance:.4f}", comparison
        )
    if not has_champion:
        return PromotionDecision(True, "first model of the tenant: no champion to compare with, promoted on the checks", comparison)
    if comparison is None or comparison.n < policy.min_holdout:
        n = comparison.n if comparison else 0
        return PromotionDecision(
            False,
            f"holdout too small to prove the candidate no worse: {n} human-reviewed sessions, need >= "
            f"{policy.min_holdout}; the champion keeps serving (promote explicitly with `legolas promote`)",
            comparison,
        )
    c = comparison
    drops = {
        cls: round(c.champion_recall[cls] - c.candidate_recall[cls], 4)
        for cls, support in c.per_class_support.items()
        if support >= policy.min_class_support and c.champion_recall[cls] - c.candidate_recall[cls] > policy.max_recall_drop
    }
    summary = (
        f"holdout balanced accuracy {c.candidate_balanced_accuracy:.4f} vs champion {c.champion_balanced_accuracy:.4f} "
        f"(difference {c.difference:+.4f}, {c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], n={c.n})"
    )
    if c.difference < -policy.margin:
        return PromotionDecision(False, f"worse than the champion by more than {policy.margin}: {summary}", c, drops)
    if drops:
        listed = ", ".join(
            f"{cls} {c.champion_recall[cls]:.2f}->{c.candidate_recall[cls]:.2f} (n={c.per_class_support[cls]})" for cls in drops
        )
        return PromotionDecision(False, f"recall fell by more than {policy.max_recall_drop} for {listed}; {summary}", c, drops)
    return PromotionDecision(True, f"not worse than the champion: {summary}", c)
