"""How good is the label audit? Precision and recall against the demo generator's known wrong LLM labels.

Usage (after `make demo`, which trains, promotes, scores and audits the demo tenant):

    .venv/bin/python bench/label_audit.py [--home var] [--tenant demo] [--conversations 1500 --reviews 300 --seed 7]

The demo generator knows each conversation's true class; the store never sees it. The script
regenerates it with the same arguments as `legolas demo-data` (the defaults here), re-runs the
audit of the model in service in process with the default settings (without writing: the store
does not change) and compares, over the audited documents (unreviewed, with an LLM label):

* the flagged set (the flagging reasons, before the queue budget): precision and recall of "the
  LLM label is wrong";
* per reason (every one computed, flagging or only recorded): how many documents it fires on, its
  precision against the base rate (the share of wrong LLM labels among the audited): a reason
  earns a place in `review.flag_reasons` only where its precision is above the base rate;
* the queue after the budget (`review.queue_size`, `review.random_share`): its flagged part's
  precision and its random part's error rate, an estimate of the base rate;
* rankings, precision@50 and @100: the audit's priority (cleanlab self-confidence on out-of-fold
  probabilities), the ensemble's own probabilities (no out-of-fold), the LLM's confidence
  (ascending), and random order (mean of 200 shuffles).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from legolas_ml.data.demo_data import generate_demo_data  # noqa: E402
from legolas_ml.data.quality_gate import normalise_label  # noqa: E402
from legolas_ml.data.splits import SplitPlan  # noqa: E402
from legolas_ml.data.store import open_tenant_store  # noqa: E402
from legolas_ml.lifecycle.artifacts import TenantArtifacts  # noqa: E402
from legolas_ml.core.datasets import read_dataset
from legolas_ml.lifecycle.registry import ModelRegistry  # noqa: E402
from legolas_ml.review.audit import AuditSettings  # noqa: E402
from legolas_ml.core.choices import REASONS
from legolas_ml.review.label_audit import run_label_audit  # noqa: E402


def precision_at(order: np.ndarray, wrong: np.ndarray, k: int) -> float:
    return float(wrong[order[:k]].mean()) if len(order) else 0.0


def _ece(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "var"))
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    truth: dict[str, str] = {}
    generate_demo_data(args.conversations, args.reviews, args.seed, truth=truth)
    home = Path(args.home)
    artifacts = TenantArtifacts(home / "output", args.tenant)
    champion = ModelRegistry(artifacts).champion()
    if champion is None:
        print(f"no model in service for tenant {args.tenant!r} under {home}: run `make demo` first")
        return 2
    plan = SplitPlan.from_dict(json.loads(artifacts.splits_path(champion["data_version"], champion["split_fingerprint"]).read_text()))
    training = read_dataset(artifacts.dataset_path(champion["data_version"]))
    with open_tenant_store(None, home, "legolas", args.tenant) as store:
        report, result = run_label_audit(store, champion, plan=plan, training=training, device="cpu", write=False, log=lambda line: None)
        docs = {d["session_id"]: d for d in store.classification_fields(("llm_prediction", "llm_confidence", "ml_probabilities"))}
    if result is None:
        print("nothing audited: run `make demo` (ensemble_predictions must have scored the documents)")
        return 2
    ids = result.session_ids
    known = [sid in truth for sid in ids]
    ids = [sid for sid, k in zip(ids, known) if k]
    rows = np.flatnonzero(known)
    wrong = np.array([normalise_label(docs[sid]["llm_prediction"])[0] != truth[sid] for sid in ids])
    flagged = result.flagged[rows]
    settings = AuditSettings()
    labels = list(champion["labels"])

    def ensemble_quality(sid):
        probs = docs[sid]["ml_probabilities"]
        return probs.get(normalise_label(docs[sid]["llm_prediction"])[0], 0.0)

    rankings = {
        "audit priority (cleanlab, out-of-fold)": np.argsort(-result.priority[rows], kind="stable"),
        "ensemble probability of the LLM label": np.argsort([ensemble_quality(s) for s in ids], kind="stable"),
        "LLM confidence, lowest first": np.argsort([float(docs[s]["llm_confidence"]) for s in ids], kind="stable"),
    }
    rng = np.random.default_rng(0)
    random_p = {k: float(np.mean([precision_at(rng.permutation(len(ids)), wrong, k) for _ in range(200)])) for k in (50, 100)}

    tp = int((flagged & wrong).sum())
    print(f"tenant {args.tenant}, model {champion['version']} ({len(labels)} classes)")
    print(f"audited {len(ids)} unreviewed LLM labels, {int(wrong.sum())} of them wrong ({wrong.mean():.1%}); "
          f"{report.out_of_fold} with out-of-fold probabilities")
    print(f"flagged by the rules (before the budget) {int(flagged.sum())}: precision {tp / max(int(flagged.sum()), 1):.3f}, recall {tp / max(int(wrong.sum()), 1):.3f}")
    base_rate = float(wrong.mean())
    print(f"\n{'reason':<20} {'role':<8} {'fires on':>8} {'precision':>9} {'recall':>7}  vs base rate {base_rate:.3f}")
    for reason in REASONS:
        mask = np.array([reason in result.signals[i] for i in rows], dtype=bool)
        role = "flags" if reason in settings.flag_reasons else "records"
        if not mask.any():
            print(f"{reason:<20} {role:<8} {0:>8} {'-':>9} {'-':>7}")
            continue
        hit = int((mask & wrong).sum())
        precision = hit / mask.sum()
        verdict = "above" if precision > base_rate else "at or below"
        print(f"{reason:<20} {role:<8} {int(mask.sum()):>8} {precision:>9.3f} {hit / max(int(wrong.sum()), 1):>7.3f}  {verdict}")
    plan = result.queue
    queued = plan.queued[rows] & ~plan.random[rows]
    sampled = plan.random[rows]
    print(f"\nqueue (budget {settings.queue_size}, random share {settings.random_share}): {plan.reason}")
    print(f"  flagged part {int(queued.sum())}: precision {wrong[queued].mean() if queued.any() else 0.0:.3f}; "
          f"random part {int(sampled.sum())}: {wrong[sampled].mean() if sampled.any() else 0.0:.3f} wrong "
          f"(the documents the rules leave: {wrong[~plan.queued[rows]].mean() if (~plan.queued[rows]).any() else 0.0:.3f})")
    print(f"  queue {int(plan.queued.sum())} of {report.audited} audited ({plan.queued.sum() / max(report.audited, 1):.1%})")
    print(f"\n{'ranking':<42} {'p@50':>6} {'p@100':>6}")
    baseline = None
    for name, order in rankings.items():
        p50, p100 = precision_at(order, wrong, 50), precision_at(order, wrong, 100)
        print(f"{name:<42} {p50:>6.3f} {p100:>6.3f}")
        if name.startswith("LLM"):
            baseline = p100
    print(f"{'random (mean of 200)':<42} {random_p[50]:>6.3f} {random_p[100]:>6.3f}")
    n_wrong = int(wrong.sum())
    print(f"{'perfect ranking (the ceiling)':<42} {min(n_wrong, 50) / 50:>6.3f} {min(n_wrong, 100) / 100:>6.3f}")
    audit_p100 = precision_at(rankings["audit priority (cleanlab, out-of-fold)"], wrong, 100)
    print(f"\naudit p@100 / LLM-confidence p@100 = {audit_p100 / baseline if baseline else float('inf'):.2f}x "
          f"(target >= 2x); / random = {audit_p100 / random_p[100] if random_p[100] else float('inf'):.2f}x")
    print(f"probabilities calibrated with temperature {report.temperature:.3f} on {report.calibration_rows} out-of-fold training sessions "
          f"(bound: {report.temperature_at_bound or 'none'}, ECE {_ece(report.ece_before)} -> {_ece(report.ece_after)}), "
          f"{report.ensemble_temperature:.3f} on {report.ensemble_calibration_rows} test sessions for the ensemble's rows "
          f"(bound: {report.ensemble_temperature_at_bound or 'none'}, ECE {_ece(report.ensemble_ece_before)} -> {_ece(report.ensemble_ece_after)})")
    print(f"noise rate per LLM label (cleanlab): {json.dumps({c: round(v, 3) for c, v in report.noise_rate.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
