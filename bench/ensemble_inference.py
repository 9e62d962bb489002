"""Texts/s of the K-fold ensemble's predict_proba vs a naive loop (K models one after another, pad to 512).

Usage: .venv/bin/python bench/ensemble_inference.py [--folds 10] [--texts 300] [--resident auto|yes|no]

The K checkpoints are the default model with K differently seeded classification heads (the
speed of inference does not depend on training). Prints texts/s for both, the ratio, the largest
probability difference between the two (they must agree), and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from legolas_ml.training.checkpoint import save_checkpoint  # noqa: E402
from legolas_ml.training.config import TrainingConfig  # noqa: E402
from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.evaluation.ensemble import FoldEnsemble  # noqa: E402
from legolas_ml.training.modeling import build_model, load_tokenizer, model_from_state  # noqa: E402
from legolas_ml.training.checkpoint import load_checkpoint  # noqa: E402


def make_folds(k: int, directory: Path, labels: list[str]) -> list[Path]:
    cfg = TrainingConfig()
    paths = []
    for fold in range(k):
        torch.manual_seed(fold)
        model = build_model(cfg.replace(seed=fold), labels)
        sidecar = {"epoch": 0, "metrics": {}, "labels": labels, "model_config": model.config.to_dict(), "training_config": cfg.to_dict()}
        paths.append(save_checkpoint(directory / f"fold{fold}.safetensors", model.state_dict(), sidecar))
    return paths


@torch.inference_mode()
def naive(paths: list[Path], texts: list[str], batch_size: int = 16) -> np.ndarray:
    """What one writes first: every model in turn, fp32, every text padded to 512 tokens."""
    tokenizer = load_tokenizer(TrainingConfig().model_name)
    total = None
    for path in paths:
        state, meta = load_checkpoint(path)
        model = model_from_state(meta["model_config"], state)
        outs = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], padding="max_length", truncation=True, max_length=512, return_tensors="pt")
            outs.append(torch.softmax(model(**enc).logits, -1))
        probs = torch.cat(outs)
        total = probs if total is None else total + probs
        del model
    return (total / len(paths)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--resident", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    docs, _ = generate_demo_data(max(args.texts, 50), 0, seed=1)
    texts = [d["text"] for d in docs[: args.texts]]
    labels = sorted({d["llm_prediction"] for d in docs})
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_folds(args.folds, Path(tmp), labels)
        resident = {"auto": None, "yes": True, "no": False}[args.resident]
        ensemble = FoldEnsemble(paths, resident=resident)
        started = time.perf_counter()
        fast = ensemble.predict_proba(texts)
        fast_s = time.perf_counter() - started
        print(f"ensemble ({args.folds} folds, {ensemble.precision}, resident={ensemble.resident}): "
              f"{len(texts) / fast_s:.1f} texts/s ({fast_s:.1f}s), peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        if args.skip_naive:
            return
        started = time.perf_counter()
        slow = naive(paths, texts)
        slow_s = time.perf_counter() - started
        print(f"naive loop (fp32, pad to 512): {len(texts) / slow_s:.1f} texts/s ({slow_s:.1f}s)")
        print(f"speed-up {slow_s / fast_s:.2f}x; max |p_fast - p_naive| = {np.abs(fast - slow).max():.4f} "
              f"(bf16 vs fp32 rounding); argmax agreement {np.mean(fast.argmax(1) == slow.argmax(1)):.3f}")


if __name__ == "__main__":
    main()
