"""The training recipe for small tenants: one first training of `make demo`'s tenant, measured against the truth.

Usage (from the project root):

    .venv/bin/python bench/recipe.py --set "freeze_layers=5,epochs=2,loss=focal,focal_gamma=2" --set "epochs=4,lr=1e-4,loss=ce"

Each `--set` is a comma-separated list of `TrainingConfig` fields over the demo preset (`--set ""`
is the preset itself). For each set, in a throw-away store: `make demo`'s tenant `demo` (600 conversations,
120 reviews, seed 7), the quality gate in first-training mode, K folds, the ensemble. Prints the
training time, CV and test balanced accuracy (the test BA on human-labelled test sessions is the
number `make demo` reports), the ensemble's median top probability on the test sessions, and its
true accuracy / BA on the documents no human reviewed and on a fresh sample of 1,000 conversations
(seed 1007) that never enters the store, beside the LLM labels' own. `--markdown` prints table rows
for docs/recipe.md. Numbers depend on the CPU; the script names it.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 7


def parse_set(text: str) -> dict:
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, raw = item.partition("=")
        try:
            values[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            values[key.strip()] = raw.strip()
    return values


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def valid(doc: dict) -> bool:
    """A document the generator made well-formed on purpose (it also makes broken ones for the gate)."""
    return isinstance(doc.get("text"), str) and bool(doc["text"].strip()) and isinstance(doc.get("llm_prediction"), str)


def scores(truth, predicted) -> tuple[float, float]:
    from legolas_ml.core.metrics import classification_metrics

    m = classification_metrics(list(truth), list(predicted), classes=sorted(set(truth)))
    return m["accuracy"], m["balanced_accuracy"]


def one(values: dict, args, docs, reviews, truth, fresh, fresh_truth) -> dict:
    import numpy as np

    from legolas_ml.data.quality_gate import gate_from_store
    from legolas_ml.data.store import open_tenant_store
    from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
    from legolas_ml.core.metrics import metrics_by_label_source
    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.core.identity import training_key
    from legolas_ml.lifecycle.holdout import DEFAULT_HOLDOUT_SHARE, split_holdout
    from legolas_ml.core.settings import PRESETS
    from legolas_ml.training.config import TrainingConfig
    from legolas_ml.training.cross_validation import encode_dataset, plan_splits, train_plan_fold
    from legolas_ml.evaluation.cross_validation import aggregate_folds, evaluate_ensemble

    preset = {k: v for k, v in PRESETS["demo"].items()}
    config = TrainingConfig(**{**preset, **values})
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with open_tenant_store(None, home, "legolas", "demo") as store:
            store.insert_classifications([dict(d) for d in docs])
            for review in reviews:
                store.insert_review(dict(review))
            gate = gate_from_store(store, has_model=False)
        # As labeled_dataset does: the tenant's holdout bucket is never trained on.
        df = split_holdout(gate.dataset, "demo", DEFAULT_HOLDOUT_SHARE).training
        artifacts = TenantArtifacts(home / "output", "demo")
        started = time.perf_counter()
        plan = plan_splits(df, config)
        data = encode_dataset(df, config, cache_dir=artifacts.tokens_dir)
        results = {}
        folds_dir = artifacts.folds_dir(training_key(gate.content_hash, plan.fingerprint(), config.to_dict()))
        for k in range(plan.n_folds):
            result = train_plan_fold(data, plan, k, config, folds_dir, data_version=gate.content_hash)
            results[k] = {**result.to_dict(), "data_version": gate.content_hash, "split_fingerprint": plan.fingerprint()}
        seconds = time.perf_counter() - started
        cv = aggregate_folds(results, plan.n_folds, gate.content_hash, plan.fingerprint())
        test = df.set_index("session_id").loc[plan.test_ids]
        metrics, probs, _ = evaluate_ensemble([r["checkpoint_path"] for r in results.values()], test["text"].tolist(), test["label"].tolist())
        ensemble = FoldEnsemble([r["checkpoint_path"] for r in results.values()], device="cpu", precision=EVAL_PRECISION)
        labels = ensemble.labels
        predicted_test = [labels[i] for i in probs.argmax(1)]
        by_source = metrics_by_label_source(test["label"].tolist(), predicted_test, test["source"].tolist())
        reviewed = {r["session_id"] for r in reviews}
        unreviewed = [d for d in docs if d["session_id"] not in reviewed and d["session_id"] in truth and valid(d)]
        unrev_pred = ensemble.predict([d["text"] for d in unreviewed])
        fresh_pred = ensemble.predict([d["text"] for d in fresh])
    unrev_truth = [truth[d["session_id"]] for d in unreviewed]
    fresh_true = [fresh_truth[d["session_id"]] for d in fresh]
    human = by_source.get("test_metrics_human") or {}
    return {
        "set": ", ".join(f"{k}={v}" for k, v in values.items()) or "demo preset",
        "seconds": seconds,
        "cv_ba": cv.balanced_accuracy["mean"],
        "test_ba": metrics["balanced_accuracy"],
        "test_ba_human": human.get("balanced_accuracy", float("nan")),
        "n_test_human": human.get("n", 0),
        "top_p": float(np.median(probs.max(1))),
        "unreviewed": scores(unrev_truth, unrev_pred),
        "unreviewed_llm": scores(unrev_truth, [d["llm_prediction"] for d in unreviewed]),
        "fresh": scores(fresh_true, fresh_pred),
        "fresh_llm": scores(fresh_true, [d["llm_prediction"] for d in fresh]),
        "epochs": [r.get("best_epoch") for r in results.values()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="comma-separated TrainingConfig fields over the demo preset")
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from legolas_ml.data.demo_data import generate_demo_data

    truth: dict[str, str] = {}
    docs, reviews = generate_demo_data(600, 120, SEED, truth=truth)
    fresh_truth: dict[str, str] = {}
    fresh, _ = generate_demo_data(args.fresh, 0, SEED + 1000, truth=fresh_truth)
    fresh = [d for d in fresh if d["session_id"] in fresh_truth and valid(d)]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; LEGOLAS_PRECISION={os.environ.get('LEGOLAS_PRECISION', 'auto')}", flush=True)
    for text in args.set or [""]:
        r = one(parse_set(text), args, docs, reviews, truth, fresh, fresh_truth)
        if args.markdown:
            print(f"| {r['set']} | {r['seconds']:.0f} | {r['cv_ba']:.3f} | {r['test_ba']:.3f} | {r['test_ba_human']:.3f} | {r['top_p']:.2f} | "
                  f"{r['unreviewed'][0]:.3f} / {r['unreviewed'][1]:.3f} | {r['fresh'][0]:.3f} / {r['fresh'][1]:.3f} |", flush=True)
        else:
            print(f"{r['set']}: {r['seconds']:.0f}s; CV BA {r['cv_ba']:.3f}; test BA {r['test_ba']:.3f} (human {r['test_ba_human']:.3f}, n={r['n_test_human']}); "
                  f"median top p {r['top_p']:.2f}; unreviewed acc/BA {r['unreviewed'][0]:.3f}/{r['unreviewed'][1]:.3f} "
                  f"(LLM {r['unreviewed_llm'][0]:.3f}/{r['unreviewed_llm'][1]:.3f}); fresh {r['fresh'][0]:.3f}/{r['fresh'][1]:.3f} "
                  f"(LLM {r['fresh_llm'][0]:.3f}/{r['fresh_llm'][1]:.3f}); shipped epochs {r['epochs']}", flush=True)


if __name__ == "__main__":
    main()
