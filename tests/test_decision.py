"""One decision per candidate (``legolas_ml.lifecycle.decision``): which sessions are compared, when an
earlier decision stands, the challenger's looks, and what is recorded. Fake ensembles predict from a
table, so every case is exact and takes milliseconds."""

from datetime import datetime

import pandas as pd
import pytest
import torch

from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.decision import Holdout, decide_and_record, look_at_challenger
from legolas_ml.lifecycle.holdout import in_holdout
from legolas_ml.lifecycle.promotion import PROMOTE, REJECT, WAIT, PromotionPolicy
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.core.review_cursor import ReviewCursor
from legolas_ml.training.checkpoint import read_sidecar, save_checkpoint

TENANT = "acme"
LABELS = ["a", "b", "c"]


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(TenantArtifacts(tmp_path / "output", TENANT))


def _version(registry, name, share=0.2, cursor=None):
    path = registry.artifacts.root / "folds" / name / "best_model_text_m_fold0.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 0, "metrics": {}, "labels": LABELS, "model_config": {}, "training_config": {}})
    manifest = {
        "version": name, "checkpoints": [str(path)], "sha256": [read_sidecar(path)["sha256"]], "labels": LABELS,
        "test_metrics": {"balanced_accuracy": 0.9}, "holdout": {"share": share}, "reviews_cursor": cursor,
    }
    registry.write_candidate(manifest)
    return manifest


def _holdout(n, share=0.2, cursor=None):
    """``n`` human-reviewed sessions of the tenant's holdout bucket at ``share``."""
    ids, k = [], 0
    while len(ids) < n:
        if in_holdout(TENANT, f"s{k}", share):
            ids.append(f"s{k}")
        k += 1
    frame = pd.DataFrame({"session_id": ids, "text": ids, "label": [LABELS[i % 3] for i in range(n)]})
    return Holdout(frame, TENANT, share, cursor)


def predictor(wrong: dict[str, set[str]]):
    """Each version is right on every session except those in ``wrong[version]``."""
    truth: dict[str, str] = {}

    def predict(checkpoints, texts):
        version = checkpoints[0].split("/folds/")[1].split("/")[0]
        return [("x" if t in wrong.get(version, set()) else truth[t]) for t in texts]

    predict.truth = truth
    return predict


def _predict_for(holdout: Holdout, wrong):
    predict = predictor(wrong)
    predict.truth.update(dict(zip(holdout.frame["session_id"], holdout.frame["label"])))
    return predict


def _cursor(minute):
    return ReviewCursor(datetime(2026, 1, 1, 0, minute), f"r{minute}").serialize()


def test_a_grown_holdout_decides_the_same_version_afresh(registry):
    # Issue #26 defect 7: a version once rejected as "holdout too small" kept that stale decision.
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = _version(registry, "cand")
    small = _holdout(10, cursor=_cursor(1))
    first = decide_and_record(registry, cand, small, PromotionPolicy(), _predict_for(small, {}), actor="t")
    assert first.outcome == WAIT and "holdout too small" in first.reason and registry.challenger()["version"] == "cand"
    n = len(registry.history())
    again = decide_and_record(registry, cand, small, PromotionPolicy(), _predict_for(small, {}), actor="t")
    assert again.outcome == WAIT and again.standing and len(registry.history()) == n  # not due another look: nothing recorded
    grown = _holdout(150, cursor=_cursor(2))
    decided = decide_and_record(registry, cand, grown, PromotionPolicy(), _predict_for(grown, {}), actor="t")
    assert decided.outcome == PROMOTE and not decided.standing and registry.champion_version() == "cand"
    assert registry.history()[-1]["holdout_reviews_cursor"] == _cursor(2)
    # The same evidence again: the recorded decision stands and nothing new is recorded.
    n = len(registry.history())
    assert decide_and_record(registry, cand, grown, PromotionPolicy(), _predict_for(grown, {}), actor="t").standing
    assert len(registry.history()) == n


