"""K-fold cross-validation built from the core pieces: encode once, train folds, aggregate, ensemble.

The Dagster assets call these functions one stage at a time (one fold per partition);
``run_cross_validation`` calls them all in one process for scripts and benchmarks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from legolas_ml.lifecycle.artifacts import training_key
from legolas_ml.training.batching import encode_cached
from legolas_ml.atomic_io import write_json_atomic
from legolas_ml.training.checkpoint import CheckpointError, checkpoint_filename, load_checkpoint, read_sidecar
from legolas_ml.training.config import TrainingConfig
from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.evaluation.metrics import classification_metrics, mean_std
from legolas_ml.training.modeling import load_tokenizer
from legolas_ml.data.quality_gate import content_hash
from legolas_ml.data.splits import SplitPlan, make_splits
from legolas_ml.training.trainer import EpochCallback, FoldData, FoldResult, train_fold

class StaleFoldError(ValueError):
    """A fold was trained on another dataset version or split than the one being aggregated."""


class MissingFoldsError(ValueError):
    """Some folds of the split have no trained model yet."""


@dataclass
class EncodedDataset:
    """A labelled dataset tokenised once, addressable by session id."""

    session_ids: list[str]
    labels: list[str]  # the class names, sorted; targets index into this
    targets: np.ndarray  # (n,) int64
    encoded: Any  # EncodedTexts aligned with session_ids
    pad_id: int
    row_of: dict[str, int]

    def subset(self, ids: Sequence[str]) -> FoldData:
        try:
            rows = np.fromiter((self.row_of[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise KeyError(f"session {exc.args[0]!r} of the split is not in the dataset (stale split?)") from None
        return FoldData(encoded=self.encoded.take(rows), targets=self.targets[rows])


def encode_dataset(df: pd.DataFrame, config: TrainingConfig, cache_dir: Path | None = None) -> EncodedDataset:
    """Tokenise every text once (cached on disk by content) and index it by session id."""
    df = df.sort_values("session_id", kind="stable")
    labels = sorted(df["label"].unique().tolist())
    index = {label: i for i, label in enumerate(labels)}
    tokenizer = load_tokenizer(config.model_name)
    encoded = encode_cached(
        tokenizer, config.model_name, df["text"].tolist(), config.max_length, config.truncation_side, cache_dir
    )
    ids = df["session_id"].astype(str).tolist()
    return EncodedDataset(
        session_ids=ids,
        labels=labels,
        targets=np.array([index[label] for label in df["label"]], dtype=np.int64),
        encoded=encoded,
        pad_id=tokenizer.pad_token_id or 0,
        row_of={sid: i for i, sid in enumerate(ids)},
    )


def plan_splits(df: pd.DataFrame, config: TrainingConfig) -> SplitPlan:
    return make_splits(
        df["session_id"].astype(str).tolist(),
        df["label"].tolist(),
        test_size=config.test_size,
        n_folds=config.n_folds,
        seed=config.seed,
        kfold=config.kfold,
        val_size=config.val_size,
    )


def _result_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".result.json")


def finished_fold(checkpoint: Path, data_version: str, split_fingerprint: str, config: TrainingConfig) -> FoldResult | None:
    """The stored result of a fold that finished with exactly these inputs, else ``None``.

    A result record is written only after a fold finishes, and it names the SHA-256 of the
    checkpoint it produced; a fold killed mid-training has none (it is deleted before training
    starts), and a checkpoint overwritten since then no longer matches it.
    """
    record_path = _result_path(checkpoint)
    try:
        record = json.loads(record_path.read_text())
        sidecar = read_sidecar(checkpoint)
    except (OSError, ValueError, CheckpointError):
        return None
    expected = {"data_version": data_version, "split_fingerprint": split_fingerprint, "training_config": config.to_dict()}
    if any(record.get(k) != v for k, v in expected.items()) or record.get("sha256") != sidecar["sha256"]:
        return None
    try:
        load_checkpoint(checkpoint)  # verifies the checksum of the weights themselves
    except CheckpointError:
        return None
    try:
        return FoldResult(**record["result"])
    except TypeError:  # a record written by an older LEGOLAS, with other fields: train again
        return None


def train_plan_fold(
    data: EncodedDataset,
    plan: SplitPlan,
    fold: int,
    config: TrainingConfig,
    folds_dir: Path,
    *,
    data_version: str,
    on_epoch: EpochCallback | None = None,
    reuse_finished: bool = True,
) -> FoldResult:
    """Train fold ``fold`` of ``plan``; the sidecar records the dataset version and split fingerprint.

    With ``reuse_finished``, a fold that already finished with the same data, split and config
    (checksum verified) is returned as it is instead of retrained: re-running a partly failed
    K-fold run retrains only the folds that are missing.
    """
    if not 0 <= fold < plan.n_folds:
        raise ValueError(f"fold must be in 0..{plan.n_folds - 1}, got {fold}")
    spec = plan.folds[fold]
    path = Path(folds_dir) / checkpoint_filename(config.text_format, config.model_name, fold)
    if reuse_finished:
        done = finished_fold(path, data_version, plan.fingerprint(), config)
        if done is not None:
            done.reused = True
            return done
    _result_path(path).unlink(missing_ok=True)
    result = train_fold(
        config,
        data.labels,
        data.subset(spec.train_ids),
        data.subset(spec.val_ids),
        path,
        fold=fold,
        pad_id=data.pad_id,
        sidecar={"data_version": data_version, "split_fingerprint": plan.fingerprint(), "n_folds": plan.n_folds},
        on_epoch=on_epoch,
    )
    record = {
        "data_version": data_version,
        "split_fingerprint": plan.fingerprint(),
        "training_config": config.to_dict(),
        "sha256": read_sidecar(path)["sha256"],
        "result": result.to_dict(),
    }
    write_json_atomic(_result_path(path), record)
    return result


def aggregate_folds(
    fold_summaries: dict[int, dict[str, Any]], n_folds: int, data_version: str, split_fingerprint: str
) -> dict[str, Any]:
    """Mean ± std of the folds' best validation metrics.

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
    out: dict[str, Any] = {"n_folds": n_folds, "data_version": data_version, "split_fingerprint": split_fingerprint}
    for metric in ("balanced_accuracy", "accuracy", "f1_macro"):
        mean, std = mean_std([r[metric] for r in rows])
        out[metric] = {"mean": mean, "std": std}
    classes = rows[0]["classes"]
    out["per_class_recall"] = {
        c: dict(zip(("mean", "std"), mean_std([r["per_class"][c]["recall"] for r in rows]))) for c in classes
    }
    out["per_fold"] = [
        {
            "fold": r["fold"],
            "balanced_accuracy": r["balanced_accuracy"],
            "accuracy": r["accuracy"],
            "f1_macro": r["f1_macro"],
            "best_epoch": fold_summaries[r["fold"]].get("best_epoch"),
        }
        for r in rows
    ]
    return out


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
        "cv": cv,
        "test": test_metrics,
        "wall_s": time.perf_counter() - started,
    }
