"""The ray runner on a real two-node cluster (issue #27): a node dies mid-fold, the run still finishes.

The cluster is the test's own (two_node_ray.py: free ports, its own temp dir, only its own processes
killed at the end). Its nodes inherit RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (conftest.py): it runs
token authentication, as Ray 2.60 clusters do, and the driver joins with the plain `host:port` form.
"""

import os
import re
import signal
import warnings

import pytest
import ray
from ray._private import state as ray_state  # the GCS actor table: no dashboard needed (Ray pinned to 2.60.0)

from legolas_ml.runners.ray_progress import ProgressLostWarning, ProgressQueue
from legolas_ml.runners.ray_runner import RayRunner, connect_failure
from legolas_ml.core.settings import SettingsError, check_ray_address
from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.cross_validation import encode_dataset, finished_fold, plan_splits
from synthetic import separable_frame, tiny_config
from two_node_ray import SECOND_NODE, parent, two_nodes

VERSION = "data-v1"


@pytest.fixture
def cluster():
    with two_nodes() as nodes:
        try:
            yield nodes
        finally:
            if ray.is_initialized():
                ray.shutdown()


@pytest.fixture(scope="module")
def dataset():
    df = separable_frame(40)
    config = tiny_config(epochs=6, patience=6)
    return encode_dataset(df, config), plan_splits(df, config), config


def _assert_folds_verify(results, folds_dir, plan, config):
    for result in results.values():
        load_checkpoint(result.checkpoint_path)  # its SHA-256 checked
        assert finished_fold(folds_dir / os.path.basename(result.checkpoint_path), VERSION, plan.fingerprint(), config) is not None
    assert not [p.name for p in folds_dir.iterdir() if p.name.endswith(".tmp")]


def _queue_nodes():
    """Node ids of this job's live progress-queue actors, from the GCS actor table."""
    return [a["Address"]["NodeID"] for a in ray_state.actors().values() if a["ActorClassName"].endswith("_QueueActor") and a["State"] == "ALIVE"]


def test_killing_the_second_node_mid_fold_still_finishes_every_fold(cluster, dataset, tmp_path):
    address, second_raylet = cluster.address, cluster.second_raylet
    data, plan, config = dataset
    events, seen = [], {}

    def on_epoch(record):
        events.append(record)
        if "killed" in seen or parent(record["pid"]) != second_raylet:
            return
        # A fold trains on the second node: note where Ray keeps what the runner placed, kill the node.
        seen["driver_node"] = ray.get_runtime_context().get_node_id()
        seen["queue_nodes"] = _queue_nodes()
        second_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and SECOND_NODE in n["Resources"])
        os.kill(second_raylet, signal.SIGKILL)
        seen.update(killed=record["fold"], second_node=second_node, attempt=record["attempt"])

    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgressLostWarning)  # the queue must survive, not only be survived
        results = RayRunner(address=address, max_retries=2, poll_s=0.05).run_folds(
            data, plan, [0, 1], config, tmp_path, data_version=VERSION, on_epoch=on_epoch, log=lines.append
        )

    assert "killed" in seen, f"no fold ran on the second node: {lines}"
    assert seen["queue_nodes"] == [seen["driver_node"]] and seen["second_node"] != seen["driver_node"]
    assert list(results) == [0, 1] and not any(r.reused for r in results.values())
    _assert_folds_verify(results, tmp_path, plan, config)
    # The killed fold was retried (on the head) and its retry's progress still reached the driver.
    k = seen["killed"]
    assert any(f"fold {k}: attempt 2 of 3 started" in line for line in lines), lines
    assert any(r["fold"] == k and r["attempt"] == seen["attempt"] + 1 for r in events)
    assert not any("progress queue lost" in line for line in lines)


def test_a_dead_progress_queue_costs_progress_lines_not_the_run(dataset, tmp_path, monkeypatch):
    data, plan, config = dataset
    queues, records = [], []
    original_init = ProgressQueue.__init__

    def remembering_init(self, node_id):
        original_init(self, node_id)
        queues.append(self)

    monkeypatch.setattr(ProgressQueue, "__init__", remembering_init)

    def on_epoch(record):
        records.append(record)
        if len(records) == 1:
            ray.kill(queues[0].actor, no_restart=True)  # as if its node had died

    # No address: the runner's embedded instance; one fold, whose worker goes on putting records
    # after the kill (each put must not fail the fold) and whose result must still land.
    monkeypatch.setattr(ray, "init", _embedded_init_with(num_cpus=1))
    lines = []
    with pytest.warns(ProgressLostWarning, match="folds keep training"):
        results = RayRunner(poll_s=0.05).run_folds(data, plan, [0], config, tmp_path, data_version=VERSION,
                                                   on_epoch=on_epoch, log=lines.append)

    assert list(results) == [0]
    _assert_folds_verify(results, tmp_path, plan, config)
    assert any(line.startswith("ray: progress queue lost (") for line in lines), lines
    assert len(records) < sum(r.epochs_run for r in results.values())  # lines after the kill are lost


def _embedded_init_with(**resources):
    """``ray.init`` that gives the runner's embedded instance ``resources`` (the runner passes none)."""
    real_init = ray.init

    def init(**kwargs):
        return real_init(**kwargs, **resources, log_to_driver=False)

    return init


@pytest.mark.parametrize("address", ["", "auto", "ray://head.internal:10001", "127.0.0.1:6379", "head-0.ray.svc:6379"])
def test_ray_address_forms_are_accepted(address):
    assert check_ray_address(address) == address
    assert RayRunner(address=address).address == (address or None)


@pytest.mark.parametrize("address", ["head:10001/", "http://head:8265", "ray://head", "head", "127.0.0.1:99999", "local"])
def test_a_ray_address_outside_the_forms_names_the_setting(address, monkeypatch):
    expected = r"LEGOLAS_RAY_ADDRESS must be unset \(an embedded Ray instance\), 'auto', 'ray://host:port', 'host:port' .*got " + re.escape(repr(address))
    with pytest.raises(SettingsError, match=expected):
        RayRunner(address=address)
    monkeypatch.setenv("LEGOLAS_RAY_ADDRESS", address)
    from legolas_ml.core import settings

    with pytest.raises(SettingsError, match="LEGOLAS_RAY_ADDRESS must be"):
        settings.ray_address()


def test_a_refused_connection_names_the_address_and_the_auth_mode(monkeypatch):
    unset = connect_failure("127.0.0.1:6379", None)
    assert "LEGOLAS_RAY_ADDRESS='127.0.0.1:6379'" in unset and "RAY_AUTH_MODE is unset here" in unset
    assert "export RAY_AUTH_MODE=token" in unset and "docs/ray.md" in unset
    token = connect_failure("ray://head:10001", "token")
    assert "RAY_AUTH_MODE is 'token' here" in token and "RAY_AUTH_TOKEN" in token and "export" not in token

    def refusing_init(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refusing_init)
    monkeypatch.delenv("RAY_AUTH_MODE")
    with pytest.raises(ConnectionError, match=r"could not join the Ray cluster at LEGOLAS_RAY_ADDRESS='127\.0\.0\.1:6379'.*RAY_AUTH_MODE is unset"):
        RayRunner(address="127.0.0.1:6379")._connect()
