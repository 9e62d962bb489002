"""K folds sequential vs as Ray tasks: wall time, device utilisation, and GPU packing.

Usage (from the project root, after `pip install -e '.[ray]'`):

    .venv/bin/python bench/parallel_folds.py [--folds 4] [--epochs 1] [--conversations 600] [--max-length 64]
    .venv/bin/python bench/parallel_folds.py --packing 1,2,4      # GPU machines: MiniLM folds per GPU

Trains the same K folds of the demo tenant's first-training dataset twice: with the sequential
runner in this process (torch uses every core, or the one GPU) and with the Ray runner on an
embedded Ray instance (one task per fold, 1 CPU or 1 GPU each). Wall time includes what a user
waits for: Ray's start and its workers' imports. While each variant runs, GPU utilisation is
sampled with nvidia-smi (or machine-wide CPU utilisation from /proc/stat when there is no GPU).
With ``--packing`` and a GPU, each level p runs p folds per GPU at once (``gpus_per_fold=1/p``)
and reports samples/s per GPU. Not a test: numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.quality_gate import run_gate  # noqa: E402
from legolas_ml.runners import make_runner  # noqa: E402
from legolas_ml.training.config import TrainingConfig  # noqa: E402
from legolas_ml.training.cross_validation import encode_dataset, plan_splits  # noqa: E402


class Utilisation:
    """Samples GPU utilisation (nvidia-smi) or machine-wide CPU utilisation every ``every_s``."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.gpu = shutil.which("nvidia-smi") is not None
        self.samples: list[list[float]] = []  # per sample: one % per GPU, or [CPU %]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Utilisation":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        previous = _cpu_times()
        while not self._stop.wait(self.every_s):
            if self.gpu:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True,
                )
                self.samples.append([float(x) for x in out.stdout.split()])
            else:
                current = _cpu_times()
                busy, total = current[0] - previous[0], current[1] - previous[1]
                previous = current
                self.samples.append([100.0 * busy / total if total else 0.0])

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        per_device = list(zip(*self.samples))
        means = " ".join(f"{sum(s) / len(s):.0f}%" for s in per_device)
        return f"GPU {means}" if self.gpu else f"CPU {means} (machine-wide)"


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def dataset(args, n_folds: int):
    docs, reviews = generate_demo_data(args.conversations, args.conversations // 5, seed=7)
    trusted = [d for d in docs if d["classification_method"] in ("llm", "LLM", "llm_long_text") and not d["needs_review"]]
    df = run_gate(reviews, trusted, {}, "first").dataset
    config = TrainingConfig(
        n_folds=n_folds, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
        patience=max(args.epochs, 1), device="auto",
    )
    return encode_dataset(df, config), plan_splits(df, config), config


def run(label: str, runner, data, plan, folds, config) -> dict:
    with tempfile.TemporaryDirectory() as folds_dir, Utilisation() as usage:
        started = time.perf_counter()
        results = runner.run_folds(data, plan, folds, config, folds_dir, data_version="bench", reuse_finished=False)
        wall = time.perf_counter() - started
    samples = sum(r.n_train * r.epochs_run for r in results.values())
    row = {
        "label": label,
        "wall_s": wall,
        "fold_s": sum(r.duration_s for r in results.values()),
        "samples_per_s": samples / wall,
        "fold_rates": sum(r.train_samples_per_s for r in results.values()),
        "bal_acc": sum(r.best_metrics["balanced_accuracy"] for r in results.values()) / len(results),
        "usage": usage.summary(),
        "device": next(iter(results.values())).device,
    }
    print(f"{label}: {wall:.1f}s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus-per-fold", type=float, default=1)
    parser.add_argument("--packing", default="", help="GPU only: folds per GPU to measure, e.g. 1,2,4")
    args = parser.parse_args()

    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"machine: {os.cpu_count()} CPUs, {n_gpus} GPUs; torch threads {torch.get_num_threads()}; "
          f"K={args.folds}, {args.epochs} epoch(s), {args.conversations} conversations, max_length {args.max_length}")
    data, plan, config = dataset(args, max(args.folds, 2))
    folds = list(range(args.folds))
    rows = [
        run("sequential", make_runner("sequential"), data, plan, folds, config),
        run(f"ray ({args.cpus_per_fold:g} CPU{' + 1 GPU' if n_gpus else ''}/fold)",
            make_runner("ray", cpus_per_fold=args.cpus_per_fold), data, plan, folds, config),
    ]
    print(f"\n{'runner':<28} {'wall s':>7} {'sum fold s':>10} {'samples/s':>9} {'mean bal acc':>12}  utilisation")
    for r in rows:
        print(f"{r['label']:<28} {r['wall_s']:>7.1f} {r['fold_s']:>10.1f} {r['samples_per_s']:>9.1f} {r['bal_acc']:>12.4f}  {r['usage']}")
    print(f"speed-up of ray over sequential (wall): {rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x on {rows[0]['device']}")

    levels = [int(p) for p in args.packing.split(",") if p]
    if levels and not n_gpus:
        print("\n--packing needs a GPU: none here, skipped")
    elif levels:
        data, plan, config = dataset(args, max(max(levels) * n_gpus, 2))
        print(f"\npacking on {n_gpus} x {torch.cuda.get_device_name(0)} ({config.model_name}, batch {args.batch_size})")
        packed = []
        for p in levels:
            cpus = max(1, (os.cpu_count() or 1) // (n_gpus * p))
            runner = make_runner("ray", gpus_per_fold=1 / p if p > 1 else 1, cpus_per_fold=cpus)
            packed.append((p, run(f"{p} fold(s) per GPU", runner, data, plan, list(range(p * n_gpus)), config)))
        print(f"\n{'folds/GPU':>9} {'wall s':>7} {'samples/s/GPU (wall)':>20} {'samples/s/GPU (in loop)':>23}  utilisation")
        for p, r in packed:
            print(f"{p:>9} {r['wall_s']:>7.1f} {r['samples_per_s'] / n_gpus:>20.1f} {r['fold_rates'] / n_gpus:>23.1f}  {r['usage']}")


if __name__ == "__main__":
    main()
