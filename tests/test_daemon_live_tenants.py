"""The real daemon picks up a tenant added while it runs: nobody reloads the code location.

Apart from tests/test_daemon.py so that the two daemons run on different test workers.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from test_daemon import ROOT, _start_daemon, _stop, _tick_reasons, _ticked

pytestmark = pytest.mark.slow
#: The daemon reloads its code location every 60 s (Dagster's RELOAD_WORKSPACE_INTERVAL; 15 s here, through
#: tests/daemon_reloading.py: the same reload, sooner) and the retraining sensor ticks every
#: LEGOLAS_SENSOR_INTERVAL_S (5 s here): a new tenant's run is requested within one reload of its addition,
#: then trains like any other.
RELOAD_EVERY_S = 15
NEW_TENANT_DEADLINE_S = 600


def test_a_tenant_added_to_a_running_daemon_is_trained_without_a_reload(tmp_path):
    daemon, dagster_home, env = _start_daemon(tmp_path, reload_every_s=RELOAD_EVERY_S)
    started = time.monotonic()
    try:
        # The daemon has loaded the code location (an empty store: the default tenant only) once the
        # tenants sensor ticked; only then is the tenant added, so only a fresh load can show it.
        while not _ticked(dagster_home, "reload_on_tenant_change"):
            assert daemon.poll() is None and time.monotonic() - started < 180, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(2)
        legolas = str(Path(sys.executable).parent / "legolas")
        for command in (["demo-data", "--tenant", "acme", "--conversations", "200", "--reviews", "60", "--seed", "4"],
                        ["tenants", "add", "acme", "--n-folds", "2"]):
            added = subprocess.run([legolas, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert added.returncode == 0, added.stderr[-2000:]
        added_at = time.monotonic()
        runs, requested_after = [], None
        while time.monotonic() - started < NEW_TENANT_DEADLINE_S:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            with DagsterInstance.from_config(str(dagster_home)) as instance:
                runs = instance.get_runs(filters=RunsFilter(job_name="acme__training_job"))
                requested_after = requested_after or (time.monotonic() - added_at if runs else None)
                reasons = _tick_reasons(instance, "reload_on_tenant_change")
            if runs and runs[0].is_finished:
                break
            time.sleep(3)
        trained_after = time.monotonic() - added_at
    finally:
        _stop(daemon)
    log = (tmp_path / "daemon.log").read_text()
    assert runs, f"no run of acme__training_job within {NEW_TENANT_DEADLINE_S} s; tenants sensor said {reasons[-3:]}; daemon log:\n{log[-4000:]}"
    assert runs[0].status == DagsterRunStatus.SUCCESS and runs[0].tags["legolas/tenant"] == "acme", (runs[0].status, log[-4000:])
    assert runs[0].tags["dagster/sensor_name"] == "retrain_on_new_reviews"  # the daemon's own sensor asked for it
    assert ModelRegistry(TenantArtifacts(tmp_path / "output", "acme")).champion() is not None
    # Until the daemon's reload the tenants sensor named the new tenant; after it, the loaded tenants are the store's.
    assert reasons[-1] == "the code location's tenants are the store's: acme", reasons
    print(f"acme's run requested {requested_after:.0f} s and finished {trained_after:.0f} s after it was added; tenants sensor: {reasons}")
