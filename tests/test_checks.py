"""Checks as data: every verdict's failing path, and the table that one factory turns into Dagster checks."""

from __future__ import annotations

import math

import pytest

from legolas_ml.data.splits import Fold, SplitPlan
from legolas_ml.evaluation import checks as verdicts
from legolas_ml.evaluation.checks import CheckTable


def _plan(test_ids, folds) -> SplitPlan:
    return SplitPlan(test_ids=list(test_ids), folds=[Fold(i, list(t), list(v)) for i, (t, v) in enumerate(folds)], seed=0, kfold=True)


def _metrics(ba: float, n: int = 20) -> dict:
    return {"balanced_accuracy": ba, "n": n}


def _fold(ba: float, losses=((0.5, 0.6),)) -> dict:
    return {"best_metrics": {"balanced_accuracy": ba}, "history": [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(losses)]}


_SUMMARY = {"rows": 40, "per_source": {"human": 10, "llm": 30}, "per_class": {"a": 20, "b": 20}}
_BALANCED = {"a": "a", "b": "b", "c": "a", "d": "b", "e": "a", "f": "b", "g": "a", "h": "b"}

#: Check name -> (the verdict called so that it must fail, the same verdict called so that it must pass).
FAILING_AND_PASSING = {
    "at_least_two_classes": (lambda: verdicts.at_least_two_classes(["a"]), lambda: verdicts.at_least_two_classes(["a", "b"])),
    "enough_members_per_class": (
        lambda: verdicts.enough_members_per_class({"a": 10, "b": 3}, needed=4),
        lambda: verdicts.enough_members_per_class({"a": 10, "b": 4}, needed=4),
    ),
    "unique_session_ids": (lambda: verdicts.unique_session_ids(["s1", "s2", "s1"]), lambda: verdicts.unique_session_ids(["s1", "s2"])),
    "quarantine_share": (
        lambda: verdicts.quarantine_share({"quarantined": 2, "inputs": 10}, max_share=0.2),
        lambda: verdicts.quarantine_share({"quarantined": 1, "inputs": 10}, max_share=0.2),
    ),
    "training_set_not_halved": (
        lambda: verdicts.training_set_not_halved({**_SUMMARY, "rows": 19}, {**_SUMMARY, "rows": 40}),
        lambda: verdicts.training_set_not_halved({**_SUMMARY, "rows": 20}, {**_SUMMARY, "rows": 40}),
    ),
    "no_test_leakage": (
        lambda: verdicts.no_test_leakage(_plan(["t"], [(["a", "t"], ["b"])])),
        lambda: verdicts.no_test_leakage(_plan(["t"], [(["a"], ["b"])])),
    ),
    "fold_class_proportions": (
        # fold 1 validates on class a only although the pool is half a, half b
        lambda: verdicts.fold_class_proportions(_plan([], [(["a", "b", "c", "d"], ["e", "f", "g", "h"]), (["b", "d", "f", "h"], ["a", "c", "e", "g"])]), _BALANCED, ["a", "b"]),
        lambda: verdicts.fold_class_proportions(_plan([], [(["a", "b", "c", "d"], ["e", "f", "g", "h"]), (["e", "f", "g", "h"], ["a", "b", "c", "d"])]), _BALANCED, ["a", "b"]),
    ),
    "finite_losses": (
        lambda: verdicts.finite_losses({"0": _fold(0.9, ((0.5, math.nan),))}),
        lambda: verdicts.finite_losses({"0": _fold(0.9)}),
    ),
    "above_chance": (
        lambda: verdicts.folds_above_chance({"0": _fold(0.9), "1": _fold(0.55)}, n_classes=2),
        lambda: verdicts.folds_above_chance({"0": _fold(0.9), "1": _fold(0.56)}, n_classes=2),
    ),
    "ensemble_above_chance": (
        lambda: verdicts.ensemble_above_chance(0.38, n_classes=3),
        lambda: verdicts.ensemble_above_chance(0.39, n_classes=3),
    ),
    "cv_fold_spread": (
        lambda: verdicts.cv_fold_spread([{"fold": 0, "balanced_accuracy": 0.9}, {"fold": 1, "balanced_accuracy": 0.74}]),
        lambda: verdicts.cv_fold_spread([{"fold": 0, "balanced_accuracy": 0.9}, {"fold": 1, "balanced_accuracy": 0.76}]),
    ),
    "ensemble_consistent_with_cv": (
        lambda: verdicts.ensemble_consistent_with_cv(0.69, cv_mean=0.8),
        lambda: verdicts.ensemble_consistent_with_cv(0.71, cv_mean=0.8),
    ),
    "ensemble_beats_baseline": (
        lambda: verdicts.ensemble_beats_baseline({
            "test_metrics": _metrics(0.7), "test_metrics_human": {"balanced_accuracy": None},
            "baseline": {"test_metrics": _metrics(0.8), "test_metrics_human": {"balanced_accuracy": None}},
        }),
        lambda: verdicts.ensemble_beats_baseline({
            "test_metrics": _metrics(0.8), "test_metrics_human": {"balanced_accuracy": 0.5},
            "baseline": {"test_metrics": _metrics(0.8), "test_metrics_human": {"balanced_accuracy": 0.4}},
        }),
    ),
    "attributions_converged": (
        lambda: verdicts.attributions_converged(0.94, mean_steps=64), lambda: verdicts.attributions_converged(0.95, mean_steps=64),
    ),
}


