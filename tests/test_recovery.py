"""Crash recovery with no person: a killed run is failed, its `gpu` slot freed, its temp files removed."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_resources

from legolas_assets import recovery
from legolas_assets.resources import TrainingResource

ROOT = Path(__file__).resolve().parents[1]

# A run that takes the `gpu` pool's only slot, records its process like every LEGOLAS run, and
# then waits to be killed.
HOLD_SLOT = textwrap.dedent("""
    import time
    from dagster import DagsterInstance, asset, materialize
    from legolas_assets import recovery

    @asset(pool="gpu")
    def holds_gpu(context):
        recovery.record_worker(context.instance, context.run_id)
        print("holding", flush=True)
        time.sleep(600)

    materialize([holds_gpu], instance=DagsterInstance.get())
""")


def _dagster_home(home: Path) -> Path:
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return dagster_home


def _claimed_gpu_slots(instance: DagsterInstance) -> list[str]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return [slot.run_id for slot in info.claimed_slots]


def _set_up_training(instance: DagsterInstance, home: Path) -> None:
    """What a sensor tick, or the next run before it asks for a slot, does: set up `training`."""
    with build_resources({"training": TrainingResource(output_dir=str(home / "output"))}, instance=instance):
        pass


def test_dead_run_is_failed_and_its_slot_freed_at_the_next_setup(tmp_path):
    dagster_home = _dagster_home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SLOT], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            (run,) = instance.get_runs()
            _set_up_training(instance, tmp_path)  # its process is alive: left alone
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
            assert _claimed_gpu_slots(instance) == [run.run_id]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_run_tags(run.run_id, {recovery.WORKER_TAG: f"{proc.pid}@another-host"})
        _set_up_training(instance, tmp_path)  # another machine's process cannot be checked from here
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

        instance.add_run_tags(run.run_id, {recovery.WORKER_TAG: f"{proc.pid}@{socket.gethostname()}"})
        _set_up_training(instance, tmp_path)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert _claimed_gpu_slots(instance) == []
        failure = instance.all_logs(run.run_id)[-1]
        assert f"process {proc.pid}" in failure.message and "is gone" in failure.message


def test_a_reused_pid_is_not_mistaken_for_the_run_worker():
    started = recovery._process_start(os.getpid())
    assert recovery._process_alive(os.getpid(), str(started))
    assert not recovery._process_alive(os.getpid(), str(started + 1))  # same pid, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not recovery._process_alive(child.pid, None)


def test_temp_files_of_killed_writers_are_removed_only_when_stale(tmp_path):
    folds = tmp_path / "demo" / "folds" / "abc"
    folds.mkdir(parents=True)
    ours = folds / ".best_model_text_tiny_fold1.safetensors.k2j3h4.tmp"
    theirs = folds / ".tmpA1b2C3"  # safetensors' own temp file (Rust tempfile)
    keep = [folds / "best_model_text_tiny_fold1.safetensors", folds / ".hidden_config", folds / "notes.tmp"]
    for path in [ours, theirs, *keep]:
        path.write_bytes(b"x" * 10)
    old = time.time() - 60
    for path in (ours, theirs):
        os.utime(path, (old, old))
    fresh = folds / ".dataset.jsonl.q9w8e7.tmp"  # written after the run started: a live writer's
    fresh.write_bytes(b"y")
    removed = recovery.remove_stale_temp_files(tmp_path, older_than=time.time() - 30)
    assert sorted(removed) == sorted([ours, theirs])
    assert all(p.exists() for p in keep) and fresh.exists()


def test_best_checkpoint_removes_safetensors_temp_files(tmp_path):
    from legolas_ml.training.checkpoint import BestCheckpoint

    (tmp_path / ".tmpZ9y8X7").write_bytes(b"\0" * 1024)
    BestCheckpoint(tmp_path / "best_model_text_tiny_fold0.safetensors")
    assert list(tmp_path.iterdir()) == []


# --- the real CLI, killed mid-fold -----------------------------------------------------------


def _cli_env(home: Path) -> dict:
    from synthetic import tiny_env

    return {
        **os.environ,
        "LEGOLAS_HOME": str(home),
        "DAGSTER_HOME": str(_dagster_home(home)),
        **tiny_env(LEGOLAS_N_FOLDS="2", LEGOLAS_BATCH_SIZE="4", LEGOLAS_MAX_LENGTH="32", LEGOLAS_DEVICE="cpu"),
    }


CLI = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "legolas_assets.definitions",
       "--select", "labeled_dataset,stratified_splits,fold_models", "--partition-range", "0...1"]


@pytest.mark.slow
def test_sigkill_of_the_cli_mid_fold_then_rerun_reuses_finished_folds(tmp_path):
    """kill -9 of `dagster asset materialize` once fold 0 finished; the plain re-run starts, reuses fold 0, trains fold 1."""
    from legolas_ml.data.store import open_tenant_store
    from synthetic import separable_frame

    # Reviews a tiny model learns in 5 epochs: every fold passes its blocking above-chance check.
    with open_tenant_store(None, tmp_path, "legolas", "demo", writer=True) as store:
        for i, row in enumerate(separable_frame(40).itertuples()):
            store.insert_review({"session_id": row.session_id, "text": row.text, "label": row.label,
                                 "reviewed_at": f"2026-01-01T10:{i // 60:02d}:{i % 60:02d}"})
    env = _cli_env(tmp_path)
    proc = subprocess.Popen(CLI, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("output/**/*fold0.result.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the first run ended before fold 0 finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (fold0,) = tmp_path.glob("output/**/*fold0.result.json")
    assert not list(fold0.parent.glob("*fold1.result.json")), "killed after fold 1 finished: not mid-fold"
    # A checkpoint write killed half-way leaves both writers' temp files behind.
    for name in (".best_model_text_x_fold1.safetensors.a1b2c3.tmp", ".tmpQ1w2E3"):
        (fold0.parent / name).write_bytes(b"\0" * 4096)

    rerun = subprocess.run(CLI, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stderr
    assert "Step blocked by limit for pool gpu" not in log
    assert f"process {proc.pid}" in log and "is gone" in log
    assert "fold 0: finished earlier with the same data, split and config" in log
    assert "fold 1: finished earlier" not in log
    assert sorted(p.name for p in fold0.parent.glob("*.result.json")) == [
        fold0.name, fold0.name.replace("fold0", "fold1"),
    ]
    assert not [p for p in fold0.parent.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        statuses = sorted(r.status.value for r in instance.get_runs())
        assert statuses == ["FAILURE", "SUCCESS"] and _claimed_gpu_slots(instance) == []
