"""One fold, same data/model/batch/lr/epochs: LEGOLAS's trainer vs the Hugging Face Trainer.

Usage (from the project root, after `pip install -e '.[bench]'`):

    .venv/bin/python bench/train_throughput.py [--conversations 1500] [--epochs 1] [--max-length 256]
        [--extra-turns 2] [--variants legolas,hf_default,hf_group_by_length] [--freeze-layers 4]

Variants: `legolas` (its trainer, full fine-tuning, fp32), `legolas_frozen` (with `freeze_layers`,
the demo preset's lever), `hf_default` (HF `Trainer` defaults: random batches, fused AdamW),
`hf_group_by_length` (`train_sampling_strategy="group_by_length"`, HF's own length grouping), and
the bf16 pair `legolas_bf16` / `hf_bf16_group_by_length` (bf16 autocast; HF with its length grouping)
plus `hf_bf16` (random batches), all three skipped by default where the CPU has no native bf16.

To emulate an AVX2-only CPU on an AVX-512/AMX one: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 LEGOLAS_PRECISION=fp32` (MKL's GEMM ignores the first two; the
`kernels` line and the measured fp32 peak show what ran; `LEGOLAS_PRECISION=fp32` also hides bf16).

Each variant runs in its own subprocess (clean peak RSS, no warm caches shared); the parent prints
the kernels that ran (ISA, MKL/oneDNN, threads), then one table: samples/s, the ratio to the HF
Trainer with its defaults, validation balanced accuracy, peak RSS, and useful FLOP/s (6 x
non-embedding params x real tokens, trained layers only count their backward) against the matmul
peak measured here (best of several runs of large square products) and the ISA's theoretical peak.
Every variant's validation balanced accuracy comes from the same evaluation (LEGOLAS's, in the
texts' own order): HF's `Trainer.predict` under `group_by_length` returns predictions in its
length-grouped eval order, so matching them to the targets by position scores chance (the
`hf_predict_ba` column shows it). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("legolas", "legolas_frozen", "hf_default", "hf_group_by_length", "legolas_bf16", "hf_bf16_group_by_length", "hf_bf16")
BF16_VARIANTS = ("legolas_bf16", "hf_bf16_group_by_length", "hf_bf16")


def fold_data(args):
    """Fold 0 of the demo tenant's first-training dataset (the gate applied to generated documents)."""
    from legolas_ml.training.config import TrainingConfig
    from legolas_ml.training.cross_validation import encode_dataset, plan_splits
    from legolas_ml.data.demo_data import generate_demo_data
    from legolas_ml.data.quality_gate import run_gate

    docs, reviews = generate_demo_data(args.conversations, args.conversations // 5, seed=7, extra_turns=args.extra_turns)
    trusted = [d for d in docs if d["classification_method"] in ("llm", "LLM", "llm_long_text") and not d["needs_review"]]
    df = run_gate(reviews, trusted, {}, "first").dataset
    cfg = TrainingConfig(n_folds=5, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length)
    data = encode_dataset(df, cfg)
    plan = plan_splits(df, cfg)
    return cfg, data, data.subset(plan.folds[0].train_ids), data.subset(plan.folds[0].val_ids)


@functools.lru_cache(maxsize=1)
def _minilm():
    from legolas_ml.training.config import TrainingConfig
    from legolas_ml.training.modeling import build_model

    return build_model(TrainingConfig(), ["a", "b"])


def useful_flop_per_token(freeze_layers: int) -> float:
    """2 x non-embedding params forward, 4 x the trained layers' params backward (weights and inputs)."""
    from legolas_ml.training.modeling import _encoder_layers

    model = _minilm()
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in model.parameters()) - embedding
    frozen = sum(p.numel() for layer in _encoder_layers(model)[:freeze_layers] for p in layer.parameters())
    return 2 * total + 4 * (total - frozen)


def executed_flops(freeze_layers: int, real_tokens: int, texts: int, cls_only: bool) -> float:
    """The matmul FLOPs a run executes: the useful ones, less what the [CLS]-only last layer skips.

    With ``cls_only`` the last layer's query, attention-output and feed-forward projections run
    for one position per text instead of every token (training/last_layer.py); its key and value
    projections still run for every token.
    """
    useful = useful_flop_per_token(freeze_layers) * real_tokens
    if not cls_only:
        return useful
    config = _minilm().config
    d, i = config.hidden_size, config.intermediate_size
    skipped_params = 2 * d * d + 2 * d * i  # query + attention output + FFN in + FFN out (weights)
    last_trained = freeze_layers < config.num_hidden_layers
    return useful - (2 + (4 if last_trained else 0)) * skipped_params * (real_tokens - texts)


def kernels() -> dict:
    """What ran: ISA, BLAS and oneDNN builds, threads, bf16 support."""
    import re

    import torch

    from legolas_ml.training.modeling import cpu_supports_bf16

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "mkl": (mkl.group(1) if mkl else "none") if torch.backends.mkl.is_available() else "unavailable",
        "onednn": (onednn.group(1) if onednn else "?") if torch.backends.mkldnn.is_available() else "unavailable",
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpus": os.cpu_count(),
        # Set to emulate an AVX2-only CPU (module docstring); native_bf16 above reads /proc/cpuinfo.
        "isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ},
    }


