import pytest

from legolas_ml.core.metrics import classification_metrics, mean_std, metrics_by_label_source


def test_multiclass_string_labels():
    y_true = ["a", "a", "a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "a", "a", "b", "b", "b", "c", "a"]
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["classes"] == ["a", "b", "c"]


def test_binary_and_absent_class():
    m = classification_metrics(["x", "x", "y"], ["x", "x", "x"], classes=["x", "y", "z"])
    assert m["per_class"]["y"]["recall"] == 0 and m["per_class"]["z"]["support"] == 0
    assert m["f1_weighted"] <= 1


def test_errors_and_mean_std():
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(1.41421356))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_human_labels_and_llm_agreement_are_scored_apart():
    """A mostly LLM-labelled split: the ensemble agrees with the LLM everywhere and is wrong on half the
    human-labelled sessions. The mixed score hides it; the human one does not."""
    y_true = ["a", "b"] * 2 + ["a", "a", "a", "b", "b", "b"]
    sources = ["human"] * 4 + ["llm"] * 6
    y_pred = ["a", "a", "a", "a"] + y_true[4:]
    split = metrics_by_label_source(y_true, y_pred, sources)
    mixed = classification_metrics(y_true, y_pred)["balanced_accuracy"]
    assert split["test_metrics_human"] == {"n": 4, "balanced_accuracy": 0.5, "accuracy": 0.5}
    assert split["llm_agreement"] == {"n": 6, "balanced_accuracy": 1.0, "accuracy": 1.0}
    assert mixed == pytest.approx((1 + 3 / 5) / 2)  # every "a" right, 3 of the 5 "b"


def test_a_source_without_sessions_has_no_score_and_bad_sources_are_named():
    split = metrics_by_label_source(["a", "b"], ["a", "a"], ["llm", "llm"])
    assert split["test_metrics_human"] == {"n": 0, "balanced_accuracy": None, "accuracy": None}
    assert split["llm_agreement"]["n"] == 2
    with pytest.raises(ValueError, match=r"sources must be one of \['human', 'llm'\], got \['review'\]"):
        metrics_by_label_source(["a"], ["a"], ["review"])
    with pytest.raises(ValueError, match="differ in length: 2, 2, 1"):
        metrics_by_label_source(["a", "b"], ["a", "b"], ["human"])
