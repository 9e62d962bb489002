"""The TF-IDF + logistic regression baseline: trained per fold of the real split, scored like the ensemble,
saved for the holdout, and the warning check when the ensemble does not beat it."""

import json

import numpy as np
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from dagster_helpers import ALL_CHECKS, ASSETS, key, resources
from synthetic import separable_frame, tiny_config
from legolas_ml.evaluation.baseline import (
    BaselineResult,
    baseline_holdout_metrics,
    baseline_predict,
    baseline_predict_proba,
    compare,
    evaluate_baseline,
    load_baseline,
)
from legolas_ml.core.metrics import classification_metrics, mean_std
from legolas_ml.training.cross_validation import plan_splits


def _frame():
    """Topic texts, each with a word of its own (``marker<session>``) to trace which sessions a fold saw.

    One class is half the size of the others and every 6th label is flipped: the folds make mistakes
    and their balanced accuracy differs from their accuracy, so the test tells the two apart.
    """
    df = separable_frame(n_per_class=20, seed=1)
    df = df[~df["session_id"].isin([f"account-{i:04d}" for i in range(10, 20)])].reset_index(drop=True)
    flip = {"billing": "shipping", "shipping": "account", "account": "billing"}
    df.loc[df.index % 6 == 5, "label"] = df.loc[df.index % 6 == 5, "label"].map(flip)
    df["text"] = df["text"] + " marker" + df["session_id"].str.replace("-", "")
    df["source"] = ["human" if i % 3 == 0 else "llm" for i in range(len(df))]
    return df


def _marker(session_id: str) -> str:
    return "marker" + session_id.replace("-", "")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    df = _frame()
    plan = plan_splits(df, tiny_config(n_folds=3))
    result = evaluate_baseline(df, plan, tmp_path_factory.mktemp("baseline") / "baseline.joblib")
    return df, plan, result


def test_each_fold_model_learns_from_its_training_sessions_only(evaluated):
    df, plan, result = evaluated
    model = load_baseline(result.path, result.sha256)
    assert len(model.fold_models) == plan.n_folds == result.n_folds == 3
    for fold, pipeline in zip(plan.folds, model.fold_models):
        vocabulary = set(pipeline.named_steps["tfidf"].vocabulary_)
        seen = {w for w in vocabulary if w.startswith("marker")}
        # Exactly the training sessions' own words: no validation or test session leaked into the fold.
        assert seen == {_marker(s) for s in fold.train_ids}


def test_cv_numbers_are_the_folds_validation_scores(evaluated):
    df, plan, result = evaluated
    model = load_baseline(result.path)
    by_id = df.set_index("session_id")
    scores = []
    for fold, pipeline in zip(plan.folds, model.fold_models):
        val = by_id.loc[fold.val_ids]
        scores.append(classification_metrics(val["label"].tolist(), pipeline.predict(val["text"].tolist()).tolist(), classes=model.labels))
    assert [f["n"] for f in result.per_fold] == [len(f.val_ids) for f in plan.folds]
    for metric in ("balanced_accuracy", "accuracy"):
        mean, std = mean_std([s[metric] for s in scores])
        assert result.cv[metric] == pytest.approx({"mean": mean, "std": std})
    assert any(s["balanced_accuracy"] != s["accuracy"] for s in scores)  # else the two could be swapped unseen
    assert result.cv["balanced_accuracy"]["mean"] > 0.5  # topic words are learnable despite the flips: above 1/3


def test_test_metrics_come_from_the_folds_averaged_probabilities(evaluated):
    df, plan, result = evaluated
    model = load_baseline(result.path)
    test = df.set_index("session_id").loc[plan.test_ids]
    texts = test["text"].tolist()
    probs = baseline_predict_proba(result.path, texts)  # (n_test, C)
    assert probs.shape == (len(texts), 3) and np.allclose(probs.sum(axis=1), 1)
    mean = np.mean([m.predict_proba(texts) for m in model.fold_models], axis=0)
    assert np.allclose(probs, mean)
    predicted = baseline_predict(result.path, texts)
    assert predicted == [model.labels[i] for i in mean.argmax(axis=1)]
    assert result.test_metrics == classification_metrics(test["label"].tolist(), predicted, classes=model.labels)
    human = test["source"] == "human"
    assert result.test_metrics_human["n"] == int(human.sum()) and result.llm_agreement["n"] == int((~human).sum())


def test_a_single_train_val_split_gives_one_fold_and_the_result_round_trips(tmp_path):
    df = _frame().drop(columns="source")
    plan = plan_splits(df, tiny_config(kfold=False))
    result = evaluate_baseline(df.set_index("session_id"), plan, tmp_path / "b.joblib")
    assert result.n_folds == 1 and len(result.per_fold) == 1 and result.cv["balanced_accuracy"]["std"] == 0
    assert result.test_metrics_human is None  # no source column: nothing to report apart
    assert BaselineResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_holdout_metrics_score_the_saved_baseline(evaluated):
    _, _, result = evaluated
    texts = ["refund for my card payment", "where is the courier with my parcel", "locked out, reset my password"]
    labels = ["billing", "shipping", "account"]
    metrics = baseline_holdout_metrics(result.path, texts, labels, sha256=result.sha256)
    assert metrics["n"] == 3 and metrics["balanced_accuracy"] == 1.0
    with pytest.raises(ValueError, match="the file was altered"):
        baseline_holdout_metrics(result.path, texts, labels, sha256="0" * 64)
    with pytest.raises(ValueError, match="texts and labels differ in length: 3 vs 1"):
        baseline_holdout_metrics(result.path, texts, ["billing"])


