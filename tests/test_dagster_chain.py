"""The Dagster platform end to end on a tiny model: assets, checks, metadata, CLI paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from dagster_helpers import ASSETS, key, run_chain
from synthetic import tiny_env
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.data.demo_data import generate_demo_data
from legolas_ml.data.store import open_tenant_store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def fill_demo(home: Path, tenant="demo", conversations=400, reviews=90):
    docs, revs = generate_demo_data(conversations, reviews, seed=3)
    with open_tenant_store(None, home, "legolas", tenant) as store:
        store.insert_classifications(docs)
        for r in revs:
            store.insert_review(r)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    fill_demo(home)
    instance = DagsterInstance.ephemeral()
    result = run_chain(home, instance)
    return home, instance, result


def _metadata(result, asset):
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key(asset)]
    return mats[-1].materialization.metadata


def test_whole_chain_materializes(chain):
    home, _, result = chain
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {name for name in (  # the default tenant's keys are unprefixed
        "labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble", "explainability_report",
        "ensemble_predictions", "label_audit",
    )}
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 17
    assert [c.check_name for c in checks if not c.passed and c.severity.value == "ERROR"] == []


def test_metadata_users_look_for(chain):
    home, _, result = chain
    data = _metadata(result, "labeled_dataset")
    assert data["mode"].value == "first" and data["from_llm"].value > 0 and data["quarantined"].value > 0
    assert data["vs_model_in_service"].value == "no model in service: a first training"
    cv = _metadata(result, "cv_metrics")
    assert 0 < cv["balanced_accuracy_mean"].value <= 1 and cv["per_fold"].value.records
    ens = _metadata(result, "ensemble_model")
    assert ens["test_balanced_accuracy_mixed"].value > 1 / 5 + 0.05  # the blocking check's own threshold
    assert ens["test_n_human"].value + ens["llm_agreement_n"].value == ens["test_n"].value
    assert "data:image/png;base64" in ens["confusion_matrix_plot"].value
    # The TF-IDF + LR baseline beside the ensemble: its saved folds, its row of the table, and the
    # warning check that compares exactly these two numbers.
    rows = {r.data["model"]: r.data for r in ens["vs_baseline"].value.records}
    assert rows["ensemble"]["test_balanced_accuracy_mixed"] == ens["test_balanced_accuracy_mixed"].value
    assert rows["TF-IDF + LR baseline"]["test_balanced_accuracy_mixed"] == ens["baseline_test_balanced_accuracy_mixed"].value
    manifest = json.loads(Path(ens["manifest"].value).read_text())
    assert manifest["baseline"]["path"] == ens["baseline"].value and Path(ens["baseline"].value).exists()
    assert len(manifest["baseline"]["per_fold"]) == 3
    beats = {c.check_name: c for c in result.get_asset_check_evaluations()}["ensemble_beats_baseline"]
    assert beats.severity.value == "WARN"
    assert beats.metadata["baseline_test_balanced_accuracy_mixed"].value == ens["baseline_test_balanced_accuracy_mixed"].value
    assert beats.passed == (manifest["test_metrics"]["balanced_accuracy"] >= manifest["baseline"]["test_metrics"]["balanced_accuracy"])
    folds = [m.materialization for m in result.get_asset_materialization_events() if m.asset_key == key("fold_models")]
    assert sorted(m.partition for m in folds) == ["0", "1", "2"]
    xai = _metadata(result, "explainability_report")
    # One text per class the tiny model predicts: 4 or 5 of the 5 classes, depending on the CPU's kernels (Zen 4: 4).
    assert xai["texts_explained"].value >= 4 and Path(xai["report"].value).exists()
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    assert registry.champion()["version"] == ens["version"].value  # a first training is promoted on the checks
    promoted = _metadata(result, "promoted_ensemble")
    assert promoted["decision"].value == "promoted" and "first model" in promoted["reason"].value
    assert data["holdout_sessions"].value > 0  # human reviews held out of every training
    logs = list((home / "output" / "logs").glob("training_*.log"))
    assert logs and "fold 2 epoch 0" in logs[0].read_text()


def test_the_loop_scores_and_audits_after_the_promotion(chain):
    home, _, result = chain
    predictions = _metadata(result, "ensemble_predictions")
    audit = _metadata(result, "label_audit")
    champion = ModelRegistry(TenantArtifacts(home / "output", "demo")).champion()["version"]
    assert predictions["model_version"].value == champion == audit["model_version"].value
    assert predictions["coverage"].value == 1.0 and predictions["scored"].value > 0
    assert audit["audited"].value > 0 and audit["out_of_fold"].value > 0  # the first training's LLM sessions
    assert audit["review_queue_size"].value >= audit["flagged"].value
    assert audit["top_of_queue"].value.records and set(audit["queue_by_reason"].value) <= {
        "label_issue", "disagreement", "low_confidence", "high_entropy", "novelty", "label_not_in_model", "flagged_before_audit",
        "random_sample"}
    # The budget holds (review.queue_size, 100 by default: external flags included) and the calibration says how it went.
    assert audit["review_queue_size"].value <= audit["queue_budget"].value == 100
    assert audit["temperature_at_bound"].value in ("none", "lower", "upper") and audit["ece_after"].value >= 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["predictions_cover_unreviewed"].passed
    # The check judges what the rules flag before the budget caps it (a capped queue would always pass).
    observed = checks["flagged_share_under_threshold"].metadata["observed_share"].value
    assert observed == round(audit["flagged_by_rules"].value / audit["audited"].value, 4)
    with open_tenant_store(None, home, "legolas", "demo") as store:
        scored = store.classifications.count_documents({"tenant": "demo", "ml_model_version": champion})
    assert scored == predictions["scored"].value


def test_second_training_is_a_retraining(chain):
    home, instance, _ = chain
    # retrain_data 'switch': too few reviews per class to carry a training alone, so the first
    # training's data stays (human reviews win over the LLM labels) and the reason says what is missing.
    result = run_chain(home, instance, selection=["labeled_dataset"], raise_on_error=False, retrain_data="switch")
    data = _metadata(result, "labeled_dataset")
    assert data["mode"].value == "retrain" and data["from_llm"].value > 0
    assert "until every class has 50 reviewed training rows" in data["mode_reason"].value
    # The default, the design notes' rule (human reviews only): every LLM row goes, except those of a
    # class with too few reviewed rows for K folds, which keeps them: the run never fails for a rare class.
    result = run_chain(home, instance, selection=["labeled_dataset"])
    data = _metadata(result, "labeled_dataset")
    kept, reason = data["llm_rows_kept_by_class"].value, data["mode_reason"].value
    assert data["mode"].value == "retrain" and data["from_llm"].value == sum(kept.values())
    assert "human reviews only, except the trusted LLM rows of" in reason
    # The rare class keeps its trusted LLM rows, or is left out when the audit doubts too many of them.
    assert kept or ("left out of this training" in reason and data["left_out_by_retrain_data"].value > 0)
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()}["enough_members_per_class"] is True
    # The diff against the model in service: the LLM rows of the classes with enough reviews are gone.
    assert data["rows_change"].value == data["rows"].value - data["champion_rows"].value < 0
    parts = {r.data["part"]: r.data for r in data["diff_by_class_and_source"].value.records}
    assert parts["source llm"]["now"] < parts["source llm"]["model_in_service"]
    assert f"{data['rows'].value} rows vs {data['champion_rows'].value} for the model in service" in data["vs_model_in_service"].value


def test_blocking_check_stops_downstream(tmp_path):
    # Only reviews, and a class with 2 members: too small for 3 folds -> the blocking check fails.
    with open_tenant_store(None, tmp_path, "legolas", "tiny") as store:
        for i in range(12):
            label = "rare" if i < 2 else "common" if i % 2 else "other"
            store.insert_review({"session_id": f"s{i}", "label": label, "text": f"text number {i}", "reviewed_at": f"2026-01-01T00:00:{i:02d}"})
    from dagster_helpers import resources
    from dagster import materialize
    from legolas_assets.jobs import tenant_assets, tenant_checks
    from legolas_assets.tenancy import TenantPlan

    tiny = TenantPlan("tiny")
    tiny_assets, tiny_checks = tenant_assets(tiny), tenant_checks(tiny)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        tiny_assets + tiny_checks, resources=resources(tmp_path), instance=instance,
        selection=[tiny.key("labeled_dataset"), tiny.key("stratified_splits")], raise_on_error=False,
    )
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"tiny/labeled_dataset"}  # stratified_splits never ran
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [c.check_name for c in failed] == ["enough_members_per_class"]
    assert failed[0].metadata["needed_per_class"].value == 4  # the numbers are shown, not just "failed"
    # The check says which materialization it judged and when, in UTC; run on its own later, still that one.
    from datetime import datetime, timezone

    from dagster import AssetSelection, DagsterEventType

    [event] = instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)

    [enough_members_per_class] = [c for c in tiny_checks if c.check_key.name == "enough_members_per_class"]

    materialized_at = f"{datetime.fromtimestamp(event.timestamp, timezone.utc):%Y-%m-%dT%H:%M:%S} UTC"
    meta = failed[0].metadata
    assert meta["evaluated_run"].value == result.run_id and meta["evaluated_in_this_run"].value is True
    assert meta["evaluated_materialized_at"].value == materialized_at and meta["checked_at"].value.endswith(" UTC")
    later = materialize(
        tiny_assets + tiny_checks, resources=resources(tmp_path), instance=instance,
        selection=AssetSelection.checks(enough_members_per_class),
        raise_on_error=False,
    )
    [again] = later.get_asset_check_evaluations()
    assert later.run_id != result.run_id and again.metadata["evaluated_run"].value == result.run_id
    assert again.metadata["evaluated_in_this_run"].value is False and again.metadata["evaluated_materialized_at"].value == materialized_at


def _cli(home: Path, *args: str, command: tuple[str, ...] = ("asset", "materialize")) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LEGOLAS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        **tiny_env(LEGOLAS_N_FOLDS="3"),
    }
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return subprocess.run(
        [sys.executable, "-m", "dagster", *command, "-m", "legolas_assets.definitions", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_cli_single_fold_and_partition_range(tmp_path):
    """The design card's commands as written: the default tenant's keys are unprefixed."""
    fill_demo(tmp_path, conversations=300, reviews=60)
    up = _cli(tmp_path, "--select", "labeled_dataset,stratified_splits")
    assert up.returncode == 0, up.stderr[-3000:]
    one = _cli(tmp_path, "--select", "fold_models", "--partition", "0")
    assert one.returncode == 0, one.stderr[-3000:]
    values = tmp_path / "output" / "asset_values" / "fold_models"
    assert sorted(p.name for p in values.glob("*.json")) == ["0.json"]
    every = _cli(tmp_path, "--select", "fold_models", "--partition-range", "0...2")
    assert every.returncode == 0, every.stderr[-3000:]
    assert sorted(p.name for p in values.glob("*.json")) == ["0.json", "1.json", "2.json"]
    assert "fold_models" in every.stderr and "RUN_SUCCESS" in every.stderr
    # The README's and `make demo`'s chain command: one run of the named job, every fold partition in it
    # (the folds just trained are reused: same data, split and config).
    tags = json.dumps({"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"})
    chain = _cli(tmp_path, "-j", "demo__training_job", "--tags", tags, command=("job", "execute"))
    assert chain.returncode == 0, chain.stderr[-3000:]
    from dagster import DagsterEventType, RunsFilter

    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert {r.job_name for r in instance.get_runs()} == {"demo__training_job", "__ASSET_JOB"}
        [run] = instance.get_runs(filters=RunsFilter(job_name="demo__training_job"))
        assert run.is_success
        events = [e.dagster_event for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)]
    assert {e.asset_key for e in events} == {a.key for a in ASSETS}  # the whole chain
    assert sorted(e.partition for e in events if e.asset_key == key("fold_models")) == ["0", "1", "2"]


def test_sensor_retrains_on_imported_reviews(chain, tmp_path, monkeypatch):
    """First training -> import reviews with the CLI -> the sensor requests the chain -> retrained on humans only."""
    from dagster import build_sensor_context

    from dagster_helpers import DEMO, resources, retrain_on_new_reviews
    from legolas_ml.cli import main

    home, instance, _ = chain
    monkeypatch.setenv("LEGOLAS_HOME", str(home))
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "50")
    docs, _ = generate_demo_data(400, 0, seed=3)
    lines = [
        json.dumps({"session_id": d["session_id"], "label": d["llm_prediction"], "text": d["text"],
                    "reviewed_at": f"2027-01-01T10:{k // 60:02d}:{k % 60:02d}Z", "reviewer": "qa"})
        for k, d in enumerate(docs[:100])
    ]
    (tmp_path / "new.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["import-reviews", str(tmp_path / "new.jsonl"), "--tenant", "demo"]) == 0

    res = resources(home)
    context = build_sensor_context(instance=instance, resources={k: res[k] for k in ("mongo", "training", "lifecycle")})
    result = retrain_on_new_reviews(context)
    request = result.run_requests[0]
    assert request.job_name == DEMO.job_name
    defs = build_defs()
    assert set(defs.resolve_job_def(DEMO.job_name).asset_layer.selected_asset_keys) == {
        DEMO.key(a) for a in (
            "labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble", "explainability_report",
            "ensemble_predictions", "label_audit",
        )
    }
    run = run_chain(home, instance)  # what the daemon launches for the request: every asset, folds 0..K-1
    assert request.tags["dagster/asset_partition_range_end"] == "2" and run.success
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    decided = registry.history()[-1]
    manifest = registry.manifest(decided["version"])
    # The design notes' rule: human reviews only, but for a class too rare to train on them alone.
    assert manifest["mode"] == "retrain" and manifest["source_counts"]["llm"] < manifest["source_counts"]["human"]
    assert manifest["source_counts"]["human"] >= 70  # the 100 imported reviews, minus those held out
    # A retraining starts from the champion's folds (warm start): the sidecar says which.
    from legolas_ml.training.checkpoint import read_sidecar

    started = read_sidecar(manifest["checkpoints"][0])["warm_start"]
    assert started and started["from"] in registry.manifest(decided.get("previous_champion") or registry.history()[0]["version"])["checkpoints"]
    # The run decided (promoted or rejected) on those reviews: they are consumed, a fresh sensor counts 0.
    fresh = build_sensor_context(instance=instance, resources={k: res[k] for k in ("mongo", "training", "lifecycle")})
    assert "0 new reviews" in retrain_on_new_reviews(fresh).skip_reason.skip_message


def build_defs():
    from legolas_assets.definitions import build_definitions
    from dagster_helpers import DEMO

    return build_definitions([DEMO])


def _snapshot(registry: ModelRegistry, version: str) -> dict[str, str]:
    """SHA-256 of every file of a version: its fold directory and its manifest directory."""
    import hashlib

    manifest = registry.manifest(version)
    roots = {Path(manifest["checkpoints"][0]).parent, registry.version_dir(version)}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def test_worse_candidate_is_rejected_and_the_champion_stays_byte_identical(chain):
    """Same session ids, changed texts and rotated labels outside the holdout: the candidate learns the
    rotation, looks fine on its own test split, and is rejected on the shared human holdout."""
    from datetime import datetime

    from legolas_ml.lifecycle.holdout import in_holdout

    home, instance, _ = chain
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    champion = registry.champion()
    before = _snapshot(registry, champion["version"])
    classes = sorted(champion["labels"])
    rotate = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    with open_tenant_store(None, home, "legolas", "demo") as store:
        for doc in store.classifications.find({"tenant": "demo"}):
            if in_holdout("demo", doc["session_id"]) or doc.get("llm_prediction") not in rotate:
                continue
            store.insert_review({
                "session_id": doc["session_id"], "label": rotate[doc["llm_prediction"]], "text": doc["text"] + " (edited)",
                "reviewed_at": datetime(2030, 1, 1), "reviewer": "rotator",
            })
    result = run_chain(home, instance, dataset_mode="first", lifecycle={"min_holdout": 5, "min_class_support": 2})
    promoted = _metadata(result, "promoted_ensemble")
    assert promoted["decision"].value == "rejected", promoted["reason"].value
    assert "shown worse than the champion" in promoted["reason"].value or "recall shown to fall" in promoted["reason"].value
    assert promoted["candidate_holdout_balanced_accuracy"].value < promoted["champion_holdout_balanced_accuracy"].value
    shown = promoted["difference_bound_high"].value < 0 or "recall shown to fall" in promoted["reason"].value
    assert shown and promoted["holdout_n"].value >= 5
    check = [c for c in result.get_asset_check_evaluations() if c.check_name == "candidate_promoted"][0]
    assert not check.passed and check.severity.value == "WARN"
    assert registry.champion_version() == champion["version"]  # the champion keeps serving
    assert _snapshot(registry, champion["version"]) == before  # and not one of its bytes changed
    rejected = registry.history()[-1]
    assert rejected["action"] == "rejected" and rejected["previous_champion"] == champion["version"]
    assert (registry.version_dir(rejected["version"]) / "manifest.json").exists()  # the rejected candidate stays on disk


def test_a_candidate_waits_as_challenger_and_the_challenger_job_decides_it(chain):
    """Issue #26: a candidate the holdout cannot decide waits as the tenant's challenger (its reviews not
    consumed), and `challenger_job` decides it on the holdout later, without retraining."""
    from datetime import datetime

    from legolas_assets.lifecycle import challenger_job
    from dagster_helpers import resources
    from legolas_ml.lifecycle.holdout import in_holdout

    home, instance, _ = chain
    registry = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    champion = registry.champion_version()
    consumed = registry.consumed_reviews()
    with open_tenant_store(None, home, "legolas", "demo") as store:
        reviewed = {r["session_id"] for r in store.reviews.find({"tenant": "demo"})}
        docs = [d for d in store.classifications.find({"tenant": "demo"}) if d["session_id"] not in reviewed and d.get("llm_prediction")]
        for doc in docs[:40]:
            store.insert_review({"session_id": doc["session_id"], "label": doc["llm_prediction"], "reviewed_at": datetime(2031, 1, 1),
                                 "reviewer": "challenger-test"})
    result = run_chain(home, instance, dataset_mode="first", lifecycle={"min_holdout": 10_000})
    promoted = _metadata(result, "promoted_ensemble")
    assert promoted["decision"].value == "challenger", promoted["reason"].value
    assert "holdout too small" in promoted["reason"].value and promoted["challenger_version"].value != "none"
    challenger = registry.challenger()
    assert challenger["version"] == promoted["candidate_version"].value and registry.champion_version() == champion
    assert registry.consumed_reviews() == consumed  # its reviews wait for its decision
    check = [c for c in result.get_asset_check_evaluations() if c.check_name == "candidate_promoted"][0]
    assert not check.passed and "challenger" in check.metadata["outcome"].value
    # Later: the policy can decide on this holdout; the job looks at the challenger without training.
    looked = challenger_job.execute_in_process(
        run_config={"ops": {"look_at_challenger_op": {"config": {"tenant": "demo"}}}},
        resources=resources(home, lifecycle={"min_holdout": 5, "min_class_support": 2, "margin": 0.5}), instance=instance,
    )
    assert looked.success
    outcome = looked.output_for_node("look_at_challenger_op")
    assert outcome["outcome"] in ("promoted", "rejected") and outcome["version"] == challenger["version"], outcome
    assert registry.challenger() is None and registry.decision_for(challenger["version"])["action"] == outcome["outcome"]
    assert "dagster run" in registry.decision_for(challenger["version"])["actor"]
