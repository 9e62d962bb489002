"""Cross-validation's verdict: the folds' metrics aggregated, and their ensemble scored on the test set.

``run_cross_validation`` runs the whole K-fold experiment in one process (split, train every fold
with ``legolas_ml.training.cross_validation``, aggregate, evaluate) for scripts and benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from legolas_ml.core.contracts import CvMetrics
from legolas_ml.core.datasets import content_hash
from legolas_ml.core.identity import training_key
from legolas_ml.core.metrics import classification_metrics, mean_std
from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import encode_dataset, plan_splits, train_plan_fold
from legolas_ml.training.trainer import FoldResult


class StaleFoldError(ValueError):
    """A fold was trained on another dataset version or split than the one being aggregated."""


class MissingFoldsError(ValueError):
    """Some folds of the split have no trained model yet."""


def aggregate_folds(
    fold_summaries: dict[int, dict[str, Any]], n_folds: int, data_version: str, split_fingerprint: str
) -> CvMetrics:
    """Mean ± std of the folds' best validation metrics, and the spread between the best and worst fold.

    Args:
        fold_summaries: per fold index, a dict with ``best_metrics``, ``data_version`` and ``split_fingerprint``.
        n_folds: how many folds the split has.
        data_version: the dataset hash the folds must have been trained on.
        split_fingerprint: the split they must have been trained on.

    Raises:
        MissingFoldsError: naming the folds without a model.
        StaleFoldError: naming every fold trained on another dataset version or split.
    """
    missing = sorted(set(range(n_folds)) - set(fold_summaries))
    if missing:
        raise MissingFoldsError(f"folds {missing} of {n_folds} have no trained model; materialize them first")
    stale = [
        f"fold {k} (data {s.get('data_version')}, split {s.get('split_fingerprint')})"
        for k, s in sorted(fold_summaries.items())
        if s.get("data_version") != data_version or s.get("split_fingerprint") != split_fingerprint
    ]
    if stale:
        raise StaleFoldError(
            f"refusing to aggregate folds from another dataset version or split: {', '.join(stale)}; "
            f"current data {data_version}, split {split_fingerprint}. Re-materialize those fold partitions."
        )
    rows = [dict(fold=k, **fold_summaries[k]["best_metrics"]) for k in range(n_folds)]
    summary = {}
    for metric in ("balanced_accuracy", "accuracy", "f1_macro"):
        mean, std = mean_std([r[metric] for r in rows])
        summary[metric] = {"mean": mean, "std": std}
    classes = rows[0]["classes"]
    per_class_recall = {
        c: dict(zip(("mean", "std"), mean_std([r["per_class"][c]["recall"] for r in rows]))) for c in classes
    }
    per_fold = [
        {
            "fold": r["fold"],
            "balanced_accuracy": r["balanced_accuracy"],
            "accuracy": r["accuracy"],
            "f1_macro": r["f1_macro"],
            "best_epoch": fold_summaries[r["fold"]].get("best_epoch"),
        }
        for r in rows
    ]
    return CvMetrics(  # computes fold_spread from per_fold
        n_folds=n_folds, data_version=data_version, split_fingerprint=split_fingerprint, **summary,
        per_class_recall=per_class_recall, per_fold=per_fold,
    )


def evaluate_ensemble(
    checkpoint_paths: Sequence[str | Path], texts: Sequence[str], y_true: Sequence[str], device="auto", precision="auto"
) -> tuple[dict[str, Any], np.ndarray, FoldEnsemble]:
    """The ensemble's metrics on held-out texts, its probabilities, and the ensemble itself."""
    ensemble = FoldEnsemble(checkpoint_paths, device=device, precision=precision)
    probs = ensemble.predict_proba(texts)
    check_probabilities(probs)
    y_pred = [ensemble.labels[i] for i in probs.argmax(axis=1)]
    return classification_metrics(list(y_true), y_pred, classes=ensemble.labels), probs, ensemble


def run_cross_validation(
    df: pd.DataFrame,
    config: TrainingConfig,
    output_dir: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Split, train every fold, aggregate and evaluate the ensemble on the test set, in one process."""
    started = time.perf_counter()
    version = content_hash(df)
    plan = plan_splits(df, config)
    data = encode_dataset(df, config, cache_dir=Path(output_dir) / "tokens")
    folds_dir = Path(output_dir) / "folds" / training_key(version, plan.fingerprint(), config.to_dict())
    results: dict[int, FoldResult] = {}
    for k in range(plan.n_folds):
        log(f"fold {k}: training on {len(plan.folds[k].train_ids)} sessions, validating on {len(plan.folds[k].val_ids)}")
        results[k] = train_plan_fold(
            data, plan, k, config, folds_dir, data_version=version,
            on_epoch=lambda r: log(
                f"  fold {r['fold']} epoch {r['epoch']}: train_loss {r['train_loss']:.4f} val_loss {r['val_loss']:.4f} "
                f"val_bal_acc {r['val_balanced_accuracy']:.4f} ({r['checkpoint']})"
            ),
        )
    summaries = {
        k: {**r.to_dict(), "data_version": version, "split_fingerprint": plan.fingerprint()} for k, r in results.items()
    }
    cv = aggregate_folds(summaries, plan.n_folds, version, plan.fingerprint())
    test = df.set_index(df["session_id"].astype(str)).loc[plan.test_ids]
    test_metrics, _, _ = evaluate_ensemble(
        [r.checkpoint_path for r in results.values()], test["text"].tolist(), test["label"].tolist(),
        device=config.device, precision=config.precision,
    )
    return {
        "data_version": version,
        "split_fingerprint": plan.fingerprint(),
        "folds": [r.to_dict() for r in results.values()],
        "cv": cv.to_dict(),
        "test": test_metrics,
        "wall_s": time.perf_counter() - started,
    }
