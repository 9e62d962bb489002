"""Peak memory of one fold of the default model, and how many weight copies the rewind window held.

Run it from the repository root (prints numbers; not a test):

    .venv/bin/python bench/fold_memory.py --epochs 6 --patience 5

To measure an older LEGOLAS the same way, check it out in a worktree and put it first on the path:
``git worktree add /tmp/old <rev> && PYTHONPATH=/tmp/old .venv/bin/python bench/fold_memory.py``.
Each run is one process, so ``ru_maxrss`` is this fold's peak alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):  # an older checkout given by PYTHONPATH is measured instead of this one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.quality_gate import run_gate  # noqa: E402
from legolas_ml.training.config import TrainingConfig  # noqa: E402
from legolas_ml.training.cross_validation import encode_dataset, plan_splits  # noqa: E402
from legolas_ml.training.trainer import train_fold  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()

    docs, reviews = generate_demo_data(args.conversations, 0, seed=7)
    gate = run_gate([], docs, {}, "first")
    config = TrainingConfig(
        n_folds=3, epochs=args.epochs, patience=args.patience, max_length=args.max_length, precision="auto", device="cpu",
        min_delta=0.0,
    )
    data = encode_dataset(gate.dataset, config)
    plan = plan_splits(gate.dataset, config)
    fold = plan.folds[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_fold(
            config, data.labels, data.subset(fold.train_ids), data.subset(fold.val_ids),
            Path(tmp) / "best_model_text_m_fold0.safetensors", pad_id=data.pad_id,
        )
    out = {
        "legolas": str(Path(sys.modules["legolas_ml"].__file__).parent.parent),
        "epochs_run": result.epochs_run,
        "shipped_epoch": result.best_epoch,
        "trigger_epoch": result.trigger_epoch,
        "held_copies_peak": getattr(result, "held_copies_peak", None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - started, 1),
        "n_train": result.n_train,
        "precision": result.precision,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
