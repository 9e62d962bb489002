"""One decision per candidate: from the candidate, the champion, the holdout and the policy to what
happens to the candidate, with its reason and numbers; then recorded in the registry.

The ``promoted_ensemble`` asset and the challenger job only read their inputs and call
``decide_and_record``; the rule itself is ``promotion.decide_promotion``. What this module adds:

* **which sessions are compared**: the holdout under the *smallest* share any of the compared
  versions was trained with. Holdout membership is a hash below the share, so raising the share
  moves sessions the champion trained on into the holdout; they are left out of the comparison,
  and the metadata says how many (``excluded_trained_on``);
* **when an earlier decision stands**: a re-run of the same version against the same champion on
  the same holdout sessions keeps the recorded decision (and writes nothing); a version taken out
  of service by a rollback is never re-promoted by a re-run (an operator can, with ``legolas promote``);
  any other change (the champion, the holdout grew) decides afresh and records it, so reviews that
  only landed in the holdout are consumed too;
* **a challenger**: a candidate the holdout cannot decide yet waits (``registry.wait_as_challenger``)
  and is looked at again as the holdout grows (``LookSchedule``), at ``challenger_confidence``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from legolas_ml.core.metrics import classification_metrics
from legolas_ml.lifecycle.holdout import in_holdout
from legolas_ml.lifecycle.promotion import (
    PROMOTE,
    REJECT,
    WAIT,
    LookSchedule,
    PromotionDecision,
    PromotionPolicy,
    compare_on_holdout,
    decide_promotion,
)
from legolas_ml.lifecycle.registry import CHALLENGER, PROMOTED, ModelRegistry
from legolas_ml.core.review_cursor import ReviewCursor

KEEP = "keep"
#: ``(checkpoints, texts) -> predicted labels``: how an ensemble predicts the holdout.
Predict = Callable[[Sequence[str], list[str]], list[str]]


@dataclass(frozen=True)
class Holdout:
    """The tenant's evaluation holdout at decision time.

    Attributes:
        frame: human-reviewed sessions in the holdout bucket (columns session_id, text, label).
        tenant: whose holdout (membership is hashed per tenant).
        share: the share it was drawn with.
        reviews_cursor: the newest review read to build it (serialized ``ReviewCursor``): consumed
            by a decision on it.
        random_ids: sessions a reviewer was sent as random samples of the unreviewed documents
            (the queue's random slice), not because the audit doubted them: the part of the holdout
            that looks like the documents in service, reported apart (``Decision.random_part``).
    """

    frame: pd.DataFrame
    tenant: str
    share: float
    reviews_cursor: str | None = None
    random_ids: frozenset[str] = frozenset()

    def fingerprint(self, share: float | None = None) -> str:
        """Hash of the (session, label) pairs compared at ``share`` (default: all)."""
        frame = self.restricted(share)
        digest = hashlib.sha256()
        for sid, label in sorted(zip(frame["session_id"].astype(str), frame["label"].astype(str))):
            digest.update(f"{sid}\x1f{label}\x1e".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:16]

    def restricted(self, share: float | None) -> pd.DataFrame:
        """The sessions that are in the holdout at ``share`` too (never trained on by a version trained with it)."""
        if share is None or share >= self.share or self.frame.empty:
            return self.frame
        keep = self.frame["session_id"].astype(str).map(lambda sid: in_holdout(self.tenant, sid, share))
        return self.frame[keep.to_numpy(dtype=bool)]


@dataclass
class Decision:
    """What happens to the candidate, why, and everything the UI shows about it."""

    version: str
    outcome: str  # PROMOTE | REJECT | WAIT | KEEP (the candidate is the champion itself)
    reason: str
    standing: bool = False  # an earlier recorded decision stands: nothing new was recorded
    promotion: PromotionDecision | None = None
    compared_n: int = 0
    excluded_trained_on: int = 0  # holdout sessions left out because a compared version trained on them
    compared_share: float | None = None
    holdout_fingerprint: str | None = None
    candidate_holdout_balanced_accuracy: float | None = None
    champion_holdout_balanced_accuracy: float | None = None
    champion_version: str | None = None
    next_look_at: int | None = None  # WAIT: the holdout size at which it is looked at again
    # The compared sessions that came from the queue's random slice: an estimate of service accuracy
    # (the rest are mostly the audit's hard cases). Reported, not decided on: it is small.
    random_part: dict[str, Any] | None = None
    # The candidate's TF-IDF + LR baseline on the same sessions: the bar beside the ensemble's number.
    baseline_holdout_balanced_accuracy: float | None = None
    record: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def promoted(self) -> bool:
        return self.outcome == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["promotion"] = self.promotion.to_dict() if self.promotion else None
        out.pop("record")
        return out


def _share(manifest: dict | None) -> float | None:
    value = ((manifest or {}).get("holdout") or {}).get("share")
    return float(value) if isinstance(value, (int, float)) else None


def _standing(registry: ModelRegistry, version: str, champion: str | None, fingerprint: str) -> tuple[str, str, dict] | None:
    """An earlier decision on the same version, champion and holdout sessions, if one stands."""
    out = registry.taken_out_of_service(version)
    if out is not None:
        how = "rolled back" if out["action"] == "rolled_back" else f"replaced by {out['version']}"
        return (REJECT, f"{how} at {out['at']} by {out['actor']} ({out['reason']}); a re-run does not put it back in "
                f"service (`legolas promote --version {version}` does)", out)
    earlier = registry.decision_for(version)
    if earlier is None or earlier.get("action") == CHALLENGER:
        return None
    if earlier.get("previous_champion") == champion and earlier.get("holdout_fingerprint") == fingerprint:
        outcome = PROMOTE if earlier["action"] == PROMOTED else REJECT
        return outcome, f"decided at {earlier['at']} on the same champion and holdout: {earlier['reason']}", earlier
    return None


def decide(
    candidate: dict,
    champion: dict | None,
    holdout: Holdout,
    policy: PromotionPolicy,
    predict: Predict,
    *,
    first_look: bool = True,
) -> Decision:
    """Decide on ``candidate`` (a version manifest) against ``champion`` (the manifest in service, or
    ``None``) on ``holdout``; pure: nothing is recorded (``decide_and_record`` records).

    Args:
        candidate: the candidate's manifest (``version``, ``checkpoints``, ``labels``, ``test_metrics``, ``holdout``).
        champion: the champion's manifest, ``None`` for a first training.
        holdout: the tenant's holdout now.
        policy: the promotion rule's settings.
        predict: how an ensemble predicts texts (``FoldEnsemble`` in production, anything in tests).
        first_look: ``False`` for a later look at a waiting challenger (``challenger_confidence``).
    """
    version = candidate["version"]
    shares = [s for s in (holdout.share, _share(candidate), _share(champion)) if s is not None]
    share = min(shares)
    compared = holdout.restricted(share)
    decision = Decision(
        version=version, outcome=WAIT, reason="", compared_n=len(compared), excluded_trained_on=len(holdout.frame) - len(compared),
        compared_share=share, holdout_fingerprint=holdout.fingerprint(share),
        champion_version=(champion or {}).get("version"),
    )
    comparison = None
    if len(compared):
        texts, y_true = compared["text"].tolist(), compared["label"].tolist()
        candidate_pred = predict(candidate["checkpoints"], texts)
        decision.candidate_holdout_balanced_accuracy = classification_metrics(y_true, candidate_pred, classes=sorted(set(y_true)))["balanced_accuracy"]
        decision.baseline_holdout_balanced_accuracy = _baseline_on(candidate, texts, y_true)
        if champion is not None:
            champion_pred = predict(champion["checkpoints"], texts)
            confidence = policy.confidence if first_look else policy.challenger_confidence
            comparison = compare_on_holdout(y_true, candidate_pred, champion_pred, confidence)
            decision.champion_holdout_balanced_accuracy = comparison.champion_balanced_accuracy
        else:
            champion_pred = None
        decision.random_part = random_part(compared["session_id"].astype(str).tolist(), y_true, candidate_pred, champion_pred, holdout.random_ids)
    promotion = decide_promotion(
        candidate["test_metrics"]["balanced_accuracy"], len(candidate["labels"]), comparison, champion is not None, policy
    )
    decision.promotion, decision.outcome, decision.reason = promotion, promotion.outcome, promotion.reason
    if decision.excluded_trained_on:
        decision.reason += (
            f" (compared on {decision.compared_n} of {len(holdout.frame)} holdout sessions: {decision.excluded_trained_on} "
            f"entered the holdout when its share rose to {holdout.share:g} and were trained on at share {share:g})"
        )
    if promotion.outcome == WAIT:
        decision.next_look_at = LookSchedule(policy.challenger_growth).next_look(decision.compared_n, policy.min_holdout)
    return decision


def _baseline_on(candidate: dict, texts: list[str], y_true: list[str]) -> float | None:
    """The candidate's baseline's balanced accuracy on the compared sessions; ``None`` for a version
    trained before baselines existed (it decides nothing, so a missing file never blocks a decision)."""
    from legolas_ml.evaluation.baseline import baseline_holdout_metrics

    baseline = candidate.get("baseline") or {}
    if not baseline.get("path"):
        return None
    try:
        return baseline_holdout_metrics(baseline["path"], texts, y_true, sha256=baseline.get("sha256"))["balanced_accuracy"]
    except Exception:  # noqa: BLE001 - a pickle from another scikit-learn can raise anything; this number decides nothing
        return None


def random_part(
    session_ids: Sequence[str], y_true: Sequence[str], candidate_pred: Sequence[str], champion_pred: Sequence[str] | None, random_ids: frozenset[str]
) -> dict[str, Any]:
    """Accuracy of the candidate (and champion) on the compared sessions that were random samples.

    Example:
        >>> random_part(["a", "b", "c"], ["x", "y", "x"], ["x", "x", "x"], ["x", "y", "y"], frozenset({"a", "b"}))
        {'n': 2, 'candidate_accuracy': 0.5, 'champion_accuracy': 1.0, 'rest_n': 1, 'candidate_accuracy_rest': 1.0, 'champion_accuracy_rest': 0.0}
    """
    def accuracy(pred: Sequence[str] | None, rows: list[int]) -> float | None:
        if pred is None or not rows:
            return None
        return round(sum(pred[i] == y_true[i] for i in rows) / len(rows), 4)

    inside = [i for i, sid in enumerate(session_ids) if sid in random_ids]
    rest = [i for i, sid in enumerate(session_ids) if sid not in random_ids]
    return {
        "n": len(inside), "candidate_accuracy": accuracy(candidate_pred, inside), "champion_accuracy": accuracy(champion_pred, inside),
        "rest_n": len(rest), "candidate_accuracy_rest": accuracy(candidate_pred, rest), "champion_accuracy_rest": accuracy(champion_pred, rest),
    }


def decide_and_record(
    registry: ModelRegistry,
    candidate: dict,
    holdout: Holdout,
    policy: PromotionPolicy,
    predict: Predict,
    *,
    actor: str,
    run_id: str | None = None,
) -> Decision:
    """Decide on ``candidate`` against the tenant's champion and record it (promoted, rejected or
    waiting as challenger), unless an earlier decision on the same evidence stands.

    Raises:
        ChampionUnavailableError: the champion's pointer, manifest or checkpoints are damaged.
    """
    champion = registry.champion()
    version = candidate["version"]
    if champion is not None and champion["version"] == version:
        decision = Decision(version, KEEP, "the candidate is already the champion (same data, split and config)", standing=True,
                            champion_version=version)
        seen = registry.read_reviews()
        read = ReviewCursor.parse(holdout.reviews_cursor)
        if read is not None and (seen is None or read > seen):
            # New reviews all landed in the holdout: the training data is the champion's own. Recorded,
            # so those reviews are consumed instead of re-triggering the same training for ever.
            decision.standing = False
            decision.record = registry.keep_champion(
                actor=actor, reason="the training data is the champion's own (new reviews landed in the holdout only)",
                reviews_cursor=read.serialize(), run_id=run_id, holdout_n=len(holdout.frame),
            )
        return decision
    waiting = registry.challenger()
    first_look = waiting is None or waiting["version"] != version
    share = min(s for s in (holdout.share, _share(candidate), _share(champion)) if s is not None)
    if not first_look:
        # The waiting challenger itself (a re-run of the same training, or its job): looked at on the
        # schedule only, so the error rates of repeated looks stay the ones stated.
        n, due = len(holdout.restricted(share)), next_look(waiting, policy)
        if n < due:
            return Decision(version, WAIT, f"challenger {version} waits: {n} holdout sessions, next look at {due}", standing=True,
                            compared_n=n, next_look_at=due, champion_version=(champion or {}).get("version"))
    standing = _standing(registry, version, (champion or {}).get("version"), holdout.fingerprint(share))
    if standing is not None:
        outcome, reason, record = standing
        return Decision(version, outcome, reason, standing=True, champion_version=(champion or {}).get("version"), record=record)
    decision = decide(candidate, champion, holdout, policy, predict, first_look=first_look)
    details = {
        "decision": decision.to_dict(),
        "run_id": run_id,
        "holdout_fingerprint": decision.holdout_fingerprint,
        "holdout_n": decision.compared_n,
        "holdout_balanced_accuracy": decision.candidate_holdout_balanced_accuracy,
        "champion_holdout_balanced_accuracy": decision.champion_holdout_balanced_accuracy,
    }
    if holdout.reviews_cursor:
        # Kept apart from the training's own cursor: holdout reviews read by a look at a challenger
        # say nothing about reviews a retraining would add (the sensor counts those by bucket).
        details["holdout_reviews_cursor"] = holdout.reviews_cursor
    if decision.outcome == PROMOTE:
        decision.record = registry.promote(version, actor=actor, reason=decision.reason, **details)
    elif decision.outcome == REJECT:
        decision.record = registry.reject(version, actor=actor, reason=decision.reason, **details)
    else:
        details.pop("holdout_n")
        # The size the rule judged the evidence at: 0 when the holdout was too small to judge at all,
        # so a later look (a lower min_holdout, or more sessions) is due at once.
        judged = decision.compared_n if decision.compared_n >= policy.min_holdout else 0
        decision.record = registry.wait_as_challenger(
            version, actor=actor, reason=decision.reason, holdout_n=decision.compared_n, judged_n=judged,
            next_look_at=decision.next_look_at, **details
        )
    return decision


def look_at_challenger(
    registry: ModelRegistry,
    holdout: Holdout,
    policy: PromotionPolicy,
    predict: Predict,
    *,
    actor: str,
    run_id: str | None = None,
) -> Decision | None:
    """Look again at the tenant's waiting challenger on today's holdout, without retraining.

    Returns ``None`` when no challenger waits; a standing ``WAIT`` decision (nothing recorded) while
    the holdout has not reached the challenger's next look (``LookSchedule``); else the decision,
    recorded: promoted, rejected, or still waiting with its next look.
    """
    waiting = registry.challenger()
    if waiting is None:
        return None
    # decide_and_record keeps the schedule: before the next look it records nothing.
    return decide_and_record(registry, registry.manifest(waiting["version"]), holdout, policy, predict, actor=actor, run_id=run_id)


def next_look(challenger: dict, policy: PromotionPolicy) -> int:
    """The holdout size at which a waiting challenger (``registry.challenger()``) is looked at again,
    from today's policy (a changed ``min_holdout`` or growth applies at once)."""
    record = challenger.get("record") or {}
    judged = record.get("judged_n", challenger.get("holdout_n"))
    return LookSchedule(policy.challenger_growth).next_look(int(judged or 0), policy.min_holdout)


def holdout_from_store(store, tenant: str, share: float, *, dataset_mode: str, max_text_chars: int) -> Holdout:
    """The tenant's holdout now, as ``labeled_dataset`` builds it (the quality gate, then the hash split)."""
    from legolas_ml.data.quality_gate import GateSettings, gate_from_store
    from legolas_ml.lifecycle.holdout import split_holdout

    result = gate_from_store(store, True, dataset_mode, GateSettings(max_text_chars))
    split = split_holdout(result.dataset, tenant, share)
    return Holdout(split.holdout, tenant, share, result.reviews_cursor, store.random_sample_ids())


def ensemble_predictor(device: str, precision: str) -> Predict:
    """``predict`` for ``decide``: the fold ensemble's argmax, each ensemble loaded once per call."""
    from legolas_ml.evaluation.ensemble import FoldEnsemble

    def predict(checkpoints: Sequence[str], texts: list[str]) -> list[str]:
        return FoldEnsemble(list(checkpoints), device=device, precision=precision).predict(texts)

    return predict
