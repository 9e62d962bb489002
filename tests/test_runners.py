"""Fold runners against a real local Ray instance (2 CPUs, tiny models): parallel folds, faults, transfer."""

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import torch

from legolas_ml.runners import FoldWorkerLostError, SequentialRunner, make_runner
from legolas_ml.runners.ray_runner import RayRunner
from legolas_ml.runners.transfer import accept_fold_payload, train_fold_payload
from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint
from legolas_ml.training.cross_validation import encode_dataset, finished_fold, plan_splits
from legolas_ml.training.trainer import NonFiniteLossError
from synthetic import separable_frame, tiny_config

VERSION = "data-v1"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset():
    df = separable_frame(40)
    config = tiny_config(epochs=5)
    return encode_dataset(df, config), plan_splits(df, config), config


@pytest.fixture
def one_thread():
    """The sequential reference on one torch thread, like each 1-CPU Ray task."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kill_first_attempt_of(fold):
    """An on_epoch hook that SIGKILLs the worker of ``fold``'s first attempt at its first epoch."""
    killed = []

    def on_epoch(record):
        if record["fold"] == fold and record["attempt"] == 0 and not killed:
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    return on_epoch, killed


def _files(folds_dir):
    return sorted(p.name for p in folds_dir.iterdir())


def _assert_folds_verify(results, folds_dir, plan, config):
    for k, result in results.items():
        assert finished_fold(folds_dir / os.path.basename(result.checkpoint_path), VERSION, plan.fingerprint(), config) is not None
    assert not [name for name in _files(folds_dir) if name.endswith(".tmp")]


def test_ray_trains_folds_in_parallel_like_sequential(local_ray, dataset, tmp_path, one_thread):
    data, plan, config = dataset
    expected = SequentialRunner().run_folds(data, plan, [0, 1, 2], config, tmp_path / "seq", data_version=VERSION)

    events = []
    runner = RayRunner(cpus_per_fold=0.5, poll_s=0.05)  # half a CPU each: all three folds at once on 2 CPUs
    results = runner.run_folds(
        data, plan, [0, 1, 2], config, tmp_path / "ray", data_version=VERSION,
        on_epoch=lambda r: events.append(("epoch", r)), log=lambda line: events.append(("log", line)),
    )

    assert list(results) == [0, 1, 2]
    for k in (0, 1, 2):
        got, want = results[k], expected[k]
        assert got.best_epoch == want.best_epoch and got.epochs_run == want.epochs_run
        for name in ("balanced_accuracy", "accuracy", "f1_macro", "loss"):
            assert got.best_metrics[name] == pytest.approx(want.best_metrics[name], rel=1e-4, abs=1e-6)
        assert [h["train_loss"] for h in got.history] == pytest.approx([h["train_loss"] for h in want.history], rel=1e-4)
        assert got.checkpoint_path == str(tmp_path / "ray" / os.path.basename(want.checkpoint_path))
        record = json.loads((tmp_path / "ray" / os.path.basename(got.checkpoint_path)).with_suffix(".result.json").read_text())
        assert record["result"]["checkpoint_path"] == got.checkpoint_path
    assert _files(tmp_path / "ray") == _files(tmp_path / "seq")  # the same checkpoint layout
    _assert_folds_verify(results, tmp_path / "ray", plan, config)

    # Per-epoch records of every fold, tagged with worker and device, before the fold's result.
    records = [r for kind, r in events if kind == "epoch"]
    assert {r["fold"] for r in records} == {0, 1, 2} and all(r["device"] == "cpu" and r["attempt"] == 0 for r in records)
    assert len({r["pid"] for r in records} - {os.getpid()}) == 3  # three worker processes at once, none of them here
    for k in (0, 1, 2):
        done = next(i for i, (kind, x) in enumerate(events) if kind == "log" and x.startswith(f"fold {k}: done"))
        assert sum(1 for kind, r in events[:done] if kind == "epoch" and r["fold"] == k) == results[k].epochs_run

    # A rerun finds every fold finished: nothing is submitted, the verified files are reused.
    lines = []
    again = runner.run_folds(data, plan, [0, 1, 2], config, tmp_path / "ray", data_version=VERSION, log=lines.append)
    assert all(r.reused for r in again.values()) and not any("started on" in line for line in lines)


def test_a_killed_worker_is_retried_and_finished_folds_are_kept(local_ray, dataset, tmp_path):
    data, plan, config = dataset
    folds_dir = tmp_path / "folds"
    stem = "best_model_text_all-MiniLM-L6-v2_"

    # No retry budget: the killed fold is lost, the other one finishes and stays on disk.
    on_epoch, killed = _kill_first_attempt_of(1)
    with pytest.raises(FoldWorkerLostError, match=r"folds \[1\] lost their worker 1 times.*folds \[0\] finished"):
        RayRunner(max_retries=0, poll_s=0.05).run_folds(data, plan, [0, 1], config, folds_dir, data_version=VERSION, on_epoch=on_epoch)
    pids_killed = list(killed)
    assert killed and _files(folds_dir) == [f"{stem}fold0{suffix}" for suffix in (".json", ".result.json", ".safetensors")]
    assert finished_fold(folds_dir / f"{stem}fold0.safetensors", VERSION, plan.fingerprint(), config) is not None

    # With retries: the rerun reuses fold 0, fold 1's worker is killed again, Ray retries it.
    on_epoch, killed = _kill_first_attempt_of(1)
    lines, attempts = [], []
    results = RayRunner(max_retries=2, poll_s=0.05).run_folds(
        data, plan, [0, 1], config, folds_dir, data_version=VERSION,
        on_epoch=lambda r: (attempts.append((r["fold"], r["attempt"])), on_epoch(r)), log=lines.append,
    )
    pids_killed += killed
    assert killed and results[0].reused and not results[1].reused
    assert (1, 1) in attempts and not any(fold == 0 for fold, _ in attempts)
    assert any("fold 1: attempt 2 of 3 started" in line for line in lines)
    for result in results.values():
        load_checkpoint(result.checkpoint_path)  # checksum verified: no corrupt file
    _assert_folds_verify(results, folds_dir, plan, config)
    # The killed workers' temporary checkpoints were swept by the folds that ran after them.
    assert not [p for pid in pids_killed for p in Path(tempfile.gettempdir()).glob(f"legolas-fold*-pid{pid}-*")]


