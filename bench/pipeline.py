"""The whole chain on demo data with K folds on the default model: wall time per asset, and where it went.

Usage: .venv/bin/python bench/pipeline.py [--folds 10] [--epochs 1] [--conversations 1500] [--max-length 128]

Runs the same `legolas_ml` calls the assets make, in one process, against a throw-away embedded
store, and prints a table per asset plus the split of fold training into tokenisation, training
steps, evaluation and checkpoint I/O. Defaults finish in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from legolas_ml.lifecycle.artifacts import TenantArtifacts  # noqa: E402
from legolas_ml.core.identity import training_key
from legolas_ml.training.config import TrainingConfig  # noqa: E402
from legolas_ml.training.cross_validation import encode_dataset, plan_splits, train_plan_fold  # noqa: E402
from legolas_ml.evaluation.cross_validation import aggregate_folds, evaluate_ensemble
from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.explain.attributions import EnsembleExplainer, select_texts, summarise  # noqa: E402
from legolas_ml.data.quality_gate import gate_from_store  # noqa: E402
from legolas_ml.data.store import open_tenant_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--explain-per-class", type=int, default=1)
    args = parser.parse_args()

    config = TrainingConfig(n_folds=args.folds, epochs=args.epochs, max_length=args.max_length)
    times: dict[str, float] = {}
    breakdown = {"tokenisation": 0.0, "train": 0.0, "evaluate": 0.0, "checkpoint": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        docs, reviews = generate_demo_data(args.conversations, args.conversations // 5)
        with open_tenant_store(None, home, "legolas", "bench") as store:
            store.insert_classifications(docs)
            for review in reviews:
                store.insert_review(review)
            started = time.perf_counter()
            gate = gate_from_store(store, has_model=False)
            times["labeled_dataset"] = time.perf_counter() - started
        df = gate.dataset
        artifacts = TenantArtifacts(home / "output", "bench")

        started = time.perf_counter()
        plan = plan_splits(df, config)
        times["stratified_splits"] = time.perf_counter() - started

        started = time.perf_counter()
        data = encode_dataset(df, config, cache_dir=artifacts.tokens_dir)
        breakdown["tokenisation"] = time.perf_counter() - started
        results = {}
        for k in range(plan.n_folds):
            result = train_plan_fold(data, plan, k, config, artifacts.folds_dir(training_key(gate.content_hash, plan.fingerprint(), config.to_dict())), data_version=gate.content_hash)
            results[k] = {**result.to_dict(), "data_version": gate.content_hash, "split_fingerprint": plan.fingerprint()}
            for key in ("train", "evaluate", "checkpoint"):
                breakdown[key] += result.timings_s[key]
            print(f"fold {k}: {result.duration_s:.0f}s, {result.train_samples_per_s:.1f} samples/s, "
                  f"val balanced accuracy {result.best_metrics['balanced_accuracy']:.4f}", flush=True)
        times["fold_models"] = breakdown["tokenisation"] + sum(r["duration_s"] for r in results.values())

        started = time.perf_counter()
        cv = aggregate_folds(results, plan.n_folds, gate.content_hash, plan.fingerprint())
        times["cv_metrics"] = time.perf_counter() - started

        started = time.perf_counter()
        test = df.set_index("session_id").loc[plan.test_ids]
        metrics, probs, ensemble = evaluate_ensemble([r["checkpoint_path"] for r in results.values()], test["text"].tolist(), test["label"].tolist())
        times["ensemble_model"] = time.perf_counter() - started

        started = time.perf_counter()
        y_pred = [ensemble.labels[i] for i in probs.argmax(1)]
        chosen = select_texts(plan.test_ids, test["label"].tolist(), y_pred, per_class=args.explain_per_class)
        explainer = EnsembleExplainer(ensemble)
        summary = summarise([explainer.explain(test["text"].iloc[i]) for i in chosen])
        times["explainability_report"] = time.perf_counter() - started

    total = sum(times.values())
    print(f"\n{len(df)} sessions, K={args.folds}, {args.epochs} epoch(s), max_length {args.max_length}, precision {ensemble.precision}")
    print(f"CV balanced accuracy {cv.balanced_accuracy['mean']:.4f} ± {cv.balanced_accuracy['std']:.4f}; "
          f"ensemble test balanced accuracy {metrics['balanced_accuracy']:.4f}; IG {summary.seconds_per_text:.1f}s/text, "
          f"{summary.share_converged:.0%} converged")
    print(f"{'asset':<24} {'seconds':>8} {'share':>6}")
    for name, seconds in times.items():
        print(f"{name:<24} {seconds:>8.1f} {100 * seconds / total:>5.1f}%")
    print(f"{'total':<24} {total:>8.1f}")
    print("\nfold_models breakdown: " + ", ".join(f"{k} {v:.1f}s" for k, v in breakdown.items()))


if __name__ == "__main__":
    main()
