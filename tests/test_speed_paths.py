"""The speed levers of issue #18: frozen lower layers (demo preset), fused AdamW, shared trunk, [CLS]-only last layer, PCG64 dropout."""

import json

import numpy as np
import pytest
import torch

from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.settings import PRESETS
from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.dropout import DropoutMasks, MaskedDropout, masked_dropout, pcg_dropout
from legolas_ml.training.last_layer import cls_only_last_layer, supports_cls_only
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


# --- the last layer at [CLS] only, and PCG64 dropout (legolas_ml/training/last_layer.py, dropout.py) ---

def _minilm_shaped(labels=("a", "b", "c")):
    """A MiniLM-shaped classifier (6 layers, width 384) from the bundled config: the default's code path."""
    return build_model(tiny_config(model_overrides={}), list(labels))


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(1000, 5000, (4, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padded rows: the [CLS] query must still see only its own text's keys
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_cls_only_last_layer_gives_the_same_logits_and_gradients():
    model = _minilm_shaped().eval()  # eval: no dropout, so both passes compute the same function
    batch = _batch()

    def logits_and_grads():
        model.zero_grad(set_to_none=True)
        logits = model(**batch).logits
        (logits * torch.arange(1.0, 4.0)).sum().backward()  # unequal weights: every class's gradient counts
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_logits, full_grads = logits_and_grads()
    with cls_only_last_layer(model) as applied:
        logits, grads = logits_and_grads()
    assert applied is True
    assert torch.allclose(logits, full_logits, atol=1e-6)
    assert grads.keys() == full_grads.keys()
    scale = max(g.abs().max() for g in full_grads.values())
    for name, grad in full_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-5 * scale), name
    # Restored: the layer runs every position again.
    assert "forward" not in vars(model.bert.encoder.layer[-1])
    assert model.bert(**batch).last_hidden_state.shape[1] == 20


def test_cls_only_skips_the_last_layers_other_positions():
    model = _minilm_shaped().eval()
    seen = []
    hook = model.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    with torch.no_grad(), cls_only_last_layer(model):
        model(**_batch())
    hook.remove()
    assert seen == [torch.Size([4, 1, 1536])]  # the feed-forward block ran for position 0 alone


def test_cls_only_declines_models_whose_output_reads_other_positions():
    from transformers import BertConfig, BertForTokenClassification

    token_model = BertForTokenClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    assert not supports_cls_only(token_model)
    with cls_only_last_layer(token_model) as applied:
        assert applied is False
    assert supports_cls_only(_minilm_shaped())


def test_dropout_masks_keep_one_minus_p_and_are_reproducible():
    keep = DropoutMasks(7).keep((64, 12, 83, 83), 0.1)
    assert keep.dtype == torch.bool and keep.shape == (64, 12, 83, 83)
    assert abs(keep.float().mean().item() - 0.9) < 1e-3  # 5.3M draws: the mean is 0.9 to ~1.3e-4
    assert torch.equal(DropoutMasks(7).keep((5, 9), 0.5), DropoutMasks(7).keep((5, 9), 0.5))
    assert not torch.equal(DropoutMasks(7).keep((50, 90), 0.5), DropoutMasks(8).keep((50, 90), 0.5))
    with pytest.raises(ValueError, match=r"dropout probability p must be in \[0, 1\), got 1.0"):
        DropoutMasks(0).keep((2,), 1.0)


def test_masked_dropout_scales_kept_values_and_routes_the_gradient_through_them():
    x = torch.randn(200, 300, requires_grad=True)
    y = masked_dropout(x, 0.25, DropoutMasks(3))
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_pcg_dropout_swaps_every_dropout_and_restores_the_model():
    model = _minilm_shaped().train()
    batch = _batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    reference = model(**batch).logits
    model.train()
    with pcg_dropout(model, seed=5) as swapped:
        assert swapped == sum(1 for m in model.modules() if isinstance(m, MaskedDropout)) > 0
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())
        assert model.config._attn_implementation == "legolas_sdpa"
        first = model(**batch).logits
        again = model(**batch).logits
        assert not torch.allclose(first, again)  # training mode: fresh masks every call
        model.eval()
        assert torch.allclose(model(**batch).logits, reference, atol=1e-6)  # eval: no dropout at all
        model.train()
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, MaskedDropout) for m in model.modules())
    assert sum(1 for m in model.modules() if type(m) is torch.nn.Dropout) == swapped
    assert not any(hasattr(m, "legolas_dropout_masks") for m in model.modules())
    assert model.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # The same seed, the same masks: a fold's run is reproducible.
    with pcg_dropout(model, seed=5):
        assert torch.allclose(model(**batch).logits, first)