def test_a_nan_fold_fails_the_run_without_retries(local_ray, dataset, tmp_path):
    data, plan, _ = dataset
    config = tiny_config(epochs=5, lr=1e30)  # the weights overflow in the first steps: loss NaN
    lines = []
    with pytest.raises(NonFiniteLossError, match=r"fold \d: training loss became nan at epoch 0"):
        RayRunner(max_retries=3, poll_s=0.05).run_folds(
            data, plan, [0, 1, 2], config, tmp_path, data_version=VERSION, log=lines.append
        )
    assert any("attempt 1 of 4 started" in line for line in lines)
    assert not any("attempt 2 of 4" in line for line in lines)  # a failing fold is not retried
    assert list(tmp_path.iterdir()) == []


def test_interrupting_the_driver_stops_the_remote_folds(local_ray, dataset, tmp_path):
    data, plan, _ = dataset
    config = tiny_config(epochs=50, patience=50)  # long enough to still run when interrupted
    pids = []

    def interrupt(record):
        pids.append(record["pid"])
        raise KeyboardInterrupt  # what Ctrl-C or a Dagster run termination raises in the driver

    with pytest.raises(KeyboardInterrupt):
        RayRunner(poll_s=0.05).run_folds(data, plan, [0, 1], config, tmp_path, data_version=VERSION, on_epoch=interrupt)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pids[0]):
        time.sleep(0.1)
    assert not _alive(pids[0]), f"worker {pids[0]} still trains after the driver was interrupted"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is dead, only not yet reaped
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_driver_refuses_a_checkpoint_that_does_not_match_its_hash(dataset, tmp_path):
    data, plan, _ = dataset
    config = tiny_config(epochs=1)
    payload = train_fold_payload(data, plan, 0, config, data_version=VERSION, worker="w:1")
    weights = bytearray(payload.files[payload.checkpoint])
    weights[len(weights) // 2] ^= 0xFF
    tampered = type(payload)(**{**payload.__dict__, "files": {**payload.files, payload.checkpoint: bytes(weights)}})
    with pytest.raises(CheckpointError, match=r"fold 0 from worker w:1: .*\.safetensors has sha256 .* nothing written"):
        accept_fold_payload(tampered, tmp_path, data_version=VERSION, split_fingerprint=plan.fingerprint(), config=config)
    assert list(tmp_path.iterdir()) == []

    result = accept_fold_payload(payload, tmp_path, data_version=VERSION, split_fingerprint=plan.fingerprint(), config=config)
    assert finished_fold(tmp_path / payload.checkpoint, VERSION, plan.fingerprint(), config) is not None
    assert result.checkpoint_path == str(tmp_path / payload.checkpoint)


def test_make_runner_names_and_settings():
    assert make_runner("sequential").name == "sequential"
    several_gpus = torch.cuda.is_available() and torch.cuda.device_count() > 1
    assert make_runner("auto").name == ("ray" if several_gpus else "sequential")
    assert make_runner("auto", address="ray://head:10001").name == "ray"  # connects only when folds run
    assert make_runner("ray", gpus_per_fold=0.25).gpus_per_fold == 0.25
    with pytest.raises(ValueError, match=r"runner must be one of \('auto', 'sequential', 'ray'\), got 'threads'"):
        make_runner("threads")
    with pytest.raises(ValueError, match="gpus_per_fold must be .* got 1.5"):
        make_runner("ray", gpus_per_fold=1.5)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0, got -1"):
        make_runner("ray", max_retries=-1)


def test_sequential_runner_tags_records_and_checks_folds(dataset, tmp_path):
    data, plan, _ = dataset
    config = tiny_config(epochs=1)
    records = []
    results = SequentialRunner().run_folds(data, plan, [2], config, tmp_path, data_version=VERSION, on_epoch=records.append)
    assert records[0]["pid"] == os.getpid() and records[0]["device"] == "cpu" and records[0]["attempt"] == 0
    assert "pid" not in results[2].history[0]  # the tags are not written into the fold's record
    with pytest.raises(ValueError, match=r"fold_indices must be in 0\.\.2, got \[3\]"):
        SequentialRunner().run_folds(data, plan, [3], config, tmp_path, data_version=VERSION)


def test_starting_ray_keeps_the_callers_sigterm_handler(monkeypatch):
    """ray.init installs its own SIGTERM handler; Dagster's (run termination) must survive it."""

    def dagster_like_handler(signum, frame):
        raise KeyboardInterrupt

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does

    previous = signal.signal(signal.SIGTERM, dagster_like_handler)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    try:
        assert RayRunner()._connect() is True
        assert signal.getsignal(signal.SIGTERM) is dagster_like_handler
        assert RayRunner(address="ray://head:10001")._connect() is True
    finally:
        signal.signal(signal.SIGTERM, previous)
    # No address: an embedded instance of its own; an address: join that cluster.
    assert calls == [
        {"address": "local", "include_dashboard": False, "runtime_env": None},
        {"address": "ray://head:10001", "runtime_env": None},
    ]
