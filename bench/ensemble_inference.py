"""Scoring many documents with a trained K-fold ensemble: eager fp32 vs dynamic int8 vs ONNX Runtime.

Usage (from the project root):

    .venv/bin/python bench/ensemble_inference.py [--folds 5] [--texts 1000] [--onnx] [--naive]

The ensemble is trained here first (the demo preset on `--conversations` demo conversations with
the default MiniLM: the heads and the top layers are trained, as in `make demo`), into
`--ensemble-dir` (default `var/bench/ensemble`; a second run reuses the finished folds). Then
`--texts` fresh demo conversations (another seed: never trained on) are scored by:

* `eager fp32`: `FoldEnsemble`, the fallback and the precision of every reported metric;
* `eager fp32, every fold whole`: the same without the shared frozen trunk (demo folds share
  their frozen lower layers; `FoldEnsemble` runs them once per batch);
* `eager fp32, whole, all positions`: also without the [CLS]-only last layer (`cls_only=False`):
  what scoring cost before either lever;
* `int8`: torch's dynamic int8 quantisation of every Linear layer (fbgemm);
* with `--onnx`: ONNX Runtime fp32 and ONNX Runtime dynamic int8 (`onnxruntime.quantization`) of the
  same folds, exported with `torch.onnx.export` (export and quantisation time printed apart);
* with `--naive`: every model in turn, every text padded to 512 tokens (what one writes first).

Prints texts/s, speed-up over eager fp32 with every fold whole, argmax agreement with eager fp32, the largest probability
difference, balanced accuracy against the generator's true classes, and peak RSS. Not a test.
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

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.quality_gate import run_gate  # noqa: E402
from legolas_ml.evaluation.ensemble import FoldEnsemble  # noqa: E402
from legolas_ml.core.metrics import classification_metrics  # noqa: E402
from legolas_ml.core.settings import PRESETS  # noqa: E402
from legolas_ml.training.batching import collate, length_grouped_batches  # noqa: E402
from legolas_ml.training.checkpoint import load_checkpoint  # noqa: E402
from legolas_ml.training.config import TrainingConfig  # noqa: E402
from legolas_ml.evaluation.cross_validation import run_cross_validation  # noqa: E402
from legolas_ml.training.modeling import load_tokenizer, model_from_state  # noqa: E402


def train_ensemble(args) -> tuple[list[str], dict]:
    docs, reviews = generate_demo_data(args.conversations, args.conversations // 5, seed=7)
    trusted = [d for d in docs if d["classification_method"] in ("llm", "LLM", "llm_long_text") and not d["needs_review"]]
    df = run_gate(reviews, trusted, {}, "first").dataset
    preset = PRESETS["demo"]
    config = TrainingConfig(
        n_folds=args.folds, epochs=preset["epochs"], max_length=preset["max_length"], freeze_layers=preset.get("freeze_layers", 0)
    )
    started = time.perf_counter()
    out = run_cross_validation(df, config, Path(args.ensemble_dir), log=lambda line: None)
    print(f"trained ensemble: {args.folds} folds on {len(df)} sessions in {time.perf_counter() - started:.0f}s "
          f"(reused folds are instant), test balanced accuracy {out['test']['balanced_accuracy']:.4f}")
    return [f["checkpoint_path"] for f in out["folds"]], config.to_dict()


class Int8Ensemble(FoldEnsemble):
    """Every fold's Linear layers quantised to int8 (weights; activations per batch), fbgemm kernels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_trunk_layers = 0  # quantised trunks are not compared

    def _load(self, k):
        return torch.ao.quantization.quantize_dynamic(super()._load(k), {torch.nn.Linear}, dtype=torch.qint8)


def timed(name: str, predict, texts: list[str]) -> tuple[np.ndarray, float]:
    predict(texts[:64])  # warm-up: lazy loading, kernel selection
    started = time.perf_counter()
    probs = predict(texts)
    seconds = time.perf_counter() - started
    print(f"  {name}: {len(texts) / seconds:.1f} texts/s ({seconds:.1f}s)", flush=True)
    return probs, seconds