def test_pcg_attention_dropout_matches_eager_attention_with_the_same_mask():
    from transformers.models.bert.modeling_bert import eager_attention_forward

    from legolas_ml.training.dropout import _attention

    module = torch.nn.Module().train()
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[1, :, :, 4:] = False
    module.legolas_dropout_masks = DropoutMasks(11)
    out, _ = _attention(module, q, k, v, mask, dropout=0.2, scaling=0.35)
    keep = DropoutMasks(11).keep((2, 3, 7, 7), 0.2)
    scores = torch.softmax((q @ k.transpose(2, 3) * 0.35).masked_fill(~mask, torch.finfo(torch.float32).min), -1)
    expected = ((scores * keep / 0.8) @ v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    # Eval mode: exactly the stock attention.
    module.eval()
    additive = torch.zeros(2, 1, 7, 7).masked_fill(~mask, torch.finfo(torch.float32).min)
    stock, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.35, dropout=0.2)
    assert torch.allclose(_attention(module, q, k, v, mask, dropout=0.2, scaling=0.35)[0], stock, atol=1e-5)


def test_a_fold_trains_with_both_paths_and_ships_the_stock_model(tmp_path):
    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=2)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)
    model = build_model(cfg, data.labels)
    during = []

    def spy(record):  # after each epoch, still inside the loop: both paths are on
        during.append(("forward" in vars(model.bert.encoder.layer[-1]), any(isinstance(m, MaskedDropout) for m in model.modules()),
                       model.config._attn_implementation))

    result = train_fold(cfg, data.labels, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids),
                        tmp_path / "fold0.safetensors", pad_id=data.pad_id, model=model, on_epoch=spy)
    assert result.epochs_run == 2
    assert during == [(True, True, "legolas_sdpa")] * 2
    assert model.config._attn_implementation == "sdpa" and "forward" not in vars(model.bert.encoder.layer[-1])
    assert not any(isinstance(m, MaskedDropout) for m in model.modules())
    _, sidecar = load_checkpoint(result.checkpoint_path)
    assert "legolas_sdpa" not in json.dumps(sidecar)  # a checkpoint never names the training-only attention


def test_a_failing_fold_leaves_the_model_unpatched(tmp_path, monkeypatch):
    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=2)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)
    model = build_model(cfg, data.labels)

    def broken(*args, **kwargs):
        raise RuntimeError("attention implementation refused")

    monkeypatch.setattr(model, "set_attn_implementation", broken)  # pcg_dropout fails after cls-only is on
    with pytest.raises(RuntimeError, match="attention implementation refused") as failure:
        train_fold(cfg, data.labels, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids),
                   tmp_path / "fold0.safetensors", pad_id=data.pad_id, model=model)
    assert failure.value is not None  # the traceback (and its frames) is still held here
    assert "forward" not in vars(model.bert.encoder.layer[-1])
    assert not any(isinstance(m, MaskedDropout) for m in model.modules())


def test_every_fold_draws_its_own_dropout_masks():
    assert not torch.equal(DropoutMasks((42, 0)).keep((64, 64), 0.1), DropoutMasks((42, 1)).keep((64, 64), 0.1))
    assert torch.equal(DropoutMasks((42, 1)).keep((64, 64), 0.1), DropoutMasks((42, 1)).keep((64, 64), 0.1))
