"""Documents/s of `ensemble_predictions` (store read -> K-fold ensemble -> atomic write-back), and peak memory.

Usage (after `make demo`, which leaves a trained default-model ensemble in service):

    .venv/bin/python bench/scoring_throughput.py [--home var] [--tenant demo] [--documents 10000] [--batch 512]

The documents are fresh demo conversations in a temporary embedded store (tenant "bench"), so the
demo tenant is not touched. Prints the first (full) scoring, the incremental re-run (nothing to
score), throughput, peak RSS, and what 100k documents would take at that rate.
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

import torch  # noqa: E402

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.store import open_tenant_store  # noqa: E402
from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble  # noqa: E402
from legolas_ml.lifecycle.artifacts import TenantArtifacts  # noqa: E402
from legolas_ml.lifecycle.registry import ModelRegistry  # noqa: E402
from legolas_ml.scoring.predictions import score_documents  # noqa: E402
from legolas_ml.training.modeling import device_description, resolve_device  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def every(n: int):
    """A log that prints every n-th progress line (and the first)."""
    seen = [0]

    def log(line: str) -> None:
        if seen[0] % n == 0:
            print("  " + line, flush=True)
        seen[0] += 1

    return log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "var"))
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    champion = ModelRegistry(TenantArtifacts(Path(args.home) / "output", args.tenant)).champion()
    if champion is None:
        print(f"no model in service for tenant {args.tenant!r} under {args.home}: run `make demo` first")
        return 2
    device = resolve_device(args.device)
    print(f"device {device_description(device)['name']}, torch threads {torch.get_num_threads()}, precision {EVAL_PRECISION}")
    print(f"ensemble {champion['version']}: {len(champion['checkpoints'])} folds of {champion.get('model_name', 'the default model')}")
    docs, _ = generate_demo_data(args.documents, 0, seed=11)
    tokens = sum(len(d["text"].split()) for d in docs) / len(docs)
    with tempfile.TemporaryDirectory() as tmp:
        with open_tenant_store(None, tmp, "legolas", "bench") as store:
            store.insert_classifications(docs)
        del docs  # the peak below is the scoring's, not the generator's
        ensemble = FoldEnsemble(champion["checkpoints"], device=args.device, precision=EVAL_PRECISION)
        rss_before = peak_rss_mb()
        started = time.perf_counter()
        with open_tenant_store(None, tmp, "legolas", "bench") as store:
            report = score_documents(store, ensemble.predict_proba, ensemble.labels, champion["version"], batch_size=args.batch, log=every(5))
        full = time.perf_counter() - started
        started = time.perf_counter()
        with open_tenant_store(None, tmp, "legolas", "bench") as store:
            again = score_documents(store, ensemble.predict_proba, ensemble.labels, champion["version"], log=lambda line: None)
        rerun = time.perf_counter() - started
    rate = report.scored / full
    print(f"\n{report.scored} documents (mean {tokens:.0f} words) scored in {full:.1f} s: {rate:.1f} documents/s "
          f"(K={len(ensemble)} models each, so {rate * len(ensemble):.0f} model-forwards/s)")
    print(f"incremental re-run: {again.scored} scored, {again.up_to_date} up to date, {rerun:.1f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB (before scoring {rss_before:.0f} MB)")
    print(f"100k documents at this rate: {100_000 / rate / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
