"""Warm start: a retraining's folds start from the champion's fold weights (training/warm_start.py)."""

from pathlib import Path

import pytest
import torch

from legolas_ml.lifecycle.retraining import warm_start_checkpoints
from legolas_ml.training.checkpoint import load_checkpoint, read_sidecar, sidecar_path
from legolas_ml.training.cross_validation import encode_dataset, plan_splits, train_plan_fold
from legolas_ml.training.modeling import build_model
from legolas_ml.training.warm_start import checkpoint_for_fold, warm_start

from synthetic import TINY_OVERRIDES, separable_frame, tiny_config


@pytest.fixture(scope="module")
def champion_fold(tmp_path_factory):
    """One trained fold of a tiny 3-class model: the champion's checkpoint."""
    df = separable_frame(n_per_class=20)
    config = tiny_config(n_folds=2, epochs=2)
    plan = plan_splits(df, config)
    data = encode_dataset(df, config)
    result = train_plan_fold(data, plan, 0, config, tmp_path_factory.mktemp("champion"), data_version="v1")
    return df, config, Path(result.checkpoint_path)


def test_weights_and_head_rows_are_copied_by_class_name(champion_fold):
    _, config, path = champion_fold
    state, meta = load_checkpoint(path)
    old = meta["labels"]
    labels = ["refunds", *reversed(old)]  # a new class first, the old ones in another order
    torch.manual_seed(123)
    model = build_model(config, labels)
    fresh_row = model.state_dict()["classifier.weight"][0].clone()
    report = warm_start(model, path, labels)
    mine = model.state_dict()
    assert report["new_classes"] == ["refunds"] and report["head_rows"] == 2 * len(old)
    for name, tensor in state.items():
        if not name.startswith("classifier."):
            assert torch.equal(mine[name], tensor), name
    for new, label in enumerate(labels[1:], start=1):
        assert torch.equal(mine["classifier.weight"][new], state["classifier.weight"][old.index(label)])
        assert torch.equal(mine["classifier.bias"][new], state["classifier.bias"][old.index(label)])
    assert torch.equal(mine["classifier.weight"][0], fresh_row)  # the new class keeps its fresh init


def test_another_architecture_is_refused(champion_fold):
    _, config, path = champion_fold
    other = config.replace(model_overrides={**TINY_OVERRIDES, "hidden_size": 16, "intermediate_size": 32})
    with pytest.raises(ValueError, match=r"warm start from .*do not fit this model.*LEGOLAS_WARM_START=0"):
        warm_start(build_model(other, ["account", "billing", "shipping"]), path, ["account", "billing", "shipping"])


def test_a_fold_trains_from_the_checkpoint_it_names(champion_fold, tmp_path):
    df, config, path = champion_fold
    state, _ = load_checkpoint(path)
    # A learning rate too small to move the weights: what the fold ships is where it started.
    warm = config.replace(init_checkpoints=[str(path)], lr=1e-12, epochs=1, n_folds=2)
    plan = plan_splits(df, warm)
    result = train_plan_fold(encode_dataset(df, warm), plan, 1, warm, tmp_path, data_version="v2")
    shipped, meta = load_checkpoint(result.checkpoint_path)
    assert result.warm_start["from"] == str(path) and meta["warm_start"]["from"] == str(path)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(shipped[name], state[name], atol=1e-6)
    cold = train_plan_fold(encode_dataset(df, warm), plan, 1, warm.replace(init_checkpoints=[]), tmp_path / "cold", data_version="v2")
    assert cold.warm_start is None
    assert not torch.allclose(load_checkpoint(cold.checkpoint_path)[0][name], state[name], atol=1e-3)


def test_fold_k_starts_from_champion_fold_k_mod_K():
    assert checkpoint_for_fold([], 3) is None
    assert [checkpoint_for_fold(["a", "b"], k) for k in range(5)] == ["a", "b", "a", "b", "a"]


def test_which_champion_a_retraining_starts_from(champion_fold, tmp_path):
    _, config, path = champion_fold
    champion = {"version": "v1", "checkpoints": [str(path)]}
    paths, reason = warm_start_checkpoints(champion, config.model_name, config.model_overrides)
    assert paths == [str(path)] and "fold k starts from champion v1" in reason
    assert warm_start_checkpoints(champion, config.model_name, config.model_overrides, enabled=False)[0] == []
    paths, reason = warm_start_checkpoints(champion, config.model_name, {"num_hidden_layers": 1})
    assert paths == [] and "starts from the pretrained model" in reason
    paths, reason = warm_start_checkpoints({"version": "v0", "checkpoints": [str(tmp_path / "gone.safetensors")]}, config.model_name, {})
    assert paths == [] and "missing fold checkpoints" in reason
    assert read_sidecar(path)["warm_start"] is None  # the champion itself started cold
    # The champion's own data and split: that training is the champion's (same key, its folds reused).
    same = {**champion, "data_version": "v1", "split_fingerprint": "f1"}
    paths, reason = warm_start_checkpoints(same, config.model_name, config.model_overrides, data_version="v1", split_fingerprint="f1")
    assert paths == [] and "its training, not a warm start" in reason
    assert warm_start_checkpoints(same, config.model_name, config.model_overrides, data_version="v2", split_fingerprint="f1")[0]
    # A sidecar that cannot be read: cold, with the reason, never a crash.
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes())
    sidecar_path(broken).write_text("{not json")
    paths, reason = warm_start_checkpoints({"version": "v3", "checkpoints": [str(broken)]}, config.model_name, {})
    assert paths == [] and "unreadable" in reason