@pytest.mark.parametrize("name", sorted(FAILING_AND_PASSING))
def test_every_check_fails_on_its_bad_case_and_passes_on_the_good_one(name):
    failing, passing = FAILING_AND_PASSING[name]
    bad, good = failing(), passing()
    assert bad.passed is False and good.passed is True, (name, bad.metadata, good.metadata)
    assert bad.metadata, f"{name}: a failure must carry its observed and expected values"


def test_the_metadata_names_what_failed():
    assert verdicts.enough_members_per_class({"a": 10, "b": 3}, needed=4).metadata["too_small"] == '{"b": 3}'
    assert verdicts.no_test_leakage(_plan(["t"], [(["a", "t"], ["b"])])).metadata["examples"] == '["t"]'
    assert verdicts.finite_losses({"0": _fold(0.9, ((0.5, math.inf),))}).metadata["non_finite"] == '["fold 0 epoch 1"]'
    assert verdicts.folds_above_chance({"3": _fold(0.5)}, n_classes=2).metadata == {"threshold": 0.55, "lowest": 0.5, "folds_below": '{"3": 0.5}'}
    halved = verdicts.training_set_not_halved({**_SUMMARY, "rows": 10}, _SUMMARY).metadata
    assert halved["ratio"] == 0.25 and isinstance(halved["by_class_and_source"], CheckTable)
    assert verdicts.training_set_not_halved(_SUMMARY, None).metadata["champion_rows"] == "no champion"
    assert "no TF-IDF + LR baseline was evaluated" in verdicts.ensemble_beats_baseline(
        {"test_metrics": _metrics(0.9), "test_metrics_human": {"balanced_accuracy": None}}
    ).metadata["reason"]
    assert verdicts.members_needed(5) == 7 and verdicts.members_needed(1, kfold=False) == 3


def test_the_table_is_what_the_definitions_build():
    """Each row becomes one check of the tenant's asset with the row's blocking flag; every check has a failing test."""
    from legolas_assets.checks import CHECKS, FOLD_CHECKS, build_checks, fold_check_specs
    from legolas_assets.tenancy import TenantPlan

    tenant = TenantPlan("acme")
    built = {spec.name: spec for check in build_checks(tenant) for spec in check.check_specs}
    assert list(built) == [row.name for row in CHECKS]
    for row in CHECKS:
        assert built[row.name].asset_key.path == [tenant.prefix, row.asset]
        assert built[row.name].blocking == row.blocking, row.name
    assert [spec.name for spec in fold_check_specs(tenant)] == [name for name, _, _ in FOLD_CHECKS]
    names = [row.name for row in CHECKS] + [name for name, _, _ in FOLD_CHECKS]
    assert sorted(names) == sorted(FAILING_AND_PASSING), "every check in the table has a failing-path test here"
    blocking = {row.name for row in CHECKS if row.blocking}
    assert blocking == {"at_least_two_classes", "enough_members_per_class", "unique_session_ids", "quarantine_share", "no_test_leakage"}