def test_an_altered_or_foreign_artifact_is_refused(evaluated, tmp_path):
    _, _, result = evaluated
    with pytest.raises(ValueError, match="expected 0000: the file was altered"):
        load_baseline(result.path, "0000")
    import joblib

    joblib.dump({"weights": [1, 2]}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="format must be 'legolas-baseline/1', got None"):
        load_baseline(tmp_path / "other.joblib")


def test_a_stale_split_is_named(evaluated, tmp_path):
    df, plan, _ = evaluated
    with pytest.raises(ValueError, match=r"sessions of the plan's fold 0 train_ids are not in df \(a stale split\?\)"):
        evaluate_baseline(df[~df["session_id"].isin(plan.folds[0].train_ids[:2])], plan, tmp_path / "b.joblib")


# --- the decision: the ensemble must not score below the baseline ---


def test_compare_fails_when_the_ensemble_is_worse_and_names_both_numbers():
    passed, reason = compare({"balanced_accuracy": 0.61, "n": 40}, {"balanced_accuracy": 0.72, "n": 40})
    assert not passed
    assert reason == (
        "the ensemble scores 0.6100 test balanced accuracy, below the TF-IDF + LR baseline's 0.7200 (-0.1100) on the same 40 sessions"
    )


def test_compare_passes_on_a_tie_and_above():
    assert compare({"balanced_accuracy": 0.72, "n": 40}, {"balanced_accuracy": 0.72, "n": 40})[0]
    passed, reason = compare({"balanced_accuracy": 0.8, "n": 40}, {"balanced_accuracy": 0.72, "n": 40})
    assert passed and "at least the TF-IDF + LR baseline's 0.7200 (+0.0800)" in reason


def test_compare_without_a_baseline_or_on_other_sessions():
    passed, reason = compare({"balanced_accuracy": 0.9, "n": 40}, None)
    assert not passed and "re-materialize ensemble_model" in reason
    with pytest.raises(ValueError, match="same test sessions, got n=40 and n=39"):
        compare({"balanced_accuracy": 0.9, "n": 40}, {"balanced_accuracy": 0.7, "n": 39})
    with pytest.raises(ValueError, match=r"baseline_metrics needs keys \['balanced_accuracy', 'n'\], missing \['n'\]; it has \['balanced_accuracy'\]"):
        compare({"balanced_accuracy": 0.9, "n": 40}, {"balanced_accuracy": 0.7})


def _ensemble_value(ensemble_ba: float, baseline_ba: float) -> dict:
    """An ``ensemble_model`` value (a ``Candidate``'s fields) with the parts the check reads."""
    def scores(ba):
        return {"balanced_accuracy": ba, "accuracy": ba, "n": 40}

    human = {"n": 10, "balanced_accuracy": 0.5, "accuracy": 0.5}
    return {"version": "v1", "checkpoints": [], "labels": ["a", "b"], "manifest_path": "m.json", "run_dir": "runs/r1",
            "test_metrics": scores(ensemble_ba), "test_metrics_human": human,
            "baseline": {"test_metrics": scores(baseline_ba), "test_metrics_human": human}}


@pytest.mark.parametrize(("ensemble_ba", "baseline_ba", "passed"), [(0.61, 0.72, False), (0.8, 0.72, True)])
def test_the_check_warns_when_the_ensemble_is_worse(tmp_path, ensemble_ba, baseline_ba, passed):
    """The Dagster check on a stored ``ensemble_model`` value: no training needed."""
    value = tmp_path / "output" / "asset_values" / "ensemble_model" / "__all__.json"
    value.parent.mkdir(parents=True)
    value.write_text(json.dumps(_ensemble_value(ensemble_ba, baseline_ba)))
    [check] = [c for c in ALL_CHECKS if c.check_key.name == "ensemble_beats_baseline" and c.check_key.asset_key == key("ensemble_model")]
    result = materialize(
        ASSETS + ALL_CHECKS, resources=resources(tmp_path), instance=DagsterInstance.ephemeral(),
        selection=AssetSelection.checks(check), raise_on_error=False,
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed is passed and evaluation.severity.value == "WARN"
    data = {k: v.value for k, v in evaluation.metadata.items()}
    assert data["ensemble_test_balanced_accuracy_mixed"] == ensemble_ba and data["baseline_test_balanced_accuracy_mixed"] == baseline_ba
    assert data["reason"] == compare({"balanced_accuracy": ensemble_ba, "n": 40}, {"balanced_accuracy": baseline_ba, "n": 40})[1]
