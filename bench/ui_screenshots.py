"""What the Dagster UI shows after a first training and a retraining through the daemon, checked and photographed.

Usage: .venv/bin/python bench/ui_screenshots.py [--out var/screenshots] [--home DIR] [--port 3300] [--demo-preset]

1. A throw-away LEGOLAS_HOME: demo data, the first training with the CLI (3 folds of a tiny model;
   ``--demo-preset`` trains the real demo preset instead, ~10 minutes on 2 cores).
2. 100 reviews imported, then ``dagster dev`` on 127.0.0.1 (webserver + daemon): the sensor's first
   tick requests ``demo__training_job`` and the daemon runs the retraining; 12 more reviews are imported
   and the next tick reports them waiting.
3. Assertions on what the UI serves (its GraphQL API, and the DOM Chromium renders): per-fold
   metadata and curves, per-epoch observations, headline numbers first, inline per-class and
   confusion tables, the review backlog observed and in the sensor's skip reason, artifact links.
4. Headless Chromium screenshots of the asset, check and sensor pages into ``--out``.

``dagster dev`` and the artifacts server run in their own process groups, killed (SIGKILL) on exit.
Exits 1 naming every failed assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}
LOCATION = "legolas_assets.definitions"

ENTRY_FIELDS = """
  label __typename
  ... on FloatMetadataEntry { floatValue }
  ... on IntMetadataEntry { intValue }
  ... on TextMetadataEntry { text }
  ... on MarkdownMetadataEntry { mdStr }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on BoolMetadataEntry { boolValue }
  ... on TableMetadataEntry { table { records } }
"""
ASSET_QUERY = """
query Asset($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 100) { partition runId timestamp metadataEntries { %s } }
      assetObservations(limit: 500) { partition runId timestamp metadataEntries { %s } }
    }
  }
}
""" % (ENTRY_FIELDS, ENTRY_FIELDS)
SENSOR_QUERY = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 20) { status skipReason cursor timestamp runIds } } }
  }
}
"""
RUNS_QUERY = """
query { runsOrError(limit: 20) { ... on Runs { results { runId jobName status tags { key value } } } } }
"""
CHECKS_QUERY = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
      status evaluation { severity metadataEntries { %s } } } } } } }
  }
}
""" % ENTRY_FIELDS


class Failures(list):
    def check(self, ok: bool, what: str) -> bool:
        print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
        if not ok:
            self.append(what)
        return ok


def entries(event: dict) -> dict:
    """Metadata entries of a GraphQL event as ``{label: value}``, in the order the UI lists them."""
    out = {}
    for e in event["metadataEntries"]:
        value = next((e[k] for k in ("floatValue", "intValue", "text", "mdStr", "path", "url", "boolValue", "table") if k in e), None)
        if e["__typename"] == "TableMetadataEntry":
            value = [json.loads(r) for r in e["table"]["records"]]
        out[e["label"]] = value
    return out


class Dagster:
    """``dagster dev`` on 127.0.0.1 in its own process group, with a GraphQL client."""

    def __init__(self, env: dict, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}; see {self.log.name}")
            try:
                data = self.query('{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }')
                if all(e["loadStatus"] == "LOADED" for e in data["workspaceOrError"]["locationEntries"]):
                    return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"dagster dev did not load the code location within {timeout}s; see {self.log.name}")

    def query(self, text: str, **variables) -> dict:
        body = json.dumps({"query": text, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def asset(self, key: str, tenant: str | None = None) -> dict:
        """An asset of ``tenant``; ``None``: the default tenant's, whose keys are unprefixed."""
        return self.query(ASSET_QUERY, key={"path": [tenant, key] if tenant else [key]})["assetOrError"]

    def ticks(self) -> list[dict]:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": "retrain_on_new_reviews"}
        return self.query(SENSOR_QUERY, selector=selector)["sensorOrError"]["sensorState"]["ticks"]

    def runs(self) -> list[dict]:
        return self.query(RUNS_QUERY)["runsOrError"]["results"]

    def checks(self, key: str) -> dict:
        node = self.query(CHECKS_QUERY, key={"path": [key]})["assetNodeOrError"]
        return {c["name"]: c["executionForLatestMaterialization"] for c in node["assetChecksOrError"]["checks"]}

    def stop(self) -> None:
        kill_group(self.process)
        self.log.close()


def kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL what is left after 10 s (dagster dev's children included)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_for(what: str, probe, timeout: float, every: float = 5):
    """Poll ``probe()`` until it returns something truthy; raise naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def run(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    print(f"  ({time.perf_counter() - started:.0f}s)", flush=True)


def write_reviews(env: dict, path: Path, start: int, n: int, year: int) -> None:
    """``n`` reviews of stored conversations, every class in turn, as `legolas import-reviews` reads them (the LLM's label, confirmed)."""
    code = (
        "import json,sys; from legolas_ml.data.store import open_tenant_store; from legolas_ml.core import settings\n"
        "with open_tenant_store(None, settings.data_dir(), 'legolas', 'demo') as s:\n"
        "    docs = sorted(s.classifications.find({'tenant': 'demo', 'llm_prediction': {'$type': 'string'}}), key=lambda d: d['session_id'])\n"
        "by_class = {}\n"
        "for d in docs: by_class.setdefault(d['llm_prediction'], []).append(d)\n"
        "import itertools\n"
        "docs = [d for group in itertools.zip_longest(*by_class.values()) for d in group if d]  # every class in turn\n"
        f"docs = docs[{start}:{start + n}]\n"
        f"lines = [json.dumps({{'session_id': d['session_id'], 'label': d['llm_prediction'], 'text': d['text'], "
        f"'reviewed_at': '{year}-01-01T10:%02d:%02dZ' % (k // 60, k % 60), 'reviewer': 'qa'}}) for k, d in enumerate(docs)]\n"
        f"open({str(path)!r}, 'w').write(chr(10).join(lines) + chr(10))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


class Chromium:
    def __init__(self, binary: str, window: str = "1600,2000") -> None:
        self.binary, self.window = binary, window

    def _args(self, budget_ms: int) -> list[str]:
        return [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={self.window}", f"--virtual-time-budget={budget_ms}", "--run-all-compositor-stages-before-draw"]

    def screenshot(self, url: str, path: Path, budget_ms: int = 20000) -> bool:
        done = subprocess.run(self._args(budget_ms) + [f"--screenshot={path}", url], capture_output=True, text=True, timeout=180)
        return done.returncode == 0 and path.exists() and path.stat().st_size > 10_000

    def dom(self, url: str, budget_ms: int = 20000) -> str:
        done = subprocess.run(self._args(budget_ms) + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
        return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "screenshots")
    parser.add_argument("--home", type=Path, default=None, help="LEGOLAS_HOME to use (default: a new temp dir, removed at the end)")
    parser.add_argument("--port", type=int, default=3300)
    parser.add_argument("--demo-preset", action="store_true", help="train the real demo preset (K=5, MiniLM) instead of a tiny model")
    parser.add_argument("--keep-running", action="store_true", help="leave dagster dev running at the end (prints its pid)")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("Chromium is missing: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    home = args.home or Path(tempfile.mkdtemp(prefix="legolas-ui-"))
    args.out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGOLAS_")}
    env.update({
        "LEGOLAS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "HF_HUB_OFFLINE": "1",
        "LEGOLAS_ARTIFACTS_URL": f"http://127.0.0.1:{args.port + 1}", "LEGOLAS_RETRAIN_THRESHOLD": "50",
        "LEGOLAS_RETRAIN_MAX_AGE_HOURS": "0",
    })
    folds = 5
    if args.demo_preset:
        env["LEGOLAS_PRESET"] = "demo"
    else:
        folds = 3
        env.update({
            "LEGOLAS_N_FOLDS": "3", "LEGOLAS_MODEL_INIT": "scratch", "LEGOLAS_MODEL_OVERRIDES": json.dumps(TINY),
            "LEGOLAS_EPOCHS": "8", "LEGOLAS_LR": "0.005", "LEGOLAS_BATCH_SIZE": "8", "LEGOLAS_MAX_LENGTH": "48",
            "LEGOLAS_PRECISION": "fp32", "LEGOLAS_EXPLAIN_PER_CLASS": "1",
        })
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    failures = Failures()
    started = time.perf_counter()
    dagster = files = None
    try:
        # --- a first training, as `make demo` does it ---
        run([str(BIN / "legolas"), "demo-data", "--conversations", "400", "--reviews", "90", "--seed", "3"], env)
        tags = json.dumps({"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": str(folds - 1)})
        run([str(BIN / "dagster"), "job", "execute", "-m", LOCATION, "-j", "demo__training_job", "--tags", tags], env)
        # A second tenant with other classes and its own K, so the UI shows two tenants.
        run([str(BIN / "legolas"), "demo-data", "--tenant", "insurance", "--domain", "insurance", "--conversations", "240",
             "--reviews", "60", "--seed", "5"], env)
        run([str(BIN / "legolas"), "tenants", "add", "insurance", "--n-folds", "2"], env)
        two = json.dumps({"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "1"})
        run([str(BIN / "dagster"), "job", "execute", "-m", LOCATION, "-j", "insurance__training_job", "--tags", two], env)
        write_reviews(env, home / "retrain.jsonl", 0, 100, 2027)
        run([str(BIN / "legolas"), "import-reviews", str(home / "retrain.jsonl")], env)

        # --- the UI, the daemon, and the artifacts server ---
        files = subprocess.Popen(
            [sys.executable, "-m", "legolas_ml.lifecycle.artifact_server", "--port", str(args.port + 1), "--directory", str(home / "output")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        dagster = Dagster(env, args.port, home / "dagster_dev.log")
        dagster.wait_ready()
        print(f"dagster dev up at {dagster.url} ({time.perf_counter() - started:.0f}s)", flush=True)
        retrain = wait_for(
            "the sensor's retraining run to succeed",
            lambda: next((r for r in dagster.runs() if r["jobName"] == "demo__training_job" and _by_sensor(r) and r["status"] == "SUCCESS"), None)
            or _fail_fast(dagster), timeout=900,
        )
        print(f"retraining run {retrain['runId']} succeeded ({time.perf_counter() - started:.0f}s)", flush=True)
        write_reviews(env, home / "waiting.jsonl", 200, 12, 2028)
        run([str(BIN / "legolas"), "import-reviews", str(home / "waiting.jsonl")], env)
        tick = wait_for(
            "a sensor tick that counts the 12 new reviews",
            lambda: next((t for t in dagster.ticks() if "12 new since the last training" in (t["skipReason"] or "")), None), timeout=180,
        )
        assert_ui(dagster, failures, retrain, tick, folds)
        photograph(dagster, Chromium(chromium), args.out, failures, retrain["runId"])
    finally:
        if dagster is not None and not args.keep_running:
            dagster.stop()
        elif dagster is not None:
            print(f"dagster dev left running: pid {dagster.process.pid} (kill -- -{dagster.process.pid})")
        if files is not None:
            kill_group(files)
        if args.home is None and not args.keep_running:
            shutil.rmtree(home, ignore_errors=True)
    print(f"\n{len(failures)} failed assertion(s) in {time.perf_counter() - started:.0f}s; screenshots in {args.out}")
    for failure in failures:
        print(f"  FAILED: {failure}")
    return 1 if failures else 0


def _by_sensor(run: dict) -> bool:
    """A run the retraining sensor launched (the first trainings are launched from the CLI)."""
    return any(t["key"] == "dagster/sensor_name" for t in run.get("tags", []))


def _fail_fast(dagster: Dagster):
    failed = [r for r in dagster.runs() if r["jobName"] == "demo__training_job" and _by_sensor(r) and r["status"] in ("FAILURE", "CANCELED")]
    if failed:
        raise RuntimeError(f"the retraining run {failed[0]['runId']} ended {failed[0]['status']}")
    return None


def assert_ui(dagster: Dagster, failures: Failures, retrain: dict, tick: dict, folds: int) -> None:
    print("what the UI serves:", flush=True)
    check = failures.check
    # Two tenants in one deployment: insurance has its own assets, its own K and its own champion.
    insurance = dagster.asset("fold_models", tenant="insurance")["assetMaterializations"]
    check(sorted({e["partition"] for e in insurance}) == ["0", "1"], "insurance/fold_models: its own two fold partitions")
    promoted = entries(dagster.asset("promoted_ensemble", tenant="insurance")["assetMaterializations"][0])
    check(promoted.get("decision") == "promoted", f"insurance/promoted_ensemble: its first model is in service ({promoted.get('reason')})")
    decided = entries(dagster.asset("promoted_ensemble")["assetMaterializations"][0])
    check(decided.get("decision") in ("promoted", "rejected", "challenger") and "challenger_version" in decided,
          f"promoted_ensemble (tenant demo): the retraining's decision and the challenger ({decided.get('decision')}: {decided.get('reason')})")
    retrained_tenants = {t["value"] for t in retrain.get("tags", []) if t["key"] == "legolas/tenant"}
    check(retrained_tenants == {"demo"}, f"the sensor's retraining is tenant demo's alone (tags {retrained_tenants})")
    # Per-fold visibility: each fold partition of the retraining run has its own numbers and curve.
    fold_events = [e for e in dagster.asset("fold_models")["assetMaterializations"] if e["runId"] == retrain["runId"]]
    per_fold = {e["partition"]: entries(e) for e in fold_events}
    check(sorted(per_fold) == [str(k) for k in range(folds)], f"fold_models: one materialization per fold partition in one run ({sorted(per_fold)})")
    check(len({m.get("checkpoint") for m in per_fold.values()}) == folds, "fold_models: every partition names its own checkpoint")
    check(all(isinstance(m.get("val_balanced_accuracy"), float) for m in per_fold.values()), "fold_models: numeric val_balanced_accuracy per partition")
    check(all(f"fold {k} training curve" in (m.get("training_curve") or "") for k, m in per_fold.items()), "fold_models: each partition embeds its own training curve")
    check(all("None" not in str(m.get("early_stopping")) for m in per_fold.values()), "fold_models: early stopping in words, never a raw None")
    observations = [e for e in dagster.asset("fold_models")["assetObservations"] if e["runId"] == retrain["runId"]]
    observed = {o["partition"] for o in observations}
    check(observed == set(per_fold) and all("remaining" in entries(o) for o in observations),
          f"fold_models: per-epoch observations with a remaining-time estimate for every fold ({len(observations)} events)")
    # Headline first.
    cv = entries(dagster.asset("cv_metrics")["assetMaterializations"][0])
    check(list(cv)[:2] == ["cv_balanced_accuracy", "balanced_accuracy_mean"] and "±" in cv["cv_balanced_accuracy"],
          f"cv_metrics: headline first ({list(cv)[:3]})")
    check("data:image/png;base64" in (cv.get("fold_curves") or ""), "cv_metrics: one plot of every fold's validation curve")
    ens = entries(dagster.asset("ensemble_model")["assetMaterializations"][0])
    check(list(ens)[:2] == ["test_balanced_accuracy_human", "test_accuracy_human"], f"ensemble_model: headline first ({list(ens)[:3]})")
    check(ens["test_balanced_accuracy_mixed"] == round(ens["test_balanced_accuracy_mixed"], 4), "ensemble_model: 4-digit numbers")
    check(isinstance(ens.get("per_class"), list) and {"class", "recall"} <= set(ens["per_class"][0]), "ensemble_model: per_class is a table")
    check(isinstance(ens.get("confusion_matrix_counts"), list) and isinstance(ens.get("confusion_matrix_normalised"), list),
          "ensemble_model: confusion matrix as inline tables (counts and normalised)")
    check(retrain["runId"] in (ens.get("manifest") or ""), "ensemble_model: the manifest path includes the run")
    url = ens.get("confusion_matrix_url")
    check(bool(url) and _fetch_status(url) == 200, f"ensemble_model: the confusion matrix link opens ({url})")
    xai = dagster.asset("explainability_report")["assetMaterializations"][0]
    report = entries(xai).get("report_url")
    check(bool(report) and _fetch_status(report) == 200, f"explainability_report: the report link opens ({report})")
    checks = dagster.checks("cv_metrics")
    check(checks.get("cv_fold_spread") is not None and checks["cv_fold_spread"]["evaluation"]["severity"] == "WARN",
          "cv_metrics: the fold spread check ran (warning severity)")
    # Retraining visibility.
    data = entries(dagster.asset("labeled_dataset")["assetMaterializations"][0])
    check(str(data.get("vs_model_in_service", "")).endswith("removed: none") or "rows vs" in str(data.get("vs_model_in_service")),
          f"labeled_dataset: the diff against the model in service ({data.get('vs_model_in_service')})")
    reviews = [entries(o) for o in dagster.asset("human_reviews")["assetObservations"]]
    check(bool(reviews) and reviews[0].get("waiting") == 12, f"human_reviews: the latest observation counts 12 waiting ({reviews[:1]})")
    check("12 new since the last training" in tick["skipReason"], f"sensor: the skip reason carries the counts ({tick['skipReason']})")
    demo_state = json.loads(tick["cursor"] or "{}").get("tenants", {}).get("demo", {})
    check(demo_state.get("reviews", {}).get("waiting") == 12, "sensor: the cursor shows tenant demo's backlog in its own entry")
    # The loop: the champion scored every unreviewed document and the audit filled the queue.
    scored = entries(dagster.asset("ensemble_predictions")["assetMaterializations"][0])
    check(scored.get("coverage") == 1.0 and bool(scored.get("model_version")), f"ensemble_predictions: coverage 1.0 ({scored.get('coverage')})")
    audit = entries(dagster.asset("label_audit")["assetMaterializations"][0])
    check((audit.get("review_queue_size") or 0) > 0 and isinstance(audit.get("top_of_queue"), list),
          f"label_audit: a review queue and its top items ({audit.get('review_queue_size')})")
    first_tick = dagster.ticks()[-1]
    check(bool(first_tick["cursor"]) and "reviews" in first_tick["cursor"], "sensor: the cursor is shown from the first tick")


def _fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except OSError:
        return 0


PAGES = [
    # (file, path, what it shows, text the rendered page must contain)
    ("01_ensemble_model.png", "/assets/ensemble_model?view=events", "ensemble_model's latest materialization: headline numbers, per-class and confusion tables",
     ["test_balanced_accuracy_human", "llm_agreement_balanced_accuracy", "worst_class_recall", "confusion_matrix_counts"]),
    ("02_cv_metrics.png", "/assets/cv_metrics?view=events", "cv_metrics: CV BA mean ± std first, fold curves plot, per-fold table",
     ["cv_balanced_accuracy", "±", "fold_curves"]),
    ("03_fold_models_partition_1.png", "/assets/fold_models?view=partitions&partition=1", "fold 1's own partition: its numbers and training curve",
     ["val_balanced_accuracy", "shipped_epoch", "curve_by_epoch"]),
    # The Events page lists materializations and observations but details only the selected (latest)
    # materialization: the per-epoch observations' `remaining` is asserted on GraphQL (assert_ui).
    ("04_fold_models_events.png", "/assets/fold_models?view=events", "fold_models events: per-partition materializations and per-epoch observations",
     ["val_balanced_accuracy", "shipped_epoch", "early_stopping", "training_curve"]),
    ("05_fold_models_plots.png", "/assets/fold_models?view=plots", "fold_models Plots tab: numeric metadata drawn per partition", []),
    ("06_human_reviews.png", "/assets/human_reviews?view=events", "human_reviews observations: total, waiting, oldest waiting",
     ["waiting", "oldest_waiting"]),
    ("07_labeled_dataset.png", "/assets/labeled_dataset?view=events", "labeled_dataset after the retraining: diff against the model in service",
     ["vs_model_in_service", "diff_by_class_and_source"]),
    ("08_cv_metrics_checks.png", "/assets/cv_metrics?view=checks", "cv_metrics checks: the fold-spread warning check", ["cv_fold_spread"]),
    ("09_explainability_report.png", "/assets/explainability_report?view=events", "explainability_report: top-words plot with legend, report link",
     ["report_url"]),
    ("16_promoted_ensemble.png", "/assets/promoted_ensemble?view=events",
     "promoted_ensemble after the retraining: the decision, its bounds, the challenger",
     ["decision", "challenger_version", "difference_bound_low", "holdout_compared_n"]),
    ("12_label_audit.png", "/assets/label_audit?view=events", "label_audit: the review queue, its reasons, noise rates and top items",
     ["review_queue_size", "flagged_share", "queue_by_reason", "top_of_queue"]),
    ("13_ensemble_predictions.png", "/assets/ensemble_predictions?view=events", "ensemble_predictions: coverage, documents/s, why documents were scored",
     ["coverage", "documents_per_s", "to_score_new"]),
    ("14_two_tenants.png", "/assets", "the asset catalog: the default tenant's assets, and a folder per other tenant", ["fold_models", "insurance"]),
    ("15_insurance_fold_partitions.png", "/assets/insurance/fold_models?view=partitions&partition=1",
     "tenant insurance's own folds (K=2): one tenant's partitions", ["val_balanced_accuracy", "shipped_epoch"]),
    ("10_sensor.png", f"/locations/{LOCATION}/sensors/retrain_on_new_reviews", "the retraining sensor: ticks with skip reasons and counts",
     ["retrain_on_new_reviews"]),
]


def photograph(dagster: Dagster, chromium: Chromium, out: Path, failures: Failures, run_id: str) -> None:
    print("what Chromium renders:", flush=True)
    pages = PAGES + [("11_retraining_run.png", f"/runs/{run_id}", "the retraining run: per-fold, per-epoch events in the run's log",
                      ["fold_models"])]
    for name, path, what, needles in pages:
        url = dagster.url + path
        dom = chromium.dom(url)
        missing = [n for n in needles if n not in dom]
        failures.check(not missing, f"{path}: rendered page shows {needles}" + (f" (missing {missing})" if missing else ""))
        failures.check(chromium.screenshot(url, out / name), f"{out / name}: {what}")


if __name__ == "__main__":
    sys.exit(main())
