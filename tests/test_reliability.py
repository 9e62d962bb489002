"""Faults and hostile input: killed training, store outages, unwritable output, fuzzed documents."""

import json
import multiprocessing
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

from dagster import DagsterInstance, materialize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint
from legolas_ml.training.cross_validation import encode_dataset, finished_fold, plan_splits, train_plan_fold
from legolas_ml.data.quality_gate import QUARANTINE_REASONS, run_gate
from synthetic import separable_frame, tiny_config, train_a_fold_until_killed

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cr3t-Pa55word"

def _forkserver():
    """Children forked from one server that imported torch and the trainer once (8 fresh
    interpreters would spend most of the test importing torch): each starts in milliseconds.

    The preload applies to this worker's forkserver, started once with this test's environment; no
    other test uses the forkserver start method."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["synthetic", "legolas_ml.training.cross_validation"])
    return context


def test_sigkill_during_fold_training_never_leaves_a_servable_half_model(tmp_path):
    """8 kills at random moments of a fold's training: nothing half-written is ever loaded or reused.

    (tests/test_checkpoint.py kills a writer mid-save in a loop, and tests/test_recovery.py kills the
    real CLI mid-fold; this one covers the trainer's own files between those.)"""
    folds = tmp_path / "folds"
    rng = random.Random(20)
    cfg = tiny_config(n_folds=2, epochs=400, patience=400, batch_size=4)
    df = separable_frame(20)
    plan = plan_splits(df, cfg)
    ckpt = None
    kills = 0
    context = _forkserver()
    while kills < 8:
        ready = context.Event()
        proc = context.Process(target=train_a_fold_until_killed, args=(str(folds), ready))
        proc.start()
        assert ready.wait(120), f"the training child never got ready (exit code {proc.exitcode})"
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()  # SIGKILL: no handler, no cleanup, mid-write or not
        proc.join()
        assert proc.exitcode == -signal.SIGKILL, f"the child ended before the kill (exit code {proc.exitcode})"
        kills += 1
        ckpts = list(folds.glob("*.safetensors"))
        for ckpt in ckpts:
            try:
                load_checkpoint(ckpt)  # either a complete, verified model...
            except CheckpointError as err:  # ...or refused with an error naming the file
                assert ckpt.name in str(err)
            assert finished_fold(ckpt, "v1", plan.fingerprint(), cfg) is None  # a killed fold is never "finished"
    # Re-running trains the fold for real, and a second re-run reuses it instead of retraining.
    short = cfg.replace(epochs=3, patience=3)
    data = encode_dataset(df, short)
    first = train_plan_fold(data, plan, 0, short, folds, data_version="v1")
    again = train_plan_fold(data, plan, 0, short, folds, data_version="v1")
    assert not first.reused and again.reused and again.best_epoch == first.best_epoch
    assert train_plan_fold(data, plan, 0, short, folds, data_version="v2").reused is False  # new data: retrain
    assert not list(folds.glob(".*.tmp"))  # leftovers of killed writers are cleaned up


def _unreachable_uri() -> str:
    return f"mongodb://legolas:{SECRET}@127.0.0.1:9/legolas?directConnection=true"


def test_store_outage_fails_labeled_dataset_fast_and_redacted(tmp_path):
    from dagster_helpers import resources
    from dagster_helpers import ASSETS, key
    from legolas_assets.resources import MongoResource

    res = resources(tmp_path)
    res["mongo"] = MongoResource(uri=_unreachable_uri(), timeout_s=1.0)
    started = time.monotonic()
    result = materialize(ASSETS, resources=res, selection=[key("labeled_dataset")], instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success and time.monotonic() - started < 30
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.event_specific_data.error)
    assert "store is unavailable" in text and "127.0.0.1:9" in text and SECRET not in text


def test_outage_then_recovery_counts_every_review_once(tmp_path, monkeypatch):
    from dagster import SensorResult, build_sensor_context

    from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource
    from dagster_helpers import retrain_on_new_reviews, training_session
    from legolas_ml.data.store import open_tenant_store
    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.registry import ModelRegistry
    from legolas_ml.core.review_cursor import ReviewCursor

    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "40")
    monkeypatch.setenv("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "0")
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        for k in range(45):
            store.insert_review({"session_id": training_session("demo", k), "label": "x", "reviewed_at": datetime(2026, 1, 1) + timedelta(seconds=k // 3)})
    training = TrainingResource(output_dir=str(tmp_path / "output"))
    base = {"training": training, "lifecycle": LifecycleResource()}
    down = build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"mongo": MongoResource(uri=_unreachable_uri(), timeout_s=0.5), **base})
    skipped = retrain_on_new_reviews(down)
    message = skipped.skip_reason.skip_message
    assert "store unavailable" in message and SECRET not in message and skipped.cursor is None
    up = build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"mongo": MongoResource(data_dir=str(tmp_path)), **base})
    result = retrain_on_new_reviews(up)
    assert isinstance(result, SensorResult) and "45 new reviews" in result.run_requests[0].tags["legolas/trigger"]
    # The run trains on all 45 and decides: they are consumed once, and none is counted again.
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        newest = ReviewCursor.of(store.reviews_after(None)[-1]).serialize()
    registry = ModelRegistry(TenantArtifacts(tmp_path / "output", "demo"))
    registry.write_candidate({"version": "v1", "checkpoints": ["unused"], "reviews_cursor": newest})
    registry.reject("v1", actor="test", reason="decided")
    after = build_sensor_context(cursor=result.cursor, instance=DagsterInstance.ephemeral(), resources={"mongo": MongoResource(data_dir=str(tmp_path)), **base})
    assert "0 new reviews" in retrain_on_new_reviews(after).skip_reason.skip_message


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    from dagster_helpers import resources
    from dagster_helpers import ASSETS, key
    from legolas_assets.resources import TrainingResource
    from legolas_ml.data.store import open_tenant_store

    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        store.insert_review({"session_id": "s1", "label": "x", "text": "hello", "reviewed_at": datetime(2026, 1, 1)})
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    res = resources(tmp_path)
    res["training"] = TrainingResource(output_dir=str(blocker / "output"))
    result = materialize(ASSETS, resources=res, selection=[key("labeled_dataset")], instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert str(blocker) in str(failure.event_specific_data.error)
    # The asset raised instead of passing on a value: the IO manager stored nothing downstream could read.
    assert not (tmp_path / "output" / "asset_values" / "labeled_dataset").exists()
    assert not any(e.event_type_value == "ASSET_MATERIALIZATION" for e in result.all_events)


def test_concurrent_retraining_of_one_tenant_is_serialised():
    """The shipped dagster.yaml names the per-tenant limit and the sensor tags every run with it.

    A quick guard of the wiring only; tests/test_daemon.py shows the real run queue keeping a second
    run of the same tenant QUEUED while the first runs (and fails when the limit is removed)."""
    import yaml

    from legolas_assets.sensors import retraining_tags
    from legolas_assets.tenancy import TenantPlan

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "legolas/tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert retraining_tags(TenantPlan("acme"), "50 new reviews")["legolas/tenant"] == "acme"


# --- hostile documents -------------------------------------------------------------------------

_weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "   ", "\u200b\u200b", "\u202eevil rtl", "emoji 🤖🔥", "bad \ud800 surrogate", "x" * 30_000]),
    st.binary(max_size=20),
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_session = st.one_of(st.sampled_from(["s1", "s2", "s3", " s1 ", ""]), st.integers(0, 3), st.none(), st.floats())
_timestamp = st.one_of(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
    st.sampled_from(["2026-01-01T10:00:00Z", "yesterday", "", "2026-13-45"]),
    st.none(), st.integers(),
)
_review = st.fixed_dictionaries(
    {"session_id": _session, "text": _weird_text, "label": st.one_of(_weird_text, st.sampled_from(["Billing", " billing ", "SHIPPING"])), "reviewed_at": _timestamp},
    optional={"_id": st.integers(0, 10**6), "confidence": st.floats(allow_nan=True, allow_infinity=True)},
)
_llm = st.fixed_dictionaries(
    {"session_id": _session, "text": _weird_text, "llm_prediction": st.one_of(_weird_text, st.just("billing")), "created_at": _timestamp},
    optional={"llm_confidence": st.floats(allow_nan=True, allow_infinity=True)},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reviews=st.lists(st.one_of(_review, st.just("not a dict")), max_size=12), llm=st.lists(_llm, max_size=12),
       mode=st.sampled_from(["first", "retrain"]))
