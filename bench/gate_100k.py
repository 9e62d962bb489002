"""Time the quality gate (labeled_dataset's work) over N classification documents in the embedded store.

Usage: .venv/bin/python bench/gate_100k.py [--documents 100000] [--reviews 2000]

Bulk-loads demo conversations into a throw-away litemongo store (the load itself is slow: its
unique-index check is O(n) per insert, so it is timed separately), then times `gate_from_store`
in first-training mode: the trusted-LLM query, the review read, deduplication and quarantine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.quality_gate import gate_from_store  # noqa: E402
from legolas_ml.data.store import open_tenant_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--reviews", type=int, default=2000)
    args = parser.parse_args()
    docs, reviews = generate_demo_data(args.documents, args.reviews, seed=5)
    with tempfile.TemporaryDirectory() as tmp, open_tenant_store(None, tmp, "legolas", "bench") as store:
        started = time.perf_counter()
        for start in range(0, len(docs), 5000):
            store.insert_classifications(docs[start : start + 5000])
        for review in reviews:
            store.insert_review(review)
        print(f"loaded {len(docs)} classifications and {len(reviews)} reviews in {time.perf_counter() - started:.0f}s", flush=True)
        started = time.perf_counter()
        result = gate_from_store(store, has_model=False)
        seconds = time.perf_counter() - started
    print(f"gate (first training): {seconds:.1f}s -> {result.counts['accepted']} rows "
          f"({result.per_source['human']} human, {result.per_source['llm']} LLM), counts {result.counts}")


if __name__ == "__main__":
    main()
