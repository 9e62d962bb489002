"""The asset checks' verdicts as pure functions: values in, ``CheckOutcome(passed, metadata)`` out.

Each function reads only its arguments (no store, no files, no Dagster), so its failing path is a
one-line unit test; ``legolas_assets/checks.py`` holds the table (asset, name, blocking, severity,
function) that one factory turns into Dagster checks. Metadata carries the observed and the
expected values, so a failure reads as numbers in the UI, not just "failed".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from legolas_ml.data.splits import SplitPlan, class_proportions
from legolas_ml.evaluation.baseline import compare
from legolas_ml.core.metrics import chance_threshold

ENSEMBLE_TOLERANCE = 0.10  # test balanced accuracy may sit this far below the folds' mean
PROPORTION_TOLERANCE = 0.05  # fold class shares vs the pool's, plus one session of rounding
MIN_CONVERGED_SHARE = 0.95  # Integrated Gradients: share of explained texts whose completeness delta converged
FOLD_SPREAD_TOLERANCE = 0.15  # best minus worst fold balanced accuracy; more says the folds disagree
MIN_TRAINING_SET_RATIO = 0.5  # a training set under half the champion's says data went missing


@dataclass(frozen=True)
class CheckTable:
    """A table in a check's metadata: rows of ``{column: value}`` and the columns' ``(name, type)``."""

    rows: list[dict[str, Any]]
    columns: list[tuple[str, str]]


@dataclass(frozen=True)
class CheckOutcome:
    """A check's verdict and the numbers behind it (observed and expected values first)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def members_needed(n_folds: int, kfold: bool = True, test_share: float = 0.2) -> int:
    """Sessions a class needs so that, after the test split, every fold still sees it (one split: 2)."""
    k = n_folds if kfold else 2
    return math.ceil(k / (1 - test_share))


# --- labeled_dataset -------------------------------------------------------------------------------


def at_least_two_classes(classes: Sequence[str]) -> CheckOutcome:
    """A classifier needs two classes or more."""
    return CheckOutcome(len(classes) >= 2, {"observed_classes": len(classes), "expected_at_least": 2})


def enough_members_per_class(per_class: Mapping[str, int], needed: int) -> CheckOutcome:
    """Every class has ``needed`` sessions or more (``members_needed``)."""
    short = {c: n for c, n in per_class.items() if n < needed}
    smallest = min(per_class.values()) if per_class else 0
    return CheckOutcome(not short, {"needed_per_class": needed, "too_small": json.dumps(short), "smallest": smallest})


def unique_session_ids(session_ids: Iterable[str]) -> CheckOutcome:
    """No session id appears twice in the training rows."""
    duplicated = [sid for sid, n in Counter(session_ids).items() if n > 1]
    return CheckOutcome(not duplicated, {"duplicates": len(duplicated), "examples": json.dumps(duplicated[:5])})


def quarantine_share(counts: Mapping[str, int], max_share: float) -> CheckOutcome:
    """The gate's quarantined share of its inputs stays under ``max_share``."""
    share = counts["quarantined"] / max(counts["inputs"], 1)
    return CheckOutcome(share < max_share, {"observed_share": round(share, 4), "threshold": max_share, "quarantined": counts["quarantined"]})


def training_set_not_halved(summary: Mapping[str, Any], champion_dataset: Mapping[str, Any] | None) -> CheckOutcome:
    """The training set keeps at least half the champion's rows (per class and source shown beside)."""
    now = {"rows": summary["rows"], "per_source": summary["per_source"], "per_class": summary["per_class"]}
    if not champion_dataset or not champion_dataset.get("rows"):
        return CheckOutcome(True, {"rows": now["rows"], "champion_rows": "no champion"})
    ratio = now["rows"] / champion_dataset["rows"]
    classes = sorted(set(champion_dataset["per_class"]) | set(now["per_class"]))
    rows = [{"part": f"class {c}", "champion": champion_dataset["per_class"].get(c, 0), "now": now["per_class"].get(c, 0)} for c in classes]
    rows += [
        {"part": f"source {s}", "champion": champion_dataset["per_source"].get(s, 0), "now": now["per_source"].get(s, 0)}
        for s in ("human", "llm")
    ]
    table = CheckTable(rows, [("part", "string"), ("champion", "int"), ("now", "int")])
    return CheckOutcome(
        ratio >= MIN_TRAINING_SET_RATIO,
        {"rows": now["rows"], "champion_rows": champion_dataset["rows"], "ratio": round(ratio, 4), "by_class_and_source": table},
    )


# --- stratified_splits -----------------------------------------------------------------------------


def no_test_leakage(plan: SplitPlan) -> CheckOutcome:
    """No test session in any fold's train/val, and no fold with a session in both its train and val."""
    test = set(plan.test_ids)
    leaked = sorted(test & {s for f in plan.folds for s in f.train_ids + f.val_ids})
    inner = [f.index for f in plan.folds if set(f.train_ids) & set(f.val_ids)]
    return CheckOutcome(
        not leaked and not inner,
        {"test_sessions_in_training": len(leaked), "examples": json.dumps(leaked[:5]), "folds_with_train_val_overlap": json.dumps(inner)},
    )