def test_gate_never_raises_and_accounts_for_every_document(reviews, llm, mode):
    result = run_gate(reviews, llm, {"s1": "looked-up text"}, mode)
    c = result.counts
    assert c["inputs"] == len(reviews) + (len(llm) if mode == "first" else 0)
    assert c["inputs"] == c["accepted"] + c["quarantined"] + c["superseded"]
    assert set(result.quarantined) == set(QUARANTINE_REASONS)
    df = result.dataset
    assert df["session_id"].is_unique
    for label in df["label"]:
        assert isinstance(label, str) and label and label == label.strip().lower() and not re.search(r"\s", label)
    for text in df["text"]:
        assert isinstance(text, str) and text.strip() and len(text) <= 20_000
        text.encode("utf-8")


def test_import_survives_truncation_garbage_and_a_100mb_file(tmp_path):
    """A 100 MB file (one enormous line, binary garbage, a truncated tail): bounded memory, valid lines kept."""
    path = tmp_path / "huge.jsonl"
    good = [json.dumps({"session_id": f"g{k}", "label": "billing", "reviewed_at": f"2026-02-01T10:00:0{k}"}) for k in range(3)]
    with open(path, "wb") as handle:
        handle.write((good[0] + "\n").encode())
        handle.write(b"{" + b"x" * (100 * 1024 * 1024) + b"\n")  # one 100 MB line
        handle.write(bytes(b for b in range(256) if b != 10) + b"\n")  # binary garbage, one line
        handle.write((good[1] + "\n" + good[2] + "\n").encode())
        handle.write(b'{"session_id": "cut", "label": "bil')  # truncated last line, no newline
    script = textwrap.dedent(f"""
        import re, sys
        from legolas_ml.cli import main
        code = main(["import-reviews", {str(path)!r}, "--tenant", "acme"])
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report pytest's peak.
        hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        print("RSS_MB", int(hwm) / 1024)
        sys.exit(code)
    """)
    env = {"LEGOLAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "3 reviews imported" in out.stdout and "3 rejected" in out.stdout
    assert "huge.jsonl:2: rejected: line longer than" in out.stderr
    assert "huge.jsonl:3: rejected: not valid UTF-8" in out.stderr and "huge.jsonl:6: rejected: not valid JSON" in out.stderr
    rss = float(re.search(r"RSS_MB ([\d.]+)", out.stdout).group(1))
    assert rss < 100  # interpreter + libraries (~70 MB): the 100 MB line never sat in memory


def test_no_unpickling_anywhere():
    offenders = []
    for path in list((ROOT / "legolas_ml").rglob("*.py")) + list((ROOT / "legolas_assets").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pickle\.loads?\(|cloudpickle|torch\.load\((?!.*weights_only=True)|allow_pickle=True", line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_password_never_leaks_in_a_full_run(tmp_path, monkeypatch):
    """A whole chain with a password in the URI: no log line, metadata value, file or error contains it."""
    from dagster_helpers import run_chain
    from legolas_assets.resources import MongoResource
    from legolas_ml.data import store as store_module
    from test_dagster_chain import fill_demo

    fill_demo(tmp_path, conversations=300, reviews=60)
    embedded = store_module.connect
    # No MongoDB server can run here: the URI's client is the embedded store; everything else is real.
    monkeypatch.setattr(store_module, "connect", lambda uri, data_dir, timeout_s=5.0: embedded(None, tmp_path, timeout_s))
    uri = f"mongodb://legolas:{SECRET}@db.internal.example:27017/legolas"
    instance = DagsterInstance.ephemeral()
    result = run_chain(tmp_path, instance, mongo=MongoResource(uri=uri))
    assert result.success
    texts = [str(e) for e in instance.all_logs(result.run_id)]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".log", ".html", ".jsonl")]
    assert any("db.internal.example" in t for t in texts)  # the URI really was used and reported...
    assert not [t[:200] for t in texts if SECRET in t]  # ...but never its password
