"""K-fold training built from the core pieces: encode once, plan the split, train (or reuse) each fold.

The Dagster assets call these one fold per partition; aggregating the folds and scoring their
ensemble is evaluation's (``legolas_ml.evaluation.cross_validation``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from legolas_ml.training.batching import encode_cached
from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.training.checkpoint import CheckpointError, checkpoint_filename, load_checkpoint, read_sidecar
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.modeling import load_tokenizer
from legolas_ml.data.splits import SplitPlan, make_splits
from legolas_ml.training.trainer import EpochCallback, FoldData, FoldResult, train_fold


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


def finished_fold(
    checkpoint: Path, data_version: str, split_fingerprint: str, config: TrainingConfig, *, verify_weights: bool = True,
) -> FoldResult | None:
    """The stored result of a fold that finished with exactly these inputs, else ``None``.

    A result record is written only after a fold finishes, and it names the SHA-256 of the
    checkpoint it produced; a fold killed mid-training has none (it is deleted before training
    starts), and a checkpoint overwritten since then no longer matches it.

    ``verify_weights=False`` skips reading and hashing the weights (the record and the sidecar
    still must match): enough to estimate a run's work, never to reuse a fold.
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
        if verify_weights:
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
