"""End-to-end training on a tiny model: trainer, ensemble and K-fold aggregation."""

from collections import Counter

import numpy as np
import pytest
import torch

from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.cross_validation import encode_dataset, plan_splits
from legolas_ml.evaluation.cross_validation import MissingFoldsError, StaleFoldError, aggregate_folds, run_cross_validation
from legolas_ml.evaluation.ensemble import FoldEnsemble, check_probabilities
from legolas_ml.training.trainer import NonFiniteLossError, train_fold
from synthetic import separable_frame, tiny_config


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    df = separable_frame()
    out_dir = tmp_path_factory.mktemp("cv")
    epochs = []
    result = run_cross_validation(df, tiny_config(), out_dir, log=epochs.append)
    return df, result, epochs


def test_kfold_beats_majority_baseline(cv_run):
    df, result, _ = cv_run
    majority = max(Counter(df["label"]).values()) / len(df)
    assert result["cv"]["balanced_accuracy"]["mean"] > 1 / 3 + 0.2
    assert result["test"]["accuracy"] > majority + 0.2
    assert result["cv"]["n_folds"] == 3 and len(result["cv"]["per_fold"]) == 3


def test_fold_results_are_complete(cv_run):
    _, result, log_lines = cv_run
    for fold in result["folds"]:
        assert fold["best_epoch"] is not None and fold["epochs_run"] == len(fold["history"])
        assert fold["train_samples_per_s"] > 0 and fold["peak_memory_mb"] > 0
        best = max(h["val_balanced_accuracy"] for h in fold["history"])
        assert fold["best_metrics"]["balanced_accuracy"] == pytest.approx(best)
        state, meta = load_checkpoint(fold["checkpoint_path"])
        assert meta["epoch"] == fold["best_epoch"] and meta["labels"] == ["account", "billing", "shipping"]
        assert meta["split_fingerprint"] == result["split_fingerprint"]
    assert any("epoch 0" in line for line in log_lines)  # per-epoch progress reached the callback


def test_ensemble_averages_fold_softmax(cv_run):
    df, result, _ = cv_run
    paths = [f["checkpoint_path"] for f in result["folds"]]
    texts = df["text"].tolist()[:10]
    ensemble = FoldEnsemble(paths, device="cpu", precision="fp32")
    probs = ensemble.predict_proba(texts)
    check_probabilities(probs)
    # The mean of the individual folds' softmax, computed independently.
    singles = [FoldEnsemble([p], device="cpu", precision="fp32").predict_proba(texts) for p in paths]
    assert np.allclose(probs, np.mean(singles, axis=0), atol=1e-5)
    one_at_a_time = FoldEnsemble(paths, device="cpu", precision="fp32", resident=False)
    assert np.allclose(one_at_a_time.predict_proba(texts), probs, atol=1e-6)
    assert ensemble.predict_proba([]).shape == (0, 3)


def test_aggregate_refuses_stale_and_missing_folds(cv_run):
    _, result, _ = cv_run
    summaries = {
        f["fold"]: {**f, "data_version": result["data_version"], "split_fingerprint": result["split_fingerprint"]}
        for f in result["folds"]
    }
    ok = aggregate_folds(summaries, 3, result["data_version"], result["split_fingerprint"])
    assert ok.balanced_accuracy["mean"] == pytest.approx(result["cv"]["balanced_accuracy"]["mean"])
    with pytest.raises(MissingFoldsError, match=r"folds \[2\]"):
        aggregate_folds({k: summaries[k] for k in (0, 1)}, 3, result["data_version"], result["split_fingerprint"])
    stale = dict(summaries)
    stale[1] = {**summaries[1], "data_version": "older"}
    with pytest.raises(StaleFoldError, match="fold 1 "):
        aggregate_folds(stale, 3, result["data_version"], result["split_fingerprint"])


def test_nan_loss_fails_the_fold_and_writes_nothing(tmp_path):
    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=2)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)

    class PoisonedModel(torch.nn.Module):
        """Wraps a tiny model and makes its logits NaN: an injected numerical fault."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **batch):
            out = self.inner(**batch)
            out.logits = out.logits * float("nan")
            return out

    from legolas_ml.training.modeling import build_model

    model = PoisonedModel(build_model(cfg, data.labels))
    path = tmp_path / "fold0.safetensors"
    with pytest.raises(NonFiniteLossError, match="fold 0: training loss became nan at epoch 0"):
        train_fold(cfg, data.labels, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids), path, model=model)
    assert not path.exists()


def test_simple_mode_uses_the_same_loop(tmp_path):
    df = separable_frame(30)
    result = run_cross_validation(df, tiny_config(kfold=False, epochs=3), tmp_path, log=lambda s: None)
    assert len(result["folds"]) == 1 and result["cv"]["n_folds"] == 1