def evaluate_in_order(model, cfg, data, val) -> float:
    """Validation balanced accuracy of a trained model, fp32, every variant the same way."""
    import numpy as np
    import torch

    from legolas_ml.core.metrics import classification_metrics
    from legolas_ml.training.losses import build_loss
    from legolas_ml.training.trainer import evaluate

    loss_fn = build_loss("ce", np.ones(len(data.labels), dtype=np.int64))
    _, probs = evaluate(model, val, loss_fn, torch.device("cpu"), "fp32", cfg.eval_batch_size, data.pad_id)
    labels = data.labels
    return classification_metrics([labels[i] for i in val.targets], [labels[i] for i in probs.argmax(1)], labels)["balanced_accuracy"]


def run_variant(name: str, args) -> dict:
    import numpy as np

    cfg, data, train, val = fold_data(args)
    lengths = train.encoded.lengths
    print(f"LENGTHS mean {lengths.mean():.0f} p95 {np.percentile(lengths, 95):.0f} n_train {len(lengths)}", file=sys.stderr)
    real_tokens = int(train.encoded.lengths.sum()) * args.epochs
    if name.startswith("legolas"):
        from legolas_ml.training.trainer import train_fold

        from legolas_ml.training.last_layer import supports_cls_only

        cfg = cfg.replace(precision="bf16" if name == "legolas_bf16" else "fp32")
        if name == "legolas_frozen":
            cfg = cfg.replace(freeze_layers=args.freeze_layers)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = train_fold(cfg, data.labels, train, val, Path(tmp) / "bench.safetensors", pad_id=data.pad_id)
            wall = time.perf_counter() - started
        return {
            "samples_per_s": result.train_samples_per_s,
            "train_s": result.timings_s["train"],
            "wall_s": wall,
            "val_balanced_accuracy": result.best_metrics["balanced_accuracy"],
            "precision": result.precision,
            "real_tokens": real_tokens,
            "texts": len(train.targets) * args.epochs,
            "cls_only": supports_cls_only(_minilm()),
            "freeze_layers": getattr(cfg, "freeze_layers", 0),
            "kernels": kernels(),
        }

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from legolas_ml.core.metrics import classification_metrics
    from legolas_ml.training.modeling import build_model, load_tokenizer

    class Rows(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split.targets)

        def __getitem__(self, i):
            ids = self.split.encoded.sequence(i).tolist()
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(self.split.targets[i])}

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.labels)
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            logging_strategy="no",
            bf16=name.startswith("hf_bf16"),
            train_sampling_strategy="group_by_length" if name.endswith("group_by_length") else "random",
            use_cpu=not torch.cuda.is_available(),
            seed=cfg.seed,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=Rows(train),
            data_collator=DataCollatorWithPadding(load_tokenizer(cfg.model_name)),
        )
        started = time.perf_counter()
        out = trainer.train()
        train_s = time.perf_counter() - started
        logits = trainer.predict(Rows(val)).predictions
        optimizer = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__
        fused = bool(trainer.optimizer.param_groups[0].get("fused"))
    y_pred = np.asarray(logits).argmax(axis=1)
    # Trainer.predict's order, matched by position: chance under group_by_length (its eval sampler
    # is length-grouped too); the honest number is evaluate_in_order's.
    predict_ba = classification_metrics([data.labels[i] for i in val.targets], [data.labels[i] for i in y_pred], data.labels)
    return {
        "samples_per_s": len(train.targets) * cfg.epochs / train_s,
        "hf_reported_samples_per_s": out.metrics.get("train_samples_per_second"),
        "train_s": train_s,
        "val_balanced_accuracy": evaluate_in_order(model, cfg, data, val),
        "hf_predict_ba": predict_ba["balanced_accuracy"],
        "precision": "bf16" if name.startswith("hf_bf16") else "fp32",
        "real_tokens": real_tokens,
        "texts": len(train.targets) * args.epochs,
        "cls_only": False,
        "freeze_layers": 0,
        "optimizer": f"{optimizer}{' (fused)' if fused else ''}",
        "kernels": kernels(),
    }


def matmul_peak(dtype_name: str, n: int = 3072, repeats: int = 4, runs: int = 5) -> float:
    """FLOP/s of the best of ``runs`` timings of ``repeats`` (n, n) @ (n, n) products, after a warm-up."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 * repeats / best


def _is_zen1() -> bool:
    """AMD family 23 (0x17) below model 0x30: Zen and Zen+, whose AVX2 runs on 128-bit FMA units."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "23" and int(fields.get("model", "0")) < 0x30