def test_a_rolled_back_version_is_not_promoted_again_by_a_rerun(registry):
    # Issue #26 defect 1: the "already decided" branch re-reported "promoted" after a rollback.
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = _version(registry, "cand")
    holdout = _holdout(80)
    assert decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t").promoted
    registry.rollback(actor="operator", reason="bad in production")
    rerun = decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t")
    assert rerun.outcome == REJECT and "rolled back" in rerun.reason and registry.champion_version() == "champ"


def test_a_version_replaced_by_an_operator_is_not_reported_promoted_by_a_rerun(registry):
    # Review of #26: after `legolas promote` of another version, a re-run said "promoted" with the old model in service.
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = _version(registry, "cand")
    holdout = _holdout(150)
    assert decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t").promoted
    registry.promote("champ", actor="operator", reason="back to the old one")
    rerun = decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t")
    assert rerun.outcome == REJECT and "replaced by champ" in rerun.reason and registry.champion_version() == "champ"


def test_a_raised_share_leaves_the_champions_training_sessions_out(registry):
    # Issue #26 defect 4: raising holdout_share moved sessions the champion trained on into the holdout.
    registry.promote(_version(registry, "champ", share=0.2)["version"], actor="t", reason="first")
    cand = _version(registry, "cand", share=0.3)
    holdout = _holdout(120, share=0.3)
    trained_on = {sid for sid in holdout.frame["session_id"] if not in_holdout(TENANT, sid, 0.2)}
    assert trained_on  # the raise moved some in
    # The champion is right on the sessions it trained on only: compared there, it would look better.
    champion_wrong = set(holdout.frame["session_id"]) - trained_on
    decision = decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {"champ": champion_wrong}), actor="t")
    assert decision.excluded_trained_on == len(trained_on) and decision.compared_n == 120 - len(trained_on)
    assert decision.compared_share == 0.2 and "trained on at share 0.2" in decision.reason
    assert decision.champion_holdout_balanced_accuracy == 0.0


