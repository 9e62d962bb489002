"""The speed levers of issue #18: frozen lower layers (demo preset), fused AdamW, shared trunk, [CLS]-only last layer, PCG64 dropout, the row-sparse word-embedding gradient."""

import json

import numpy as np
import pytest
import torch

from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.core.settings import PRESETS
from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.dropout import DropoutMasks, MaskedDropout, masked_dropout, pcg_dropout
from legolas_ml.training.last_layer import cls_only_last_layer, supports_cls_only
from legolas_ml.training.cross_validation import encode_dataset, plan_splits
from legolas_ml.evaluation.cross_validation import run_cross_validation
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


def test_no_preset_freezes():
    # Issue #28: the demo's frozen folds were weaker than the LLM labels they learned from (docs/recipe.md).
    assert all(values["freeze_layers"] == 0 for values in PRESETS.values())


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


def test_a_fold_trains_with_both_paths_and_ships_the_stock_model(tmp_path, monkeypatch):
    from legolas_ml.training import trainer

    built = []
    real = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", lambda *args, **kwargs: built.append(real(*args, **kwargs)) or built[-1])
    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=2)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)
    model = build_model(cfg, data.labels)
    during = []

    words = model.bert.embeddings.word_embeddings

    def spy(record):  # after each epoch, still inside the loop: all three paths are on
        during.append(("forward" in vars(model.bert.encoder.layer[-1]), any(isinstance(m, MaskedDropout) for m in model.modules()),
                       model.config._attn_implementation, "forward" in vars(words)))

    result = train_fold(cfg, data.labels, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids),
                        tmp_path / "fold0.safetensors", pad_id=data.pad_id, model=model, on_epoch=spy)
    assert result.epochs_run == 2
    assert during == [(True, True, "legolas_sdpa", True)] * 2
    assert [type(o).__name__ for o in built] == ["RowSparseAdamW"] and 0 < built[0].rows_with_moments < len(words.weight)
    assert model.config._attn_implementation == "sdpa" and "forward" not in vars(model.bert.encoder.layer[-1])
    assert "forward" not in vars(words)
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
    assert "forward" not in vars(model.bert.embeddings.word_embeddings)
    assert not any(isinstance(m, MaskedDropout) for m in model.modules())


def test_every_fold_draws_its_own_dropout_masks():
    assert not torch.equal(DropoutMasks((42, 0)).keep((64, 64), 0.1), DropoutMasks((42, 1)).keep((64, 64), 0.1))
    assert torch.equal(DropoutMasks((42, 1)).keep((64, 64), 0.1), DropoutMasks((42, 1)).keep((64, 64), 0.1))


# --- the word-embedding gradient in the touched rows only (legolas_ml.training.row_sparse.py) ---

