"""Synthetic paired predictions with known truth: how often does the promotion rule promote?

Used by ``tests/test_promotion_rule.py`` (the rule's error rates, in seconds) and
``bench/promotion_rule.py`` (docs/lifecycle.md's table). A draw is a holdout of ``n`` sessions over
``n_classes`` balanced classes; the champion is right on each session with probability
``champion_accuracy``; the candidate is right with that probability plus ``delta`` (so its true
balanced accuracy differs by ``delta``), and the two disagree on being right on a share
``disagreement`` of sessions (how different the two ensembles are: a retraining of the same
model on a little more data disagrees on few). A wrong prediction is a random other class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from legolas_ml.lifecycle.promotion import (
    PROMOTE,
    REJECT,
    LookSchedule,
    PromotionPolicy,
    compare_on_holdout,
    decide_promotion,
)


@dataclass(frozen=True)
class Scenario:
    """The truth behind a draw. ``disagreement`` must be at least ``|delta|``.

    With ``class_shares`` the classes are unbalanced, and with ``drop_class`` the whole difference sits
    in that one class (its recall moves by ``delta * n_classes``, so balanced accuracy moves by
    ``delta``): the hardest case for a rule, a rare class that falls.
    """

    delta: float
    disagreement: float = 0.10
    champion_accuracy: float = 0.85
    n_classes: int = 5
    class_shares: tuple[float, ...] | None = None
    drop_class: int | None = None

    def __post_init__(self) -> None:
        for delta, d in {self._class_cells(c) for c in range(self.n_classes)}:
            x, y = (d - delta) / 2, (d + delta) / 2
            if x < 0 or y < 0 or x > self.champion_accuracy or y > 1 - self.champion_accuracy:
                raise ValueError(
                    f"disagreement must be >= |delta| and fit the champion's accuracy, got disagreement "
                    f"{self.disagreement!r}, delta {delta!r}, champion_accuracy {self.champion_accuracy!r}"
                )
        if self.class_shares is not None and (len(self.class_shares) != self.n_classes or abs(sum(self.class_shares) - 1) > 1e-9):
            raise ValueError(f"class_shares must be {self.n_classes} shares summing to 1, got {self.class_shares!r}")

    def _class_cells(self, c: int) -> tuple[float, float]:
        """(recall difference, disagreement) of class ``c``."""
        if self.drop_class is None:
            return self.delta, self.disagreement
        if c != self.drop_class:
            return 0.0, self.disagreement
        delta = self.delta * self.n_classes
        return delta, max(self.disagreement, abs(delta))

    def draw(self, n: int, rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
        """``(y_true, candidate_pred, champion_pred)`` for ``n`` sessions."""
        p0 = self.champion_accuracy
        truth = rng.choice(self.n_classes, n, p=self.class_shares) if self.class_shares else rng.integers(0, self.n_classes, n)
        cells = np.array([self._class_cells(c) for c in range(self.n_classes)])[truth]
        # x: champion right, candidate wrong; y: champion wrong, candidate right. y - x = delta, x + y = d.
        x, y = (cells[:, 1] - cells[:, 0]) / 2, (cells[:, 1] + cells[:, 0]) / 2
        champion_right = rng.random(n) < p0
        flip = rng.random(n) < np.where(champion_right, x / p0, y / (1 - p0))
        candidate_right = champion_right ^ flip
        labels = np.array([f"class_{k}" for k in range(self.n_classes)], dtype=object)

        def predict(right: np.ndarray) -> list[str]:
            wrong = (truth + rng.integers(1, self.n_classes, n)) % self.n_classes
            return labels[np.where(right, truth, wrong)].tolist()

        return labels[truth].tolist(), predict(candidate_right), predict(champion_right)


def rule_decision(policy: PromotionPolicy) -> Callable[[list[str], list[str], list[str], float], str]:
    """The rule under test as ``(y_true, candidate_pred, champion_pred, confidence) -> outcome``."""

    def decide(y_true, candidate_pred, champion_pred, confidence):
        comparison = compare_on_holdout(y_true, candidate_pred, champion_pred, confidence)
        return decide_promotion(1.0, len(set(y_true)), comparison, True, policy).outcome

    return decide


def promotion_rate(
    scenario: Scenario, n: int, draws: int, policy: PromotionPolicy = PromotionPolicy(), seed: int = 0, rule=None,
) -> float:
    """Share of ``draws`` holdouts of ``n`` sessions on which one decision promotes the candidate."""
    rule = rule or rule_decision(policy)
    rng = np.random.default_rng(seed)
    return sum(rule(*scenario.draw(n, rng), policy.confidence) == PROMOTE for _ in range(draws)) / draws


def sequential_rates(
    scenario: Scenario, max_n: int, draws: int, policy: PromotionPolicy = PromotionPolicy(), seed: int = 0,
) -> tuple[float, float, float]:
    """A challenger looked at as its holdout grows (``LookSchedule``) up to ``max_n`` sessions:
    the shares of draws that end promoted, rejected, and still waiting."""
    rule = rule_decision(policy)
    schedule = LookSchedule(policy.challenger_growth)
    rng = np.random.default_rng(seed)
    promoted = rejected = 0
    for _ in range(draws):
        y_true, cand, champ = scenario.draw(max_n, rng)
        n, first = policy.min_holdout, True
        while n <= max_n:
            outcome = rule(y_true[:n], cand[:n], champ[:n], policy.confidence if first else policy.challenger_confidence)
            if outcome == PROMOTE:
                promoted += 1
                break
            if outcome == REJECT:
                rejected += 1
                break
            n, first = schedule.next_look(n, policy.min_holdout), False
    return promoted / draws, rejected / draws, 1 - (promoted + rejected) / draws
