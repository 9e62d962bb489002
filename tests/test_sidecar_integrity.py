"""The checksum record covers the sidecar too: edited labels or config are refused on every load, naming the file."""

import json
from pathlib import Path

import pytest
import torch

from legolas_ml.evaluation.ensemble import FoldEnsemble
from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint, read_sidecar, save_checkpoint, sidecar_path
from legolas_ml.training.cross_validation import encode_dataset, finished_fold, plan_splits, train_plan_fold
from synthetic import separable_frame, tiny_config

SIDE = {
    "epoch": 1,
    "metrics": {"balanced_accuracy": 0.9},
    "labels": ["account", "billing", "shipping"],
    "model_config": {"model_type": "bert", "hidden_size": 32},
    "training_config": {"max_length": 48, "model_name": "bundled:all-MiniLM-L6-v2"},
}


def _edit(path, change) -> None:
    meta = json.loads(sidecar_path(path).read_text())
    change(meta)
    sidecar_path(path).write_text(json.dumps(meta, indent=2, sort_keys=True))


def _rotate_labels(meta):
    meta["labels"] = meta["labels"][1:] + meta["labels"][:1]


EDITS = {
    "rotated class names": _rotate_labels,
    "max_length": lambda meta: meta["training_config"].update(max_length=512),
    "model config": lambda meta: meta["model_config"].update(hidden_size=64),
    "metrics": lambda meta: meta["metrics"].update(balanced_accuracy=1.0),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=list(EDITS))
def test_edited_sidecar_is_refused_naming_the_file(tmp_path, edit):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3)}, SIDE)
    load_checkpoint(path)
    _edit(path, edit)
    for load in (read_sidecar, load_checkpoint):
        with pytest.raises(CheckpointError, match=f"{sidecar_path(path)} was modified after it was written"):
            load(path)


def test_reformatting_a_sidecar_changes_nothing(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3)}, SIDE)
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps(dict(reversed(list(meta.items())))))  # other key order, no indentation
    assert load_checkpoint(path)[1]["labels"] == SIDE["labels"]


def test_a_sidecar_without_its_own_checksum_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3)}, SIDE)
    _edit(path, lambda meta: (meta.pop("sidecar_sha256"), meta.update(format_version=1)))
    with pytest.raises(CheckpointError, match=f"{sidecar_path(path)}.*format_version 1"):
        load_checkpoint(path)


def test_a_trained_fold_with_rotated_labels_is_neither_served_nor_reused(tmp_path):
    """The issue's case: rotated class names made a 0.0118-BA model; now the ensemble refuses it and the fold retrains."""
    df = separable_frame(20)
    config = tiny_config(n_folds=2, epochs=1, patience=1, batch_size=8)
    data, plan = encode_dataset(df, config), plan_splits(df, config)
    first = train_plan_fold(data, plan, 0, config, tmp_path, data_version="v1")
    path = Path(first.checkpoint_path)
    assert finished_fold(path, "v1", plan.fingerprint(), config) is not None
    _edit(path, _rotate_labels)
    with pytest.raises(CheckpointError, match=str(sidecar_path(path))):
        FoldEnsemble([path], device="cpu", precision="fp32")
    assert finished_fold(path, "v1", plan.fingerprint(), config) is None
    again = train_plan_fold(data, plan, 0, config, tmp_path, data_version="v1")
    assert not again.reused and read_sidecar(path)["labels"] == sorted(df["label"].unique())


def test_damaged_weights_only_fool_the_estimate_never_the_reuse(tmp_path):
    """``verify_weights=False`` (fold_models' progress estimate) trusts the record; reuse always hashes the weights."""
    df = separable_frame(20)
    config = tiny_config(n_folds=2, epochs=1, patience=1, batch_size=8)
    data, plan = encode_dataset(df, config), plan_splits(df, config)
    path = Path(train_plan_fold(data, plan, 0, config, tmp_path, data_version="v1").checkpoint_path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # the last byte of the last tensor
    path.write_bytes(bytes(raw))
    assert finished_fold(path, "v1", plan.fingerprint(), config, verify_weights=False) is not None
    assert finished_fold(path, "v1", plan.fingerprint(), config) is None
    assert not train_plan_fold(data, plan, 0, config, tmp_path, data_version="v1").reused
