"""Integrated Gradients on the trained ensemble: LEGOLAS's adaptive, corrected trapezoid vs naive setups.

Usage (after `make demo`, which trains the demo ensemble):

    .venv/bin/python bench/ig_convergence.py [--texts 3] [--max-folds 5] [--naive-steps 1500]

Compares, on the same held-out texts: captum's defaults (Gauss-Legendre) at the fixed 1500 steps
a naive setup uses; captum's `riemann_trapezoid` at fixed 32 steps, uncorrected; and LEGOLAS's
adaptive loop (corrected trapezoid, start 16, double to tolerance 0.05). Prints seconds per text
and the relative completeness error |F(x) - F(x') - sum(attr)| / |F(x) - F(x')| for each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from legolas_ml.core import settings  # noqa: E402
from legolas_ml.lifecycle.artifacts import TenantArtifacts  # noqa: E402
from legolas_ml.core.datasets import read_dataset
from legolas_ml.lifecycle.registry import ModelRegistry  # noqa: E402
from legolas_ml.evaluation.ensemble import FoldEnsemble  # noqa: E402
from legolas_ml.explain.attributions import EnsembleExplainer, IGSettings, baseline_ids, relative_completeness_error  # noqa: E402
from legolas_ml.data.splits import SplitPlan  # noqa: E402


def fixed(explainer: EnsembleExplainer, text: str, steps: int, method: str, correct: bool) -> tuple[float, float]:
    """(seconds, relative error) of one IG computation at a fixed number of steps."""
    started = time.perf_counter()
    tok = explainer.tokenizer
    enc = tok(text, truncation=True, max_length=explainer.ensemble.max_length, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    base = baseline_ids(ids, explainer.special_ids, explainer.pad_id)
    probs = explainer._probability(ids, mask)[0]
    target = int(probs.argmax())
    delta = float(probs[target] - explainer._probability(base, mask)[0, target])
    saved = explainer.settings
    explainer.settings = IGSettings(start_steps=steps, max_steps=steps, method=method)
    try:
        attr = explainer._attribute(ids, base, mask, target, steps)
    finally:
        explainer.settings = saved
    if method == "riemann_trapezoid" and not correct:
        attr = attr * (steps - 1) / steps  # undo LEGOLAS's correction: what captum alone returns
    return time.perf_counter() - started, relative_completeness_error(delta, float(attr.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", default=settings.tenant())
    parser.add_argument("--texts", type=int, default=3)
    parser.add_argument("--max-folds", type=int, default=5)
    parser.add_argument("--naive-steps", type=int, default=1500)
    args = parser.parse_args()

    artifacts = TenantArtifacts(settings.output_dir(), args.tenant)
    manifest = ModelRegistry(artifacts).champion()
    if manifest is None:
        sys.exit(f"no ensemble for tenant {args.tenant!r} under {settings.output_dir()}: run `make demo` first")
    ensemble = FoldEnsemble(manifest["checkpoints"][: args.max_folds], device="cpu", precision="fp32")
    plan_path = artifacts.splits_path(manifest["data_version"], manifest["split_fingerprint"])
    plan = SplitPlan.from_dict(json.loads(plan_path.read_text()))
    data = read_dataset(artifacts.dataset_path(manifest["data_version"])).set_index("session_id")
    texts = data.loc[plan.test_ids[: args.texts], "text"].tolist()
    explainer = EnsembleExplainer(ensemble)
    print(f"{len(ensemble)} folds, {len(texts)} test texts, mean {np.mean([len(t) for t in texts]):.0f} characters")

    rows = {}
    for name, run in (
        (f"captum default (gausslegendre, {args.naive_steps} steps)", lambda t: fixed(explainer, t, args.naive_steps, "gausslegendre", True)),
        ("captum riemann_trapezoid, 32 steps, uncorrected", lambda t: fixed(explainer, t, 32, "riemann_trapezoid", False)),
        ("LEGOLAS adaptive (corrected trapezoid, tol 0.05)", None),
    ):
        seconds, errors, steps = [], [], []
        for text in texts:
            if run is None:
                e = explainer.explain(text)
                seconds.append(e.seconds)
                errors.append(e.completeness_error)
                steps.append(e.steps)
            else:
                s, err = run(text)
                seconds.append(s)
                errors.append(err)
        rows[name] = (np.mean(seconds), np.mean([e for e in errors if e is not None]), np.mean(steps) if steps else None)
        print(f"{name}: {rows[name][0]:.2f} s/text, mean relative completeness error {rows[name][1]:.5f}"
              + (f", mean steps {rows[name][2]:.0f}" if rows[name][2] else ""), flush=True)
    naive = next(iter(rows.values()))
    ours = rows["LEGOLAS adaptive (corrected trapezoid, tol 0.05)"]
    print(f"\nspeed-up vs captum default at {args.naive_steps} steps: {naive[0] / ours[0]:.1f}x "
          f"(errors {naive[1]:.5f} vs {ours[1]:.5f})")


if __name__ == "__main__":
    main()
