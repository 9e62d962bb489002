import random
from collections import Counter

import pytest

from legolas_ml.data.splits import SplitPlan, make_splits


def _data(n_per_class=(50, 30, 12)):
    ids, labels = [], []
    for c, n in enumerate(n_per_class):
        for i in range(n):
            ids.append(f"s{c}-{i:03d}")
            labels.append(f"class{c}")
    return ids, labels


def test_partition_is_complete_and_disjoint():
    ids, labels = _data()
    plan = make_splits(ids, labels, n_folds=5)
    test = set(plan.test_ids)
    assert len(test) == round(0.2 * len(ids)) or abs(len(test) - 0.2 * len(ids)) <= 1
    vals = [set(f.val_ids) for f in plan.folds]
    assert set().union(*vals) == set(ids) - test
    assert sum(len(v) for v in vals) == len(set(ids) - test)
    for fold in plan.folds:
        assert not set(fold.train_ids) & set(fold.val_ids)
        assert not (set(fold.train_ids) | set(fold.val_ids)) & test


def test_stratified():
    ids, labels = _data((80, 20))
    label_of = dict(zip(ids, labels))
    plan = make_splits(ids, labels, n_folds=4)
    for fold in plan.folds:
        share = Counter(label_of[i] for i in fold.val_ids)["class1"] / len(fold.val_ids)
        assert share == pytest.approx(0.2, abs=0.06)


def test_deterministic_and_independent_of_input_order():
    ids, labels = _data()
    pairs = list(zip(ids, labels))
    random.Random(3).shuffle(pairs)
    a = make_splits(ids, labels, n_folds=5, seed=7)
    b = make_splits([p[0] for p in pairs], [p[1] for p in pairs], n_folds=5, seed=7)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert make_splits(ids, labels, n_folds=5, seed=8).fingerprint() != a.fingerprint()


def test_small_class_is_a_clear_error():
    ids, labels = _data((50, 6))
    with pytest.raises(ValueError, match=r"n_folds=10 .* 'class1' has \d"):
        make_splits(ids, labels, n_folds=10)


def test_single_split_mode_and_round_trip():
    ids, labels = _data()
    plan = make_splits(ids, labels, kfold=False, val_size=0.25)
    assert plan.n_folds == 1 and not set(plan.folds[0].val_ids) & set(plan.folds[0].train_ids)
    assert SplitPlan.from_dict(plan.to_dict()) == plan
    tampered = plan.to_dict()
    tampered["test_ids"] = tampered["test_ids"][1:]
    with pytest.raises(ValueError, match="fingerprint"):
        SplitPlan.from_dict(tampered)


def test_bad_input():
    with pytest.raises(ValueError, match="unique"):
        make_splits(["a", "a", "b", "c"], ["x", "x", "y", "y"])
    with pytest.raises(ValueError, match="2 classes"):
        make_splits(["a", "b"], ["x", "x"])
