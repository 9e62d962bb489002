"""The training set against the one the model in service was trained on."""

import pytest

from legolas_ml.lifecycle.dataset_diff import dataset_diff

CHAMPION = {"rows": 100, "per_class": {"billing": 60, "refund": 40}, "per_source": {"human": 30, "llm": 70}}


def test_rows_classes_and_sources_against_the_champion():
    now = {"rows": 45, "per_class": {"billing": 40, "shipping": 5}, "per_source": {"human": 45, "llm": 0}}
    diff = dataset_diff(now, CHAMPION)
    assert (diff.rows_change, diff.ratio) == (-55, 0.45)
    assert (diff.classes_added, diff.classes_removed) == (["shipping"], ["refund"])
    assert diff.parts == [
        ("class billing", 60, 40), ("class refund", 40, 0), ("class shipping", 0, 5), ("source human", 30, 45), ("source llm", 70, 0),
    ]
    assert diff.describe() == "45 rows vs 100 for the model in service (-55, ratio 0.4500); classes added: shipping; removed: refund"


def test_a_summary_without_counts_is_named():
    with pytest.raises(ValueError, match=r"champion must have rows, per_class and per_source; missing \['per_source'\]"):
        dataset_diff(CHAMPION, {"rows": 1, "per_class": {}})