def test_a_retraining_that_reproduces_the_champion_consumes_its_reviews(registry):
    # Issue #26 defect 7: new reviews all in the holdout -> same version -> nothing recorded, never consumed.
    champ = _version(registry, "champ", cursor=_cursor(1))
    registry.promote("champ", actor="t", reason="first")
    holdout = _holdout(10, cursor=_cursor(5))
    decision = decide_and_record(registry, champ, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t")
    assert decision.outcome == "keep" and registry.history()[-1]["action"] == "kept"
    assert registry.consumed_reviews() == ReviewCursor.parse(_cursor(5))
    n = len(registry.history())
    decide_and_record(registry, champ, holdout, PromotionPolicy(), _predict_for(holdout, {}), actor="t")
    assert len(registry.history()) == n  # nothing newer read: nothing recorded


def test_the_challenger_is_looked_at_as_the_holdout_grows_without_retraining(registry):
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = _version(registry, "cand")
    policy = PromotionPolicy()
    start = _holdout(40)
    wrong = {"cand": set(start.frame["session_id"][:3]), "champ": set(start.frame["session_id"][3:6])}
    waiting = decide_and_record(registry, cand, start, policy, _predict_for(start, wrong), actor="t")
    assert waiting.outcome == WAIT and waiting.next_look_at == 50
    # Not grown enough: nothing recorded.
    n = len(registry.history())
    early = look_at_challenger(registry, _holdout(45), policy, _predict_for(_holdout(45), wrong), actor="t")
    assert early.standing and early.outcome == WAIT and "next look at 50" in early.reason and len(registry.history()) == n
    # Grown, and the new sessions show the champion worse: promoted with no retraining.
    big = _holdout(400)
    more_wrong = {**wrong, "champ": wrong["champ"] | set(big.frame["session_id"][40:100])}
    decided = look_at_challenger(registry, big, policy, _predict_for(big, more_wrong), actor="challenger job")
    assert decided.outcome == PROMOTE and registry.champion_version() == "cand" and registry.challenger() is None
    assert decided.promotion.comparison.confidence == policy.challenger_confidence  # a later look is stricter
    assert look_at_challenger(registry, big, policy, _predict_for(big, {}), actor="t") is None


def test_asset_checks_record_nothing():
    """Issue #26: `ensemble_above_chance` wrote a rejection into the registry; a check only reports now
    (the promotion rule applies the same chance threshold and records). No check can reach the registry."""
    from legolas_assets.checks import build_checks
    from legolas_ml.core.metrics import CHANCE_MARGIN
    from legolas_assets.tenancy import TenantPlan

    for check in build_checks(TenantPlan("demo")):
        assert "lifecycle" not in check.required_resource_keys, check.check_specs
    assert CHANCE_MARGIN == PromotionPolicy().chance_margin  # one threshold, not two


def test_the_random_part_of_the_holdout_is_reported_apart(registry):
    # Issue #28: the holdout is mostly the queue's hard cases; the random slice estimates service accuracy.
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = _version(registry, "cand")
    base = _holdout(60)
    ids = base.frame["session_id"].tolist()
    holdout = Holdout(base.frame, TENANT, base.share, random_ids=frozenset(ids[:10]))
    # The champion is wrong on 4 of the 10 random sessions and on none of the rest; the candidate on 1 of the rest.
    decision = decide_and_record(registry, cand, holdout, PromotionPolicy(), _predict_for(holdout, {"champ": set(ids[:4]), "cand": {ids[20]}}), actor="t")
    assert decision.random_part == {
        "n": 10, "candidate_accuracy": 1.0, "champion_accuracy": 0.6,
        "rest_n": 50, "candidate_accuracy_rest": 0.98, "champion_accuracy_rest": 1.0,
    }
    assert registry.history()[-1]["decision"]["random_part"]["n"] == 10
    # Without marks, the whole holdout is "the rest".
    plain = decide_and_record(registry, _version(registry, "other"), base, PromotionPolicy(), _predict_for(base, {}), actor="t")
    assert plain.random_part["n"] == 0 and plain.random_part["rest_n"] == 60


def test_the_candidates_baseline_is_scored_on_the_same_holdout_sessions(registry, tmp_path):
    # Issue #28: the TF-IDF + LR baseline's holdout number beside the ensemble's, on the compared sessions.
    from legolas_ml.evaluation.baseline import baseline_holdout_metrics, evaluate_baseline
    from legolas_ml.training.cross_validation import plan_splits

    from synthetic import separable_frame, tiny_config

    train = separable_frame(n_per_class=20, classes=("billing", "shipping", "account"), seed=3)
    result = evaluate_baseline(train, plan_splits(train, tiny_config(n_folds=3)), tmp_path / "baseline.joblib")
    registry.promote(_version(registry, "champ")["version"], actor="t", reason="first")
    cand = {**_version(registry, "cand"), "baseline": result.to_dict()}
    holdout = _holdout(40)
    words = separable_frame(n_per_class=40, seed=9)
    frame = holdout.frame.assign(text=words["text"].iloc[:40].tolist(), label=words["label"].iloc[:40].tolist())
    holdout = Holdout(frame, TENANT, holdout.share)
    predict = predictor({})
    predict.truth.update(dict(zip(frame["text"], frame["label"])))
    decision = decide_and_record(registry, cand, holdout, PromotionPolicy(), predict, actor="t")
    expected = baseline_holdout_metrics(result.path, frame["text"].tolist(), frame["label"].tolist())["balanced_accuracy"]
    assert decision.baseline_holdout_balanced_accuracy == expected is not None
    # A version from before baselines (no "baseline" in its manifest): nothing to show, nothing fails.
    assert decide_and_record(registry, _version(registry, "old"), holdout, PromotionPolicy(), predict, actor="t").baseline_holdout_balanced_accuracy is None
