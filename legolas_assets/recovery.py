"""Crash recovery: a run whose process died is marked failed and its `gpu` pool slot is freed.

``dagster asset materialize`` runs in the CLI's own process. Kill it (``kill -9``, OOM killer, a
reboot) and nothing records the end of the run: it stays STARTED and keeps its slot of the
`gpu` pool, so every later fold step waits for ever ("Step blocked by limit for pool gpu").
Dagster's run monitoring cannot see such a run: the CLI has no run launcher, and the default
launcher of the daemon has no worker health check. So LEGOLAS checks for itself:

* every run records which process runs it (run tags ``legolas/worker`` and
  ``legolas/worker_start``: pid, host and the process's start time, which tells a reused pid
  apart from the original process);
* before it asks for a pool slot (the ``training`` resource's setup, which runs first in every
  run and at every sensor tick), every STARTED run of this host whose process is gone is marked
  failed and its slots are freed, and so are slots still held by runs that already ended;
* then, when no other run is in progress, it deletes the temp files killed writers left under
  the artifacts root: ours (``.name.XXXX.tmp``) and safetensors' (``.tmpXXXXXX``).

The re-run then reuses the folds that had finished (``reuse_finished_folds``) and trains the rest.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

WORKER_TAG = "legolas/worker"  # "<pid>@<host>"
WORKER_START_TAG = "legolas/worker_start"  # the process's start time, in clock ticks since boot

_IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# atomic_write's temp files, and the ones safetensors' own writer (Rust `tempfile`) creates
# beside the target: ".tmp" and six random characters.
_TEMP_FILE = re.compile(r"^\..+\.tmp$|^\.tmp[A-Za-z0-9]{6}$")


def record_worker(instance: DagsterInstance, run_id: str) -> None:
    """Tag the run with this process (pid, host, start time), so a later run can tell it died."""
    tags = {WORKER_TAG: f"{os.getpid()}@{socket.gethostname()}"}
    started = _process_start(os.getpid())
    if started is not None:
        tags[WORKER_START_TAG] = str(started)
    instance.add_run_tags(run_id, tags)


def recover_dead_runs(instance: DagsterInstance, current_run_id: str | None = None) -> list[str]:
    """Fail the in-progress runs of this host whose process is gone, and free their pool slots.

    Args:
        instance: the Dagster instance whose runs are checked.
        current_run_id: the run doing the check; never touched.

    Returns:
        One human-readable line per run failed or slot freed (empty when there was nothing to do).
    """
    done: list[str] = []
    host = socket.gethostname()
    for record in instance.get_run_records(filters=RunsFilter(statuses=_IN_PROGRESS)):
        run = record.dagster_run
        if run.run_id == current_run_id or WORKER_TAG not in run.tags:
            continue  # a run without the tag never reached resource setup, so it holds no slot
        pid_text, _, worker_host = run.tags[WORKER_TAG].partition("@")
        if worker_host != host or not pid_text.isdigit():
            continue  # another machine's process cannot be checked from here
        if _process_alive(int(pid_text), run.tags.get(WORKER_START_TAG)):
            continue
        message = (
            f"process {pid_text} on {host} that ran this run is gone (killed or crashed); marked failed "
            f"and its pool slots freed by LEGOLAS crash recovery"
            + (f" (from run {current_run_id})" if current_run_id else "")
        )
        instance.report_run_failed(run, message)
        _free_slots(instance, run.run_id)
        done.append(f"run {run.run_id}: {message}")
    # Slots can outlive a run that ended (marked failed by hand or by run monitoring): free them
    # now instead of waiting for the daemon's free_slots_after_run_end_seconds.
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids() - {current_run_id}:
            record = instance.get_run_record_by_id(run_id)
            if record is None or record.dagster_run.is_finished:
                _free_slots(instance, run_id)
                done.append(f"run {run_id}: ended, but still held pool slots; freed")
    return done


def other_runs_in_progress(instance: DagsterInstance, current_run_id: str | None) -> list[str]:
    """The ids of in-progress runs other than ``current_run_id`` (on any host)."""
    records = instance.get_run_records(filters=RunsFilter(statuses=_IN_PROGRESS))
    return [r.dagster_run.run_id for r in records if r.dagster_run.run_id != current_run_id]


def remove_stale_temp_files(root: str | Path, older_than: float) -> list[Path]:
    """Delete the temp files of killed writers under ``root`` last written before ``older_than``.

    Only call this while no other run is in progress: a live writer's temp file looks the same.
    The age bound keeps even that race out: a live writer of a run that started after this one
    writes after ``older_than``.
    """
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for path in root.rglob(".*"):
        try:
            if _TEMP_FILE.match(path.name) and path.is_file() and path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # renamed into place or removed by its writer meanwhile
    return removed


def recover(instance: DagsterInstance | None, run_id: str | None, artifacts_root: str | Path, log=None) -> None:
    """Everything a run (or a sensor tick, ``run_id=None``) does before it starts work.

    Args:
        instance: the Dagster instance; nothing happens without one (direct invocation in tests).
        run_id: the current run, or ``None`` at a sensor tick (which then only fails dead runs).
        artifacts_root: where the artifacts, and so the writers' temp files, live.
        log: a logger with ``.info``/``.warning`` (the run's), or ``None``.
    """
    if instance is None:
        return
    started = time.time()
    if run_id is not None:
        record_worker(instance, run_id)
        record = instance.get_run_record_by_id(run_id)
        if record is not None and record.start_time:
            started = record.start_time
    for line in recover_dead_runs(instance, run_id):
        if log is not None:
            log.warning(line)
    if run_id is None:
        return
    others = other_runs_in_progress(instance, run_id)
    if others:
        if log is not None:
            log.info(f"temp files of killed writers are left for later: runs {others} are in progress")
        return
    removed = remove_stale_temp_files(artifacts_root, older_than=started)
    if removed and log is not None:
        log.info(f"removed {len(removed)} temp file(s) left by killed writers: {[str(p) for p in removed[:5]]}")


def _free_slots(instance: DagsterInstance, run_id: str) -> None:
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def _process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux ``/proc``), or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3 of stat(5)
    return int(fields[19])  # field 22, starttime


def _process_alive(pid: int, recorded_start: str | None) -> bool:
    """Whether the process that ran a run still runs: same pid, same start time, not a zombie."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): signal 0, which cannot see pid reuse
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False  # killed, waiting for its parent to reap it
    return recorded_start is None or fields[19] == recorded_start