def fold_class_proportions(plan: SplitPlan, label_of: Mapping[str, str], classes: Sequence[str]) -> CheckOutcome:
    """Each fold's validation class shares stay within ``PROPORTION_TOLERANCE`` (+ one session) of the pool's."""
    pool = [s for f in plan.folds[:1] for s in f.train_ids + f.val_ids]
    expected = class_proportions(pool, label_of, classes)
    deviations = [
        (abs(class_proportions(fold.val_ids, label_of, classes)[c] - expected[c]), f"fold {fold.index}, class {c}")
        for fold in plan.folds
        for c in classes
    ]
    worst, where = max(deviations)
    # One session more or less in a small fold moves a share by 1/n: that much is rounding, not bias.
    tolerance = PROPORTION_TOLERANCE + 1 / max(min(len(f.val_ids) for f in plan.folds), 1)
    return CheckOutcome(worst <= tolerance, {"max_abs_deviation": round(worst, 4), "tolerance": round(tolerance, 4), "where": where or "-"})


# --- fold_models (yielded by the asset itself, over the folds of its run) ----------------------------


def finite_losses(results: Mapping[str, Mapping[str, Any]]) -> CheckOutcome:
    """No NaN/inf train or validation loss in any epoch of any fold."""
    non_finite = [
        f"fold {k} epoch {h['epoch']}"
        for k, r in results.items()
        for h in r["history"]
        if not (math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]))
    ]
    return CheckOutcome(not non_finite, {"non_finite": json.dumps(non_finite[:10]), "folds_checked": len(results)})


def folds_above_chance(results: Mapping[str, Mapping[str, Any]], n_classes: int) -> CheckOutcome:
    """Every fold's validation balanced accuracy is above chance + margin (``chance_threshold``)."""
    threshold = chance_threshold(n_classes)
    scores = {k: r["best_metrics"]["balanced_accuracy"] for k, r in results.items()}
    below = {k: round(v, 4) for k, v in scores.items() if not v > threshold}
    return CheckOutcome(not below, {"threshold": round(threshold, 4), "lowest": round(min(scores.values()), 4), "folds_below": json.dumps(below)})


# --- cv_metrics, ensemble_model, explainability_report -----------------------------------------------


def cv_fold_spread(per_fold: Sequence[Mapping[str, Any]]) -> CheckOutcome:
    """Best minus worst fold balanced accuracy stays within ``FOLD_SPREAD_TOLERANCE``."""
    scores = {row["fold"]: row["balanced_accuracy"] for row in per_fold}
    best, worst = max(scores, key=scores.get), min(scores, key=scores.get)
    spread = scores[best] - scores[worst]
    return CheckOutcome(spread <= FOLD_SPREAD_TOLERANCE, {
        "spread": round(spread, 4), "tolerance": FOLD_SPREAD_TOLERANCE,
        "best_fold": best, "best_balanced_accuracy": round(scores[best], 4),
        "worst_fold": worst, "worst_balanced_accuracy": round(scores[worst], 4),
    })


def ensemble_above_chance(test_balanced_accuracy: float, n_classes: int) -> CheckOutcome:
    """The candidate's test balanced accuracy is above chance + margin: the promotion rule's first test."""
    threshold = chance_threshold(n_classes)
    return CheckOutcome(test_balanced_accuracy > threshold, {"observed": round(test_balanced_accuracy, 4), "threshold": round(threshold, 4)})


def ensemble_consistent_with_cv(test_balanced_accuracy: float, cv_mean: float) -> CheckOutcome:
    """Test balanced accuracy not more than ``ENSEMBLE_TOLERANCE`` below the folds' mean."""
    return CheckOutcome(
        test_balanced_accuracy >= cv_mean - ENSEMBLE_TOLERANCE,
        {"test_balanced_accuracy_mixed": round(test_balanced_accuracy, 4), "cv_mean": round(cv_mean, 4), "tolerance": ENSEMBLE_TOLERANCE},
    )


def ensemble_beats_baseline(ensemble_model: Mapping[str, Any]) -> CheckOutcome:
    """Test balanced accuracy (mixed) at least the TF-IDF + LR baseline's on the same test sessions."""
    ensemble = ensemble_model["test_metrics"]
    baseline_all = ensemble_model.get("baseline") or {}
    baseline = baseline_all.get("test_metrics")
    passed, reason = compare(ensemble, baseline)
    ensemble_human = ensemble_model["test_metrics_human"]["balanced_accuracy"]
    baseline_human = baseline_all["test_metrics_human"]["balanced_accuracy"] if baseline else None
    return CheckOutcome(passed, {
        "ensemble_test_balanced_accuracy_mixed": round(ensemble["balanced_accuracy"], 4),
        "baseline_test_balanced_accuracy_mixed": round(baseline["balanced_accuracy"], 4) if baseline else None,
        "test_n": ensemble["n"],
        # Shown, not decided on: the human-labelled part may be a handful of sessions.
        "ensemble_test_balanced_accuracy_human": None if ensemble_human is None else round(ensemble_human, 4),
        "baseline_test_balanced_accuracy_human": None if baseline_human is None else round(baseline_human, 4),
        "reason": reason,
    })


def attributions_converged(share_converged: float, mean_steps: float) -> CheckOutcome:
    """At least ``MIN_CONVERGED_SHARE`` of the explained texts converged."""
    return CheckOutcome(
        share_converged >= MIN_CONVERGED_SHARE,
        {"share_converged": round(share_converged, 4), "required": MIN_CONVERGED_SHARE, "mean_steps": mean_steps},
    )
