"""The speed levers of issue #18: frozen lower layers (demo preset), fused AdamW, int8 scoring."""

import numpy as np
import pytest
import torch

from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.settings import PRESETS
from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.cross_validation import encode_dataset, plan_splits, run_cross_validation
from legolas_ml.training.modeling import build_model, freeze_lower_layers
from legolas_ml.training.trainer import build_optimizer, train_fold
from synthetic import separable_frame, tiny_config


def test_freeze_layers_keeps_embeddings_and_lower_layers_as_built(tmp_path):
    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=2, freeze_layers=1)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)
    initial = build_model(cfg, data.labels).state_dict()  # scratch models are seeded: the same weights
    result = train_fold(cfg, data.labels, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids),
                        tmp_path / "fold0.safetensors", pad_id=data.pad_id)
    trained, _ = load_checkpoint(result.checkpoint_path)
    frozen = [k for k in initial if ".embeddings." in k or ".layer.0." in k]
    changed = [k for k in initial if ".layer.1." in k or k.startswith("classifier.")]
    assert frozen and changed
    for key in frozen:
        assert torch.equal(trained[key], initial[key]), f"{key} moved although frozen"
    assert any(not torch.equal(trained[key], initial[key]) for key in changed), "the trained layers did not move"


def test_freeze_layers_is_validated():
    with pytest.raises(ValueError, match="freeze_layers must be an integer >= 0"):
        tiny_config(freeze_layers=-1).validate()
    model = build_model(tiny_config(), ["a", "b"])
    with pytest.raises(ValueError, match=r"freeze_layers must be in 0\.\.2 \(the model's layers\), got 3"):
        freeze_lower_layers(model, 3)
    assert freeze_lower_layers(model, 0) == [] and all(p.requires_grad for p in model.parameters())


def test_optimizer_is_fused_and_skips_frozen_parameters():
    cfg = tiny_config(freeze_layers=2)
    model = build_model(cfg, ["a", "b"])
    freeze_lower_layers(model, cfg.freeze_layers)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    assert all(group["fused"] for group in optimizer.param_groups)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in optimised for p in model.base_model.embeddings.parameters())


def test_only_the_demo_preset_freezes():
    assert PRESETS["default"]["freeze_layers"] == 0 and PRESETS["demo"]["freeze_layers"] > 0


def test_ensemble_runs_the_shared_frozen_trunk_once_with_the_same_probabilities(tmp_path):
    df = separable_frame(30)
    result = run_cross_validation(df, tiny_config(epochs=3, freeze_layers=1), tmp_path, log=lambda line: None)
    paths = [f["checkpoint_path"] for f in result["folds"]]
    texts = df["text"].tolist()
    ensemble = FoldEnsemble(paths, device="cpu", precision="fp32", resident=True)
    assert ensemble.shared_trunk_layers == 1
    probs = ensemble.predict_proba(texts)
    assert ensemble._trunk_checked is True
    check_probabilities(probs)
    singles = [FoldEnsemble([p], device="cpu", precision="fp32").predict_proba(texts) for p in paths]
    assert np.allclose(probs, np.mean(singles, axis=0), atol=1e-6)
    # The stubs are gone afterwards: each model is whole again (the explainer uses them).
    for model in ensemble.models():
        assert type(model.base_model.embeddings).__name__ == "BertEmbeddings"

    # A fold whose trunk differs is never given another fold's: the plain path runs.
    tampered = FoldEnsemble(paths, device="cpu", precision="fp32", resident=True)
    models = list(tampered.models())
    with torch.no_grad():
        models[1].base_model.embeddings.word_embeddings.weight.mul_(1.5)
    tampered_probs = tampered.predict_proba(texts)
    assert tampered._trunk_checked is False
    plain = FoldEnsemble(paths, device="cpu", precision="fp32", resident=True)
    plain.shared_trunk_layers = 0
    for model, other in zip(plain.models(), models):
        model.load_state_dict(other.state_dict())
    assert np.allclose(tampered_probs, plain.predict_proba(texts), atol=1e-6)
