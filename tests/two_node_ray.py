"""A two-node Ray cluster of its own on 127.0.0.1, for tests and the node-kill measurement (issue #27).

Both nodes are started with `ray start` on free ports, under a temp dir of their own, so the
`ray_current_cluster` file, ports and processes of other Ray users of the machine are never touched:
`stop` SIGKILLs only the processes of the two sessions that the `ray start` calls ran in (gcs,
raylets, agents and the workers, whose command lines Ray overwrites with ``ray::...`` titles), never
a global `ray stop`. The nodes inherit this process's environment: with RAY_AUTH_MODE=token and a
token (conftest.py sets both) the cluster runs token authentication, as a Ray 2.60 cluster does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
SECOND_NODE = "legolas_test_second_node"  # a custom resource: tells the second node in ray.nodes()

# Node death is noticed by the GCS health check: 5 missed checks 1 s apart (~5 s) instead of Ray's
# default 3 s apart (~15 s), loose enough for a loaded 2-core machine (load average 13 in trials).
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


@dataclass
class TwoNodes:
    address: str  # the head's GCS address, host:port
    second_raylet: int  # pid of the second node's raylet: SIGKILL it to kill that node
    sessions: set[int]  # session ids of every process of the cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parent(pid: int) -> int | None:
    """The parent of ``pid`` (Ray workers are children of their node's raylet); None once it is gone."""
    stat = _stat(pid)
    return stat[1] if stat else None


@contextmanager
def two_nodes():
    """Start a head (1 CPU) and a second node (1 CPU, resource ``SECOND_NODE``); yield a ``TwoNodes``."""
    base = tempfile.mkdtemp(prefix="lgr-", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    # Workers started by the nodes import the legolas_ml that the driver imported (a checkout's, or an install's).
    import legolas_ml

    code = str(Path(legolas_ml.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, os.environ.get("PYTHONPATH", "")])}

    def node(temp_dir):  # each node's agents on ports of their own: Ray's fixed defaults would collide
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(80 * 2**20),
                "--temp-dir", temp_dir, "--dashboard-agent-listen-port", str(free_port()),
                "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]

    sessions: set[int] = set()
    try:
        _ray_start("--head", "--port", str(port), "--include-dashboard=false", "--dashboard-port", str(free_port()),
                   "--ray-client-server-port", str(free_port()), "--system-config", json.dumps(HEALTH_CHECK),
                   *node(f"{base}/head"), env=env)
        sessions |= _sessions_under(base)
        _ray_start("--address", f"127.0.0.1:{port}", "--resources", json.dumps({SECOND_NODE: 1}),
                   *node(f"{base}/second"), env=env)
        sessions |= _sessions_under(base)
        (raylet,) = [pid for pid, cmdline in _cmdlines() if f"{base}/second" in cmdline and "/raylet/raylet " in cmdline]
        yield TwoNodes(f"127.0.0.1:{port}", raylet, sessions)
    finally:
        sessions |= _sessions_under(base)
        stop(sessions)
        shutil.rmtree(base, ignore_errors=True)


def stop(sessions: set[int]) -> None:
    """SIGKILL every process of ``sessions`` (never this process's own session) and wait for them."""
    sessions = sessions - {os.getsid(0)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [pid for pid, stat in _stats() if stat[2] in sessions and stat[0] != "Z"]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _ray_start(*args, env):
    # A session of its own: every daemon it starts, and their workers, inherit it (none calls setsid),
    # so stop() finds them all, and only them, by session id.
    done = subprocess.run([RAY, "start", *args, "--disable-usage-stats"], env=env, capture_output=True, text=True,
                          timeout=90, start_new_session=True)
    assert done.returncode == 0, f"ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _sessions_under(directory):
    """Sessions of the processes whose command line names ``directory`` (one per `ray start`)."""
    return {stat[2] for pid, cmdline in _cmdlines() if directory in cmdline and (stat := _stat(pid))}


def _cmdlines():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # exited while we looked


def _stats():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            yield int(entry.name), stat


def _stat(pid):
    """(state, ppid, session id) of ``pid``; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3])
