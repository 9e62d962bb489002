"""Champion/challenger: does a candidate ensemble replace the one in service, and with what error rates?

The decision is made on the tenant's evaluation holdout (``holdout.py``): human-reviewed sessions
that neither ensemble trained on. Both ensembles predict the same sessions, so the comparison is
*paired*: only the sessions where exactly one of them is right carry evidence. For each class ``c``
with ``n_c`` holdout sessions, ``a_c`` of them won by the candidate and ``b_c`` by the champion, the
recall difference ``(a_c - b_c) / n_c`` has the paired Wald interval with variance
``((a_c + b_c + 1) - (a_c - b_c)**2 / n_c) / n_c**2``: one disagreement more than observed (Agresti-Min's
half session in each discordant cell), which keeps it honest when the two ensembles never
disagree, without pulling the centre toward 0 (that pull under-states a rare class's real drop).
Balanced accuracy is the mean of the recalls, so its difference is the mean of the class
differences, with variance ``sum(var_c) / C**2``.

The rule, in this order (``decide_promotion``):

1. **chance**: the candidate's test balanced accuracy must exceed ``1/C + chance_margin``;
2. **first model**: with no champion the candidate is promoted on the checks alone;
3. **too little evidence**: fewer than ``min_holdout`` sessions decide nothing: the candidate *waits*;
4. **a class shown to fall**: rejected when, for a class with at least ``min_class_support``
   sessions, even the upper bound of its recall difference is below ``-max_recall_drop``
   (one session at support 5 moves recall by 0.2; a raw drop would reject on noise);
5. **shown worse**: rejected when the upper bound of the balanced-accuracy difference is below 0;
6. **non-inferior**: promoted when the lower bound is above ``-margin``;
7. otherwise the evidence does not suffice yet: the candidate waits as the tenant's *challenger*
   and is looked at again as the holdout grows (``LookSchedule``).

Bounds are one-sided at ``confidence`` (0.975: the two ends of a 95% interval). The error rates
this gives, measured by ``bench/promotion_rule.py`` and held by ``tests/test_promotion_rule.py``, are
in docs/lifecycle.md ("Promotion: the rule and its error rates"). Anchors that compare point estimates
only (TFX/TFMA change thresholds, MLflow's ``MetricThreshold(min_absolute_change=...)``) promote an
equally good candidate about half the time and a worse one often, whatever the holdout size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from legolas_ml.core.metrics import CHANCE_MARGIN, chance_threshold

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"
_EPS = 1e-9  # comparisons of rounded-looking floats (0.8 - 0.7 > 0.1 in binary) must not flip


@dataclass(frozen=True)
class PromotionPolicy:
    """The promotion rule's settings (module docstring).

    Args:
        margin: the non-inferiority margin on holdout balanced accuracy, in [0, 1) (default 0.05):
            the candidate is promoted once the lower bound of its difference to the champion is above
            ``-margin``. 0.05 is the largest margin for which a candidate worse by 0.05 is promoted
            in at most 5% of decisions (docs/lifecycle.md table).
        max_recall_drop: the recall a class may be *shown* to lose, in [0, 1] (default 0.10).
        min_class_support: holdout sessions a class needs for its recall to be judged, >= 1.
        min_holdout: holdout sessions needed to decide at all, >= 1; fewer: the candidate waits.
        chance_margin: the candidate's test balanced accuracy must exceed 1/C by this much.
        confidence: one-sided confidence of each bound when a candidate is first decided, in (0.5, 1).
        challenger_confidence: the same for every later look at a waiting challenger, in (0.5, 1):
            stricter, because repeated looks at the same growing evidence add up their error rates.
        challenger_growth: a challenger is looked at again once the holdout grew by this share, > 0.
    """

    margin: float = 0.05
    max_recall_drop: float = 0.10
    min_class_support: int = 5
    min_holdout: int = 30
    chance_margin: float = CHANCE_MARGIN
    confidence: float = 0.975
    challenger_confidence: float = 0.99
    challenger_growth: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.margin < 1:
            problems.append(f"margin must be in [0, 1), got {self.margin!r}")
        if not 0 <= self.max_recall_drop <= 1:
            problems.append(f"max_recall_drop must be in [0, 1], got {self.max_recall_drop!r}")
        for name in ("min_class_support", "min_holdout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.chance_margin < 1:
            problems.append(f"chance_margin must be in [0, 1), got {self.chance_margin!r}")
        for name in ("confidence", "challenger_confidence"):
            if not 0.5 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0.5, 1), got {getattr(self, name)!r}")
        if not self.challenger_growth > 0:
            problems.append(f"challenger_growth must be > 0, got {self.challenger_growth!r}")
        if problems:
            raise ValueError("invalid promotion policy: " + "; ".join(problems))


@dataclass
class Comparison:
    """Candidate vs champion on the same holdout sessions, with one-sided bounds at ``confidence``."""

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
    recall_ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # bounds of each class's recall difference
    disagreements: int = 0  # sessions where exactly one ensemble is right

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recall_ci"] = {c: list(v) for c, v in self.recall_ci.items()}
        return out


@dataclass
class PromotionDecision:
    """Promote, reject or wait, why, and the numbers behind it."""

    outcome: str  # PROMOTE | REJECT | WAIT
    reason: str
    comparison: Comparison | None = None
    recall_drops: dict[str, float] = field(default_factory=dict)  # classes shown to fall: their upper bound
    sessions_to_decide: int | None = None  # WAIT: holdout size at which today's difference would decide

    @property
    def promote(self) -> bool:
        return self.outcome == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["comparison"] = self.comparison.to_dict() if self.comparison else None
        return out


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def compare_on_holdout(
    y_true: Sequence[str],
    candidate_pred: Sequence[str],
    champion_pred: Sequence[str],
    confidence: float = 0.975,
) -> Comparison:
    """Balanced accuracy of both ensembles on the same sessions, with paired one-sided bounds.

    Args:
        y_true: the human labels of the holdout sessions.
        candidate_pred, champion_pred: each ensemble's predictions of the same sessions.
        confidence: each bound's one-sided confidence, in (0.5, 1).

    Raises:
        ValueError: if the three sequences differ in length or are empty, or ``confidence`` is out of range.
    """
    if not (len(y_true) == len(candidate_pred) == len(champion_pred)) or not len(y_true):
        raise ValueError(
            f"y_true, candidate_pred and champion_pred must be equally long and non-empty, got "
            f"{len(y_true)}, {len(candidate_pred)}, {len(champion_pred)}"
        )
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
    z = _z(confidence)
    t = np.asarray(y_true, dtype=object)
    a_right = np.asarray(candidate_pred, dtype=object) == t
    b_right = np.asarray(champion_pred, dtype=object) == t
    classes = sorted(set(y_true))
    support, cand_recall, champ_recall, recall_ci = {}, {}, {}, {}
    centre, variance = [], 0.0
    for c in classes:
        mask = t == c
        n = int(mask.sum())
        wins, losses = int((a_right & ~b_right & mask).sum()), int((~a_right & b_right & mask).sum())
        # The paired Wald interval with one more disagreement in the variance (Agresti-Min's half a
        # session in each discordant cell, without its pull of the centre toward 0: that pull made a
        # rare class's real drop look smaller and promoted too often).
        d = (wins - losses) / n
        var = max((wins + losses + 1) - (wins - losses) ** 2 / n, 0.0) / n**2
        support[c] = n
        cand_recall[c] = float(a_right[mask].mean())
        champ_recall[c] = float(b_right[mask].mean())
        # A difference of recalls lies in [-1, 1]: so do its bounds (a Wald bound on few sessions would not).
        recall_ci[c] = (max(-1.0, float(d - z * math.sqrt(var))), min(1.0, float(d + z * math.sqrt(var))))
        centre.append(d)
        variance += var
    k = len(classes)
    mid, half = float(np.mean(centre)), z * math.sqrt(variance) / k
    cand_ba, champ_ba = float(np.mean(list(cand_recall.values()))), float(np.mean(list(champ_recall.values())))
    return Comparison(
        n=len(t), per_class_support=support,
        candidate_balanced_accuracy=cand_ba, champion_balanced_accuracy=champ_ba, difference=cand_ba - champ_ba,
        ci_low=max(-1.0, mid - half), ci_high=min(1.0, mid + half), confidence=confidence,
        candidate_recall=cand_recall, champion_recall=champ_recall, recall_ci=recall_ci,
        disagreements=int((a_right != b_right).sum()),
    )


def _summary(c: Comparison) -> str:
    return (
        f"holdout balanced accuracy {c.candidate_balanced_accuracy:.4f} vs champion {c.champion_balanced_accuracy:.4f} "
        f"(difference {c.difference:+.4f}, one-sided {c.confidence:.1%} bounds [{c.ci_low:+.4f}, {c.ci_high:+.4f}], "
        f"n={c.n}, {c.disagreements} sessions where they disagree on being right)"
    )


def sessions_to_decide(c: Comparison, margin: float) -> int | None:
    """If today's difference held, the holdout size at which the lower bound clears ``-margin``.

    The bound's half-width shrinks like ``1/sqrt(n)``; ``None`` when the difference itself is at or
    below ``-margin`` (more sessions would show it worse, not non-inferior).
    """
    half = c.difference - c.ci_low
    gap = c.difference + margin
    if gap <= _EPS or half <= 0:
        return None
    return max(c.n + 1, math.ceil(c.n * (half / gap) ** 2))


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
        comparison: candidate vs champion on the holdout (``compare_on_holdout``); ``None`` when
            there is no champion or the holdout is empty.
        has_champion: whether a model is in service.
        policy: the thresholds.
    """
    chance = chance_threshold(n_classes, policy.chance_margin)
    if not candidate_test_balanced_accuracy > chance:
        return PromotionDecision(
            REJECT, f"test balanced accuracy {candidate_test_balanced_accuracy:.4f} is not above chance + margin {chance:.4f}", comparison
        )
    if not has_champion:
        return PromotionDecision(PROMOTE, "first model of the tenant: no champion to compare with, promoted on the checks", comparison)
    n = comparison.n if comparison else 0
    if comparison is None or n < policy.min_holdout:
        return PromotionDecision(
            WAIT,
            f"holdout too small to decide: {n} human-reviewed sessions, need >= {policy.min_holdout}; the candidate "
            f"waits as challenger and is decided as reviews land in the holdout (or `legolas promote` explicitly)",
            comparison, sessions_to_decide=policy.min_holdout,
        )
    c = comparison
    drops = {
        cls: round(c.recall_ci[cls][1], 4)
        for cls, support in c.per_class_support.items()
        if support >= policy.min_class_support and c.recall_ci[cls][1] < -policy.max_recall_drop - _EPS
    }
    if drops:
        listed = ", ".join(
            f"{cls} {c.champion_recall[cls]:.2f}->{c.candidate_recall[cls]:.2f} (n={c.per_class_support[cls]}, "
            f"change at most {drops[cls]:+.2f})" for cls in drops
        )
        return PromotionDecision(
            REJECT, f"recall shown to fall by more than {policy.max_recall_drop:g} for {listed}; {_summary(c)}", c, drops
        )
    if c.ci_high < -_EPS:
        return PromotionDecision(REJECT, f"shown worse than the champion (upper bound below 0): {_summary(c)}", c)
    if c.ci_low > -policy.margin + _EPS:
        return PromotionDecision(PROMOTE, f"shown no worse than the champion by more than {policy.margin:g}: {_summary(c)}", c)
    needed = sessions_to_decide(c, policy.margin)
    outlook = (
        f"at today's difference about {needed} holdout sessions would decide" if needed
        else "at today's difference more sessions would show it worse"
    )
    # Balanced accuracy weighs every class alike: a class with a handful of holdout sessions can hold
    # the bound wide on its own whatever the others show. Name it, so the operator knows what to review.
    widest = min(c.recall_ci, key=lambda k: (c.recall_ci[k][0] - c.recall_ci[k][1], k))
    low, high = c.recall_ci[widest]
    outlook += (f"; the widest class is {widest!r} ({c.per_class_support[widest]} holdout sessions, recall difference "
                f"within [{low:+.2f}, {high:+.2f}])")
    return PromotionDecision(
        WAIT,
        f"not yet decided: lower bound {c.ci_low:+.4f} is not above -{policy.margin:g} and the upper bound {c.ci_high:+.4f} "
        f"is not below 0; {outlook}; the candidate waits as challenger: {_summary(c)}",
        c, sessions_to_decide=needed,
    )


@dataclass(frozen=True)
class LookSchedule:
    """When a waiting challenger is looked at again: once the holdout grew by ``growth`` since its last look.

    Geometric spacing bounds the number of looks (30 -> 450 sessions is 13 looks at 25%), and with
    them the error that repeated looks add up (docs/lifecycle.md: the sequential rates).
    """

    growth: float = 0.25

    def next_look(self, last_n: int, min_holdout: int) -> int:
        """The holdout size of the next look after one at ``last_n`` sessions."""
        if last_n < min_holdout:
            return min_holdout
        return max(last_n + 1, math.ceil(last_n * (1 + self.growth)))