def _steps_of_batches():
    """Three batches over mostly different rows; row 0 (the padding id) sits in the padded positions."""
    torch.manual_seed(3)
    batches = []
    for low in (1000, 3000, 5000):
        ids = torch.randint(low, low + 2500, (4, 20))
        mask = torch.ones_like(ids)
        mask[1, 12:] = 0
        ids[1, 12:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    batches[2]["input_ids"][0, :5] = batches[0]["input_ids"][0, :5]  # some rows come back
    return batches


def _train_steps(model, batches, clip, max_norm, optimizer):
    """Clipped AdamW steps under a warm-up schedule; each step's clipped word-embedding gradient and total norm."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 2)  # lr changes every step
    seen = []
    for batch in batches:
        (model(**batch).logits * torch.arange(1.0, 4.0)).sum().backward()
        total = clip([p for p in model.parameters()], max_norm)
        seen.append((model.bert.embeddings.word_embeddings.weight.grad.clone(), float(total)))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return seen


def _row_sparse_pair():
    """Two equal MiniLM-shaped models: one trains stock, the other through the row-sparse table."""
    stock_model = _minilm_shaped().eval()
    model = _minilm_shaped().eval()
    model.load_state_dict(stock_model.state_dict())
    return stock_model, model


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])  # clipping that scales, and one that leaves the norm alone
def test_row_sparse_table_trains_as_stock_adamw(max_norm):
    from legolas_ml.training.row_sparse import RowSparseAdamW, RowSparseEmbeddingGrad, row_sparse_embedding_grad, split_table_group
    from legolas_ml.training.trainer import _param_groups

    batches = _steps_of_batches()
    stock_model, model = _row_sparse_pair()
    stock_optimizer = torch.optim.AdamW(_param_groups(stock_model, 0.01), lr=1e-3, fused=True)
    stock = _train_steps(stock_model, batches, torch.nn.utils.clip_grad_norm_, max_norm, stock_optimizer)
    embedding = model.bert.embeddings.word_embeddings
    with row_sparse_embedding_grad(model) as grads:
        assert isinstance(grads, RowSparseEmbeddingGrad) and "forward" in vars(embedding)
        optimizer = RowSparseAdamW(split_table_group(_param_groups(model, 0.01), embedding.weight), grads, lr=1e-3)
        ours = _train_steps(model, batches, grads.clip_grad_norm_, max_norm, optimizer)
        touched = set(grads.touched.tolist())
    assert "forward" not in vars(embedding)  # the stock forward is back
    assert touched == set(batches[-1]["input_ids"].flatten().tolist()) - {0}  # the padding row gets nothing
    every_row = set(torch.cat([b["input_ids"].flatten() for b in batches]).tolist()) - {0}
    assert optimizer.rows_with_moments == len(every_row) < embedding.num_embeddings // 50  # moments for these rows only
    for step, ((expected, expected_norm), (grad, norm)) in enumerate(zip(stock, ours)):
        assert norm == pytest.approx(expected_norm, rel=1e-6), step
        assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-9), step  # stale rows of the last step included
        assert grad[0].abs().max() == 0
    for (name, expected), got in zip(stock_model.named_parameters(), model.parameters()):
        if max_norm > 1:  # no clipping: the same arithmetic in the same order, bit for bit
            assert torch.equal(got, expected), name
        else:  # the norm is summed over the touched rows alone: float rounding apart
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), name


def test_row_sparse_adamw_goes_dense_with_the_same_update():
    from legolas_ml.training.row_sparse import RowSparseAdamW, row_sparse_embedding_grad, split_table_group
    from legolas_ml.training.trainer import _param_groups

    batches = _steps_of_batches()
    stock_model, model = _row_sparse_pair()
    stock_optimizer = torch.optim.AdamW(_param_groups(stock_model, 0.01), lr=1e-3, fused=True)
    with row_sparse_embedding_grad(model) as grads:
        optimizer = RowSparseAdamW(split_table_group(_param_groups(model, 0.01), grads.weight), grads, lr=1e-3)
        for step, batch in enumerate(batches):
            for m, opt in ((stock_model, stock_optimizer), (model, optimizer)):
                m(**batch).logits.sum().backward()
                if step == 1 and m is model:  # a gradient that is not the table's buffer: one dense step from now on
                    m.bert.embeddings.word_embeddings.weight.grad = m.bert.embeddings.word_embeddings.weight.grad.clone()
                opt.step()
                opt.zero_grad(set_to_none=True)
        assert optimizer.rows_with_moments == grads.weight.shape[0]
    for (name, expected), got in zip(stock_model.named_parameters(), model.parameters()):
        assert torch.equal(got, expected), name


def _table_pair(n_rows, seed):
    """A stock embedding table under fused AdamW, and an equal one under the row-sparse gradient and RowSparseAdamW."""
    from legolas_ml.training.row_sparse import RowSparseAdamW, RowSparseEmbeddingGrad

    torch.manual_seed(seed)
    stock_table, table = torch.nn.Embedding(n_rows, 4), torch.nn.Embedding(n_rows, 4)
    table.load_state_dict(stock_table.state_dict())
    rows = RowSparseEmbeddingGrad(table)
    table.forward = rows.forward
    stock = torch.optim.AdamW(stock_table.parameters(), lr=0.1, weight_decay=0.1, fused=True)
    ours = RowSparseAdamW([{"params": [table.weight]}], rows, lr=0.1, weight_decay=0.1)
    return stock_table, stock, table, ours


def test_row_sparse_adamw_on_a_small_table_skips_gradless_steps_and_goes_dense_past_half():
    stock_table, stock, table, ours = _table_pair(10, seed=5)
    for ids, dense in (([1, 2], False), (None, False), ([2, 3, 4, 5, 6], True), ([9], True)):
        for module, optimizer in ((stock_table, stock), (table, ours)):
            if ids is not None:  # None: a step without a backward, which AdamW skips altogether
                module(torch.tensor(ids)).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert torch.equal(table.weight, stock_table.weight), ids
        assert (ours.rows_with_moments == 10) is dense  # 6 of 10 rows with moments: one dense step from then on


def test_row_sparse_adamw_runs_step_hooks_once_and_takes_int32_ids():
    from legolas_ml.training.row_sparse import RowSparseAdamW, RowSparseEmbeddingGrad

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])  # torch now wraps AdamW.step with its hook runner
    table = torch.nn.Embedding(10, 4)
    rows = RowSparseEmbeddingGrad(table)
    table.forward = rows.forward
    optimizer = RowSparseAdamW([{"params": [table.weight]}], rows, lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *args: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: calls.append(("post", rows.weight.grad is not None)))
    for ids in ([1, 2], [2, 3]):
        table(torch.tensor(ids, dtype=torch.int32)).sum().backward()  # nn.Embedding takes int32 ids too
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert calls == ["pre", ("post", True)] * 2
    with pytest.raises(NotImplementedError, match="cannot resume from one"):
        optimizer.load_state_dict(optimizer.state_dict())


def test_row_sparse_adamw_keeps_the_moments_when_their_buffers_grow():
    stock_table, stock, table, ours = _table_pair(5000, seed=6)
    for ids in (torch.arange(0, 900), torch.arange(900, 1800), torch.arange(0, 1800, 7)):  # 900 rows, then 1800
        for module, optimizer in ((stock_table, stock), (table, ours)):
            module(ids).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert torch.equal(table.weight, stock_table.weight)
    assert ours.rows_with_moments == 1800


def test_row_sparse_adamw_refuses_what_it_does_not_implement():
    from legolas_ml.training.row_sparse import RowSparseAdamW, RowSparseEmbeddingGrad

    table = RowSparseEmbeddingGrad(torch.nn.Embedding(10, 4))
    other = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="RowSparseAdamW does not support amsgrad=True, got amsgrad=True"):
        RowSparseAdamW([{"params": [table.weight]}], table, amsgrad=True)
    with pytest.raises(ValueError, match=r"must hold the embedding table's weight alone in one param group .*got it in 1 group\(s\) of sizes \[2\]"):
        RowSparseAdamW([{"params": [table.weight, other]}], table)


def test_row_sparse_embedding_grad_accumulates_over_backwards():
    from legolas_ml.training.row_sparse import row_sparse_embedding_grad

    first, second, _ = _steps_of_batches()
    first["input_ids"][:, 10:] = first["input_ids"][:, :1]  # a row repeated within a batch and across backwards
    stock_model, model = _row_sparse_pair()
    for batch in (first, second, first):
        stock_model(**batch).logits.sum().backward()
    with row_sparse_embedding_grad(model) as grads:
        for batch in (first, second, first):
            model(**batch).logits.sum().backward()
        rows = set(grads.touched.tolist())
        ours = model.bert.embeddings.word_embeddings.weight.grad
        assert torch.equal(ours, stock_model.bert.embeddings.word_embeddings.weight.grad)  # existing + new, as autograd adds
        assert rows == (set(first["input_ids"].flatten().tolist()) | set(second["input_ids"].flatten().tolist())) - {0}
        outside = torch.ones(len(ours), dtype=torch.bool)
        outside[list(rows)] = False
        assert ours[outside].abs().max() == 0  # the invariant clipping relies on


def test_row_sparse_embedding_grad_declines_what_it_cannot_do_exactly():
    from legolas_ml.training.row_sparse import RowSparseEmbeddingGrad, row_sparse_embedding_grad

    model = _minilm_shaped()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen: nothing to write
    with row_sparse_embedding_grad(model) as grads:
        assert not isinstance(grads, RowSparseEmbeddingGrad)
        assert "forward" not in vars(model.bert.embeddings.word_embeddings)
    with pytest.raises(ValueError, match="embedding must be a dense nn.Embedding without max_norm or scale_grad_by_freq, got Embedding"):
        RowSparseEmbeddingGrad(torch.nn.Embedding(10, 4, max_norm=1.0))
    model = _minilm_shaped()
    with pytest.raises(RuntimeError, match="boom"), row_sparse_embedding_grad(model):
        raise RuntimeError("boom")
    assert "forward" not in vars(model.bert.embeddings.word_embeddings)


def test_cpu_clipping_matches_torch_and_skips_the_multiplication_by_one(monkeypatch):
    from legolas_ml.training.row_sparse import clip_grad_norm_

    def grads():
        torch.manual_seed(4)
        params = [torch.nn.Parameter(torch.zeros(30, 20)) for _ in range(3)]
        for p in params:
            p.grad = torch.randn_like(p)
        return params

    for max_norm in (0.5, 1e6):
        stock, ours = grads(), grads()
        expected = torch.nn.utils.clip_grad_norm_(stock, max_norm)
        assert torch.equal(clip_grad_norm_(ours, max_norm), expected)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(stock, ours))

    def no_scaling(*args, **kwargs):
        raise AssertionError("scaled by a coefficient of 1")

    nan = [torch.nn.Parameter(torch.zeros(3))]
    nan[0].grad = torch.tensor([1.0, float("nan"), 2.0])
    assert torch.isnan(clip_grad_norm_(nan, 1.0)) and torch.isnan(nan[0].grad).all()  # as torch: NaN everywhere
    single = torch.nn.Parameter(torch.zeros(4))
    single.grad = torch.full((4,), 2.0)
    assert float(clip_grad_norm_(single, 1.0)) == 4.0 and torch.allclose(single.grad, torch.full((4,), 0.5))

    monkeypatch.setattr(torch, "_foreach_mul_", no_scaling)  # how the gradients are scaled
    clip_grad_norm_(grads(), 1e6)
    with pytest.raises(AssertionError, match="scaled by a coefficient of 1"):
        clip_grad_norm_(grads(), 0.5)  # a norm over the limit is still clipped
