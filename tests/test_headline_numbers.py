"""`ensemble_model` reports the human-labelled test score and the agreement with the LLM apart."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from dagster import build_asset_context

from dagster_helpers import DEMO, resources
from legolas_assets import evaluation
from legolas_ml.core.contracts import CvMetrics, FoldModel, LabeledDataset, StratifiedSplits
from legolas_ml.lifecycle import candidate
from legolas_ml.data.splits import Fold, SplitPlan
from legolas_ml.core.metrics import classification_metrics
from legolas_ml.core.datasets import write_dataset

LABELS = ["a", "b"]


def _fold(checkpoint, fingerprint: str) -> FoldModel:
    """A fold partition's value: only the checkpoint and the training key matter to ensemble_model."""
    return FoldModel(
        fold=0, checkpoint_path=str(checkpoint), best_epoch=1, best_metrics={}, trigger_epoch=None, rewind_epoch=None,
        stop_reason="ran every epoch", epochs_run=1, history=[], duration_s=1.0, train_samples_per_s=1.0, n_train=2, n_val=2,
        device="cpu", precision="fp32", peak_memory_mb=1.0, data_version="d1", split_fingerprint=fingerprint, training_key="v1",
        training_config={}, curve_path="", log_path="",
    )


def _ensemble_model():
    return [a for a in evaluation.build_evaluation(DEMO) if a.key == DEMO.key("ensemble_model")][0]


def test_manifest_and_metadata_show_the_human_score_apart_from_the_llm_agreement(tmp_path, monkeypatch):
    # A first training's test split: 4 human-labelled sessions, 6 LLM-labelled. The ensemble repeats
    # the LLM's labels and says "a" to every human-labelled session: the mixed score looks good.
    rows = [(f"h{i}", "ab"[i % 2], "human") for i in range(4)] + [(f"l{i}", "aaabbb"[i], "llm") for i in range(6)]
    predicted = {"h0": "a", "h1": "a", "h2": "a", "h3": "a", **{sid: label for sid, label, src in rows if src == "llm"}}
    # Four training sessions for the fold (the TF-IDF baseline trains on them; the ensemble is faked).
    pool = [("t0", "a", "llm"), ("t1", "b", "llm"), ("t2", "a", "llm"), ("t3", "b", "llm")]
    dataset = write_dataset(tmp_path / "labeled.jsonl", [
        {"session_id": sid, "text": f"text {sid}", "label": label, "source": src} for sid, label, src in rows + pool
    ])
    plan = SplitPlan(test_ids=[r[0] for r in rows], folds=[Fold(index=0, train_ids=["t0", "t1"], val_ids=["t2", "t3"])], seed=0, kfold=False)
    split_path = tmp_path / "split.json"
    split_path.write_text(json.dumps(plan.to_dict()))

    def evaluate(paths, texts, y_true, device, precision):
        y_pred = [predicted[text.removeprefix("text ")] for text in texts]
        probs = np.array([[1.0, 0.0] if p == "a" else [0.0, 1.0] for p in y_pred])  # (n, n_classes)
        return classification_metrics(y_true, y_pred, classes=LABELS), probs, SimpleNamespace(labels=LABELS)

    monkeypatch.setattr(candidate, "evaluate_ensemble", evaluate)
    monkeypatch.setattr(candidate, "read_sidecar", lambda path: {"sha256": "0" * 64})
    summary = {"rows": 10, "per_source": {"human": 4, "llm": 6}, "per_class": {"a": 5, "b": 5}}
    output = _ensemble_model()(
        build_asset_context(resources=resources(tmp_path)),
        labeled_dataset=LabeledDataset(tenant="demo", path=str(dataset), holdout_path="", data_version="d1", mode="first",
                                       classes=LABELS, summary=summary),
        stratified_splits=StratifiedSplits(tenant="demo", path=str(split_path), fingerprint=plan.fingerprint(), data_version="d1",
                                           n_folds=1, kfold=False, classes=LABELS, n_test=len(rows)),
        fold_models={"0": _fold(tmp_path / "fold0.safetensors", plan.fingerprint())},
        cv_metrics=CvMetrics(n_folds=1, data_version="d1", split_fingerprint=plan.fingerprint(), balanced_accuracy={"mean": 0.8, "std": 0.01},
                             accuracy={"mean": 0.8, "std": 0.01}, f1_macro={"mean": 0.8, "std": 0.01}, per_class_recall={},
                             per_fold=[], fold_spread=0.0),
    )

    manifest, metadata = output.value.manifest, output.metadata
    assert manifest["test_metrics_human"] == {"n": 4, "balanced_accuracy": 0.5, "accuracy": 0.5}
    assert manifest["llm_agreement"] == {"n": 6, "balanced_accuracy": 1.0, "accuracy": 1.0}
    assert manifest["test_metrics"]["balanced_accuracy"] == pytest.approx(0.8)  # mixed: kept for the chance check
    on_disk = json.loads(open(output.value.manifest_path).read())
    assert on_disk["test_metrics_human"] == manifest["test_metrics_human"] and on_disk["llm_agreement"] == manifest["llm_agreement"]
    assert list(metadata)[:7] == [
        "test_balanced_accuracy_human", "test_accuracy_human", "test_n_human",
        "llm_agreement_balanced_accuracy", "llm_agreement_accuracy", "llm_agreement_n", "test_balanced_accuracy_mixed",
    ]
    assert metadata["test_balanced_accuracy_human"].value == 0.5 and metadata["test_balanced_accuracy_mixed"].value == 0.8
    assert metadata["llm_agreement_n"].value == 6 and "test_balanced_accuracy" not in metadata