def onnx_predictors(paths: list[str], ensemble: FoldEnsemble, tmp: Path) -> dict:
    """ONNX Runtime fp32 and int8 predictors over the same folds (exported here)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Probabilities(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return torch.softmax(self.model(input_ids=input_ids, attention_mask=attention_mask).logits, dim=-1)

    started = time.perf_counter()
    files = {"fp32": [], "int8": []}
    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "probs": {0: "batch"}}
    for k, path in enumerate(paths):
        state, meta = load_checkpoint(path)
        model = model_from_state(meta["model_config"], state)
        fp32 = tmp / f"fold{k}.onnx"
        torch.onnx.export(Probabilities(model), example, str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["probs"], dynamic_axes=axes, opset_version=17, dynamo=False)
        files["fp32"].append(fp32)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    for fp32 in files["fp32"]:
        int8 = fp32.with_suffix(".int8.onnx")
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        files["int8"].append(int8)
    print(f"  ONNX export {export_s:.1f}s, int8 quantisation {time.perf_counter() - started:.1f}s for {len(paths)} folds")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    pad_id = ensemble.tokenizer.pad_token_id or 0

    def predictor(kind):
        sessions = [ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for f in files[kind]]

        def predict(texts):
            encoded = ensemble.encode(texts)
            total = np.zeros((len(texts), len(ensemble.labels)), dtype=np.float32)
            for session in sessions:
                for idx in length_grouped_batches(encoded.lengths, 64):
                    batch = collate(encoded, idx, pad_id)
                    total[idx] += session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
            return total / len(sessions)

        return predict

    return {f"ONNX Runtime {kind}": predictor(kind) for kind in ("fp32", "int8")}


@torch.inference_mode()
def naive(paths: list[str], texts: list[str], model_name: str, batch_size: int = 16) -> np.ndarray:
    """What one writes first: every model in turn, fp32, every text padded to 512 tokens."""
    tokenizer = load_tokenizer(model_name)
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
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=1500, help="demo conversations the ensemble trains on")
    parser.add_argument("--texts", type=int, default=1000, help="fresh conversations scored")
    parser.add_argument("--ensemble-dir", default=str(ROOT / "var" / "bench" / "ensemble"))
    parser.add_argument("--manifest", help="score with this trained ensemble (a version's manifest.json, e.g. make demo's champion) instead")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32 and int8 (needs onnxruntime, onnx)")
    parser.add_argument("--naive", action="store_true")
    args = parser.parse_args()

    if args.manifest:
        import json

        paths = json.loads(Path(args.manifest).read_text())["checkpoints"]
        config = TrainingConfig().to_dict()
        print(f"ensemble: {len(paths)} folds of {args.manifest}")
    else:
        paths, config = train_ensemble(args)
    truth: dict[str, str] = {}
    docs, _ = generate_demo_data(max(args.texts, 50), 0, seed=1001, truth=truth)
    docs = docs[: args.texts]
    texts = [d["text"] for d in docs]
    eager = FoldEnsemble(paths, device="cpu", precision="fp32")
    print(f"scoring {len(texts)} fresh texts with {len(paths)} folds, torch threads {torch.get_num_threads()}, "
          f"quantized engines {torch.backends.quantized.supported_engines}:")
    whole = FoldEnsemble(paths, device="cpu", precision="fp32")
    whole.shared_trunk_layers = 0
    every_position = FoldEnsemble(paths, device="cpu", precision="fp32")
    every_position.shared_trunk_layers, every_position.cls_only = 0, False
    predictors = {"eager fp32": eager.predict_proba, "eager fp32, every fold whole": whole.predict_proba,
                  "eager fp32, whole, all positions": every_position.predict_proba,
                  "int8 (torch dynamic)": Int8Ensemble(paths, device="cpu", precision="fp32").predict_proba}
    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx:
            predictors.update(onnx_predictors(paths, eager, Path(tmp)))
        if args.naive:
            predictors["naive loop (fp32, pad to 512)"] = lambda t: naive(paths, t, config["model_name"])
        results = {name: timed(name, predict, texts) for name, predict in predictors.items()}
    reference, _ = results["eager fp32"]
    reference_s = results["eager fp32, every fold whole"][1]
    labels = eager.labels
    y_true = [truth[d["session_id"]] for d in docs]
    print(f"\n{'path':<30} {'texts/s':>8} {'vs whole':>8} {'argmax agree':>12} {'max |dp|':>9} {'bal acc (truth)':>15}")
    for name, (probs, seconds) in results.items():
        agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        ba = classification_metrics(y_true, [labels[i] for i in probs.argmax(1)], labels)["balanced_accuracy"]
        print(f"{name:<30} {len(texts) / seconds:>8.1f} {reference_s / seconds:>7.2f}x {agree:>12.4f} "
              f"{float(np.abs(probs - reference).max()):>9.4f} {ba:>15.4f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
