"""Rounds of simulated reviews through the real loop, with known truth: does each round improve the model in service?

    .venv/bin/python bench/loop_rounds.py [--arms queue,random,lowconf] [--rounds 3] [--n 60] [--out docs/loop_rounds.md]
        [--variants "default:;design rule:LEGOLAS_RETRAIN_DATA=reviews;cold:LEGOLAS_WARM_START=0"]

A variant is `name:VAR=value,VAR=value` (LEGOLAS_* settings for every command of its arms); each
variant runs every arm from its own fresh home.

Per arm, a throw-away LEGOLAS_HOME gets `make demo`'s tenant `demo` (600 conversations, 120 reviews,
seed 7, the demo preset) and its first training (`demo__training_job`, as `make demo` runs it). Then,
each round: N reviews answered with the generator's truth (the queue's top N, N random unreviewed
documents, or the N with the lowest LLM confidence), imported with `legolas import-reviews`, and the
tenant's job run as the sensor runs it. After each round: the decision and its reason; the
champion's accuracy and balanced accuracy against the truth on a fresh sample of 1,000 conversations
from the same generator that never enter the store, and on the documents no human has reviewed;
the LLM labels' accuracy on the same documents; the review queue's size and its precision at N
(wrong LLM labels among its top N). Whole-process numbers; the CPU is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from legolas_ml.core.settings import PRESETS  # noqa: E402

TENANT, CONVERSATIONS, REVIEWS, SEED, K = "demo", 600, 120, 7, PRESETS["demo"]["n_folds"]


def run(cmd: list[str], env: dict) -> str:
    """Run a command; ``""`` when it succeeded, else why it failed (the step that failed, when Dagster says)."""
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if not result.returncode:
        return ""
    out = result.stdout + result.stderr
    failed = [line.split("Execution of step", 1)[1].split('"')[1] for line in out.splitlines() if "STEP_FAILURE" in line and '"' in line]
    return f"run failed ({', '.join(sorted(set(failed))) or out.strip().splitlines()[-1][:120]})"


def train(env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    tags = json.dumps({"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": str(K - 1)})
    failure = run([str(BIN / "dagster"), "job", "execute", "-m", "legolas_assets.definitions", "-j", f"{TENANT}__training_job", "--tags", tags], env)
    return time.perf_counter() - started, failure


def scores(truth: list[str], predicted: list[str]) -> tuple[float, float]:
    from legolas_ml.core.metrics import classification_metrics

    m = classification_metrics(truth, predicted, classes=sorted(set(truth)))
    return m["accuracy"], m["balanced_accuracy"]


def measure(home: Path, truth: dict[str, str], fresh: list[dict], fresh_truth: dict[str, str], n: int) -> dict:
    from legolas_ml.data.store import open_tenant_store
    from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry
    from legolas_ml.review.queue import review_queue

    registry = ModelRegistry(TenantArtifacts(home / "output", TENANT))
    champion = registry.champion()
    last = registry.history()[-1] if registry.history() else {}
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        reviewed = {r["session_id"] for r in store.reviews.find({"tenant": TENANT}, {"session_id": 1})}
        docs = [d for d in store.classifications.find({"tenant": TENANT}) if d["session_id"] not in reviewed and d["session_id"] in truth]
        # What a reviewer gets: `legolas review-queue`'s export, its random slice included.
        queue = review_queue(store)
    ensemble = FoldEnsemble(champion["checkpoints"], device="cpu", precision=EVAL_PRECISION)
    fresh_pred = ensemble.predict([d["text"] for d in fresh])
    # The version this round trained, whatever was decided: does the retraining learn, apart from the rule?
    trained = last.get("version")
    candidate = fresh_pred if trained in (None, champion["version"]) else FoldEnsemble(
        registry.manifest(trained)["checkpoints"], device="cpu", precision=EVAL_PRECISION).predict([d["text"] for d in fresh])
    unrev_pred = ensemble.predict([d["text"] for d in docs])
    fresh_true = [fresh_truth[d["session_id"]] for d in fresh]
    unrev_true = [truth[d["session_id"]] for d in docs]
    return {
        "decision": last.get("action"), "reason": (last.get("reason") or "")[:160], "champion": champion["version"],
        "fresh": scores(fresh_true, fresh_pred), "candidate": scores(fresh_true, candidate), "fresh_llm": scores(fresh_true, [d["llm_prediction"] for d in fresh]),
        "unreviewed": scores(unrev_true, unrev_pred) if docs else (float("nan"), float("nan")),
        "unreviewed_llm": scores(unrev_true, [d.get("llm_prediction") or "" for d in docs]) if docs else (float("nan"), float("nan")),
        "n_unreviewed": len(docs), "queue": len(queue),
        "queue_precision": sum(q.get("llm_label") != truth.get(q["session_id"]) for q in queue[:n]) / max(min(n, len(queue)), 1),
        "holdout": last.get("holdout_n"), "bound": (((last.get("decision") or {}).get("promotion") or {}).get("comparison")) or {},
        "random_part": (last.get("decision") or {}).get("random_part"),
        "wrong_unreviewed": sum(d.get("llm_prediction") != truth[d["session_id"]] for d in docs),
    }


def score_versions(homes: list[Path], fresh: list[dict], fresh_truth: dict[str, str]) -> None:
    """Each home's decisions in order, with the decided version's accuracy on the fresh sample."""
    from legolas_ml.evaluation.ensemble import EVAL_PRECISION, FoldEnsemble
    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry

    truth = [fresh_truth[d["session_id"]] for d in fresh]
    for home in homes:
        registry = ModelRegistry(TenantArtifacts(home / "output", TENANT))
        for record in registry.history():
            predicted = FoldEnsemble(registry.manifest(record["version"])["checkpoints"], device="cpu", precision=EVAL_PRECISION).predict(
                [d["text"] for d in fresh])
            acc, ba = scores(truth, predicted)
            print(f"| {home.name} | {record['action']} | {record['version'][:8]} | {acc:.3f} / {ba:.3f} | {record.get('holdout_n')} |", flush=True)


def pick(home: Path, arm: str, n: int, truth: dict[str, str], round_no: int) -> list[dict]:
    from legolas_ml.data.store import open_tenant_store

    with open_tenant_store(None, home, "legolas", TENANT) as store:
        reviewed = {r["session_id"] for r in store.reviews.find({"tenant": TENANT}, {"session_id": 1})}
        docs = [d for d in store.classifications.find({"tenant": TENANT}) if d["session_id"] not in reviewed and d["session_id"] in truth]
    random.Random(1000 * round_no + 17).shuffle(docs)
    if arm == "queue":
        from legolas_ml.review.queue import review_queue

        with open_tenant_store(None, home, "legolas", TENANT) as store:
            exported = [q["session_id"] for q in review_queue(store, limit=n)]
        by_id = {d["session_id"]: d for d in docs}
        # The export first (its random slice included), then, if it holds fewer than n, random others.
        docs = [by_id[sid] for sid in exported if sid in by_id] + [d for d in docs if d["session_id"] not in set(exported)]
    elif arm == "lowconf":
        docs.sort(key=lambda d: d.get("llm_confidence") if d.get("llm_confidence") is not None else 1.0)
    return docs[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="queue,random,lowconf")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--variants", default="default:", help="';'-separated name:VAR=value,VAR=value")
    parser.add_argument("--score-versions", nargs="*", default=None, metavar="HOME",
                        help="instead: every decided version of these finished homes, scored on the fresh sample")
    args = parser.parse_args()
    from legolas_ml.data.demo_data import generate_demo_data

    truth: dict[str, str] = {}
    generate_demo_data(CONVERSATIONS, 0, SEED, truth=truth)
    fresh_truth: dict[str, str] = {}
    fresh, _ = generate_demo_data(args.fresh, 0, SEED + 1000, truth=fresh_truth)
    # The generator's hostile extras (empty text, a missing label) are not conversations to score.
    fresh = [d for d in fresh if d["session_id"] in fresh_truth and isinstance(d.get("text"), str) and d["text"].strip()
             and d.get("llm_prediction")]
    if args.score_versions is not None:
        score_versions([Path(h) for h in args.score_versions], fresh, fresh_truth)
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    lines = [f"CPU: {cpu}, {os.cpu_count()} cores; precision {os.environ.get('LEGOLAS_PRECISION', 'auto')}; "
             f"{args.rounds} rounds of {args.n} reviews per arm; fresh sample {args.fresh} conversations (seed {SEED + 1000})", "",
             "| variant | arm | round | decision | champion | fresh acc / BA | this round's candidate: fresh acc / BA | fresh LLM acc / BA | unreviewed acc / BA | unreviewed LLM acc / BA | "
             "unreviewed | wrong LLM labels among them | queue | queue precision@N | training s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    variants = []
    for item in filter(None, args.variants.split(";")):
        name, _, assignments = item.partition(":")
        variants.append((name.strip(), dict(a.split("=", 1) for a in filter(None, assignments.split(",")))))
    for (variant, settings), arm in ((v, a) for v in variants for a in args.arms.split(",")):
        home = Path(tempfile.mkdtemp(prefix=f"legolas-loop-{arm}-"))
        env = {**os.environ, "LEGOLAS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "LEGOLAS_PRESET": "demo",
               "HF_HUB_OFFLINE": "1", **settings}
        (home / "dagster").mkdir(parents=True)
        (home / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        os.environ.update({"LEGOLAS_HOME": str(home)})
        run([str(BIN / "legolas"), "demo-data", "--conversations", str(CONVERSATIONS), "--reviews", str(REVIEWS), "--seed", str(SEED)], env)
        seconds, failure = train(env)
        for round_no in range(args.rounds + 1):
            if round_no:
                chosen = pick(home, arm, args.n, truth, round_no)
                path = home / f"round{round_no}.jsonl"
                with open(path, "w") as handle:
                    for d in chosen:
                        handle.write(json.dumps({"session_id": d["session_id"], "label": truth[d["session_id"]],
                                                 "reviewer": f"simulated-{arm}"}) + "\n")
                run([str(BIN / "legolas"), "import-reviews", "--tenant", TENANT, str(path)], env)
                seconds, failure = train(env)
            m = measure(home, truth, fresh, fresh_truth, args.n)
            if failure:  # the registry's last record is an earlier round's
                m["decision"], m["reason"] = "run failed", failure
            row = (f"| {variant} | {arm} | {round_no} | {m['decision']} | {m['champion'][:8]} | {m['fresh'][0]:.3f} / {m['fresh'][1]:.3f} | "
                   f"{m['candidate'][0]:.3f} / {m['candidate'][1]:.3f} | "
                   f"{m['fresh_llm'][0]:.3f} / {m['fresh_llm'][1]:.3f} | {m['unreviewed'][0]:.3f} / {m['unreviewed'][1]:.3f} | "
                   f"{m['unreviewed_llm'][0]:.3f} / {m['unreviewed_llm'][1]:.3f} | {m['n_unreviewed']} | {m['wrong_unreviewed']} | "
                   f"{m['queue']} | {m['queue_precision']:.2f} | {seconds:.0f} |")
            lines.append(row)
            bound = m["bound"]
            said = f"  <- {m['reason']}" + (f" [holdout {m['holdout']}, diff {bound.get('difference')}, bound {bound.get('ci_low')}..{bound.get('ci_high')}; random part {m['random_part']}]" if bound else "")
            print(row + (said if round_no else ""), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