def theoretical_fp32_peak() -> tuple[float, str]:
    """Cores x fp32 FLOP per cycle from the ISA (2 FMA pipes: AVX-512 64, AVX2 32) x the clock.

    The clock is /proc/cpuinfo's current "cpu MHz" (turbo can exceed it); the FMA pipe count is an
    assumption (2, as on Zen 2+ and Skylake-SP+; Zen 1 has 2 x 128-bit, half of it).
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    per_cycle = {"AVX512": 64, "AVX2": 32}.get(capability, 8)
    pipes = "2 FMA pipes"
    if capability == "AVX2" and _is_zen1():
        per_cycle, pipes = 16, "Zen 1: 2 x 128-bit FMA pipes"
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return float("nan"), "clock unknown"
    cores = len(os.sched_getaffinity(0))
    return cores * per_cycle * mhz * 1e6, f"{cores} cores x {per_cycle} FLOP/cycle ({capability}, {pipes}) x {mhz:.0f} MHz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    # 2 extra turns give ~83 tokens on average with a long tail, the distribution the HF
    # reference numbers were measured on; 0 gives the shorter demo conversations.
    parser.add_argument("--extra-turns", type=float, default=2.0)
    parser.add_argument("--freeze-layers", type=int, default=4, help="legolas_frozen's freeze_layers")
    parser.add_argument("--variants", default="", help=f"comma-separated among {VARIANTS}; default: all, hf_bf16 only with native bf16")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and print JSON
    args = parser.parse_args()

    if args.variant:
        result = run_variant(args.variant, args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return

    from legolas_ml.training.modeling import cpu_supports_bf16

    native_bf16 = cpu_supports_bf16()
    if os.environ.get("LEGOLAS_PRECISION") == "fp32":
        native_bf16 = False  # emulating an fp32-only CPU (module docstring)
    variants = args.variants.split(",") if args.variants else [v for v in VARIANTS if v not in BF16_VARIANTS or native_bf16]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose among {list(VARIANTS)}")
    # Emulated bf16 matmuls are slow: a small probe says how slow without minutes of waiting.
    peaks = {"fp32": matmul_peak("fp32"), "bf16": matmul_peak("bf16", *((3072, 4, 5) if native_bf16 else (1024, 1, 2)))}
    theory, theory_how = theoretical_fp32_peak()
    info = kernels()
    print(f"kernels: {info}")
    results = {}
    for name in variants:
        cmd = [sys.executable, __file__, "--variant", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("variant", "variants")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            print(f"{name} failed:\n{out.stderr[-2000:]}")
            continue
        results[name] = json.loads(line[0][7:])
        results[name]["lengths"] = next((l for l in out.stderr.splitlines() if l.startswith("LENGTHS")), "")
        print(f"{name}: done in {results[name]['train_s']:.0f}s", flush=True)

    base = results.get("hf_default", {}).get("samples_per_s")
    if results:
        print("\ntraining texts (tokens): " + next(iter(results.values()))["lengths"][8:])
    print(f"\nmatmul peak measured here: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (3072^3, best of 5), bf16 "
          f"{peaks['bf16'] / 1e9:.0f} GFLOP/s ({'native' if native_bf16 else 'emulated: no native bf16 on this CPU, small probe'}); "
          f"ISA fp32 peak {theory / 1e9:.0f} GFLOP/s = {theory_how}")
    best_hf = {
        precision: max((r["samples_per_s"] for n, r in results.items() if n.startswith("hf_") and r["precision"] == precision), default=None)
        for precision in ("fp32", "bf16")
    }
    print(f"{'variant':<23} {'prec':<5} {'samples/s':>9} {'vs HF':>6} {'vs best HF same prec.':>21} {'val bal acc':>11} "
          f"{'HF predict BA':>13} {'peak RSS MB':>11} {'GFLOP/s':>8} {'% meas.':>7} {'% ISA':>6} {'exec. GFLOP/s':>13} {'exec. % meas.':>13}  optimizer")
    for name, r in results.items():
        flops = useful_flop_per_token(r["freeze_layers"]) * r["real_tokens"] / r["train_s"]
        peak = peaks["bf16" if r["precision"] == "bf16" else "fp32"]
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        same = best_hf[r["precision"]]
        vs_best = f"{r['samples_per_s'] / same:.2f}x" if same else "-"
        isa = f"{100 * flops / theory:.1f}%" if r["precision"] == "fp32" else "-"  # the ISA peak is fp32's
        executed = executed_flops(r["freeze_layers"], r["real_tokens"], r["texts"], r["cls_only"]) / r["train_s"]
        predict = f"{r['hf_predict_ba']:.4f}" if "hf_predict_ba" in r else "-"
        print(f"{name:<23} {r['precision']:<5} {r['samples_per_s']:>9.1f} {ratio:>6} {vs_best:>21} {r['val_balanced_accuracy']:>11.4f} "
              f"{predict:>13} {r['peak_rss_mb']:>11.0f} {flops / 1e9:>8.1f} {100 * flops / peak:>6.1f}% {isa:>6} "
              f"{executed / 1e9:>13.1f} {100 * executed / peak:>12.1f}%  "
              f"{r.get('optimizer', 'AdamW (fused)')}")


if __name__ == "__main__":
    main()
