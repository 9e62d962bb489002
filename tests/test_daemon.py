"""The real daemon: the sensor ticks, the run coordinator launches training_job, the run promotes,
and a second run of the same tenant waits in the queue until the first has ended
(tests/test_daemon_live_tenants.py: a tenant added while the daemon runs).

This is the path users leave running (`make ui` starts the same daemon); unit tests of the sensor
cannot see what the daemon does with its run requests, its tags and the shipped dagster.yaml.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.utils import make_new_run_id

from legolas_ml.data.demo_data import generate_demo_data
from legolas_ml.data.store import open_tenant_store
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from synthetic import tiny_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 420


def _stop(daemon: subprocess.Popen) -> None:
    """The daemon and the run workers it launched share its process group."""
    try:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)


def _start_daemon(tmp_path: Path, reload_every_s: int | None = None, **variables: str) -> tuple[subprocess.Popen, Path, dict]:
    """``dagster-daemon run`` on the shipped dagster.yaml, a tmp home and the tiny model: ``(daemon, DAGSTER_HOME, env)``.

    ``reload_every_s`` replaces Dagster's 60 s between the daemon's reloads of its code location
    (``tests/daemon_reloading.py``); ``None`` runs the installed ``dagster-daemon`` as it is.
    """
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())  # the shipped instance config
    env = {
        **os.environ,
        "LEGOLAS_HOME": str(tmp_path),
        "DAGSTER_HOME": str(dagster_home),
        **tiny_env(LEGOLAS_N_FOLDS="2"),
        "LEGOLAS_EXPLAIN_PER_CLASS": "1",
        "LEGOLAS_RETRAIN_THRESHOLD": "20",
        "LEGOLAS_SENSOR_INTERVAL_S": "5",  # the sensors tick as soon as the daemon lets them: the tests wait less
        **variables,
    }
    env.pop("LEGOLAS_DAGSTER_URL", None)  # never ask a webserver that someone else runs on this machine
    # The instance's storage is created here, before the daemon starts: two processes creating the same
    # SQLite schema at once can leave two alembic heads ("Version table 'alembic_version' has more than one head").
    with DagsterInstance.from_config(str(dagster_home)):
        pass
    log = open(tmp_path / "daemon.log", "w")
    command = [str(Path(sys.executable).parent / "dagster-daemon")]
    if reload_every_s is not None:
        command = [sys.executable, str(Path(__file__).parent / "daemon_reloading.py"), str(reload_every_s)]
    daemon = subprocess.Popen(
        [*command, "run", "-m", "legolas_assets.definitions"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()  # the daemon holds its own descriptor
    return daemon, dagster_home, env


def _tick_reasons(instance: DagsterInstance, sensor_name: str) -> list[str]:
    """The skip reasons of the sensor's ticks, oldest first (none before its first tick)."""
    reasons = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == sensor_name:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100)
            # A tick still being evaluated has no reason yet: only finished ticks say something.
            reasons += [t.skip_reason or "" for t in reversed(ticks) if t.status != TickStatus.STARTED]
    return reasons


def _ticked(dagster_home: Path, sensor_name: str) -> list[str]:
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        return _tick_reasons(instance, sensor_name)


def test_daemon_sensor_launches_a_run_that_promotes_and_serialises_a_tenant(tmp_path):
    docs, reviews = generate_demo_data(300, 80, seed=5)
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        store.insert_classifications(docs)
        for review in reviews:
            store.insert_review(review)
    daemon, dagster_home, _ = _start_daemon(tmp_path)
    registry = ModelRegistry(TenantArtifacts(tmp_path / "output", "demo"))
    try:
        deadline = time.monotonic() + DEADLINE_S
        runs, second, held_back = [], None, 0
        while time.monotonic() < deadline:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            with DagsterInstance.from_config(str(dagster_home)) as instance:
                runs = instance.get_runs(filters=RunsFilter(tags={"dagster/sensor_name": "retrain_on_new_reviews"}))
                if runs and runs[0].status == DagsterRunStatus.STARTED and second is None:
                    # A second request for the same tenant while the first runs: the shipped
                    # dagster.yaml's per-tenant tag limit must keep it queued until the first ends.
                    second = runs[0]._replace(run_id=make_new_run_id(), status=DagsterRunStatus.QUEUED, tags={
                        k: v for k, v in runs[0].tags.items() if k.startswith(("legolas/tenant", "dagster/asset_partition"))
                    })
                    instance.add_run(second)
                elif second is not None and runs and not runs[0].is_finished:
                    assert instance.get_run_by_id(second.run_id).status == DagsterRunStatus.QUEUED, "two runs of one tenant at once"
                    held_back += 1
            if runs and runs[0].is_finished:  # wait for the whole run, not only its promotion step
                break
            # Poll every second once the second run waits: a fast machine runs the tiny chain in seconds.
            time.sleep(1 if second is not None else 3)
        assert second is not None and held_back >= 2, f"the second run was never observed waiting ({held_back} polls)"
        dequeued_by = time.monotonic() + 60
        while time.monotonic() < dequeued_by:  # once the first ended, the queue lets the second go
            with DagsterInstance.from_config(str(dagster_home)) as instance:
                if instance.get_run_by_id(second.run_id).status != DagsterRunStatus.QUEUED:
                    break
            time.sleep(2)
        else:
            pytest.fail("the queued run of the same tenant was never dequeued after the first ended")
    finally:
        _stop(daemon)
    assert runs and runs[0].status == DagsterRunStatus.SUCCESS, f"runs {[(r.run_id, r.status) for r in runs]}"
    assert runs[0].tags["legolas/tenant"] == "demo" and runs[0].tags["dagster/asset_partition_range_end"] == "1"
    history = registry.history()
    assert history, f"no decision within {DEADLINE_S} s; daemon log:\n{(tmp_path / 'daemon.log').read_text()[-4000:]}"
    decision = history[-1]
    # Launched by the sensor through the daemon, and the first model of the tenant is promoted.
    assert decision["action"] == "promoted" and "retrain_on_new_reviews" in decision["actor"], decision
    assert registry.champion()["version"] == decision["version"]
    # The decision consumed the reviews the run trained on: the sensor's next tick counts none.
    assert registry.consumed_reviews() is not None
    # The same run closed the loop: the new champion scored every unreviewed document and audited the LLM labels.
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        reviewed = store.reviewed_session_ids()
        scored = {d["session_id"] for d in store.classification_fields(("ml_model_version",)) if d.get("ml_model_version") == decision["version"]}
        flagged = [d for d in store.flagged_for_review(("review_reason",)) if d.get("review_reason")]
    assert scored and not scored & reviewed
    assert flagged, "label_audit flagged nothing in the daemon's run"
