import pytest

from legolas_ml.evaluation.metrics import classification_metrics, mean_std


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
