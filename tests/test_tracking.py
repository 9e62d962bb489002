"""Optional MLflow tracking on a local SQLite store: fold runs, per-epoch metrics, the champion alias."""

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from legolas_ml.core.settings import SettingsError, mlflow_tracking_uri  # noqa: E402
from legolas_ml.tracking import (  # noqa: E402
    CHAMPION_ALIAS, MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MlflowTracker, batches, fold_run_to_reuse,
    tracker_from_settings,
)
from legolas_ml.training.checkpoint import CheckpointError, read_sidecar  # noqa: E402
from synthetic import untrained_folds  # noqa: E402


def _fold(k: int, curve) -> dict:
    history = [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "val_loss": 1.1 - 0.1 * e, "val_balanced_accuracy": 0.5 + 0.1 * e + 0.01 * k,
                "val_f1_macro": 0.4 + 0.1 * e} for e in range(3)]
    return {"fold": k, "history": history, "best_metrics": {"balanced_accuracy": 0.7 + 0.01 * k, "accuracy": 0.8, "f1_macro": 0.6},
            "best_epoch": 2, "train_samples_per_s": 100.0, "curve_path": str(curve), "data_version": "d1", "split_fingerprint": "s1"}


def test_folds_and_champion_in_a_local_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    curve = tmp_path / "fold0.png"
    curve.write_bytes(b"\x89PNG fake")
    runs = tracker.log_folds("demo", "v1key", {"epochs": 3, "model": {"name": "tiny"}}, {"0": _fold(0, curve), "1": _fold(1, curve)})
    assert sorted(runs) == ["0", "1"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(runs["1"])
    assert run.data.params["model.name"] == "tiny" and run.data.tags["legolas.fold"] == "1"
    steps = [(m.step, m.value) for m in client.get_metric_history(runs["1"], "val_balanced_accuracy")]
    assert steps == [(0, pytest.approx(0.51)), (1, pytest.approx(0.61)), (2, pytest.approx(0.71))]
    assert {a.path for a in client.list_artifacts(runs["0"])} == {"fold0.png", "fold0_result.json"}
    assert (tmp_path / "mlflow-artifacts").is_dir()  # beside the SQLite file, never ./mlruns in the working directory

    checkpoints = untrained_folds(tmp_path / "folds")
    manifest = {"version": "v1key", "tenant": "demo", "checkpoints": checkpoints, "sha256": [read_sidecar(c)["sha256"] for c in checkpoints],
                "labels": ["billing", "shipping", "account"], "test_metrics": {"balanced_accuracy": 0.75, "n": 40}, "data_version": "d1",
                "test_metrics_human": {"n": 10, "balanced_accuracy": 0.6, "accuracy": 0.7},
                "llm_agreement": {"n": 30, "balanced_accuracy": None, "accuracy": 0.8}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    first = tracker.set_champion("demo", "v1key", manifest, path)
    ensemble_run = client.get_model_version("legolas-demo", first).run_id
    logged = client.get_run(ensemble_run).data.metrics
    assert logged["test_balanced_accuracy"] == 0.75 and logged["test_human_balanced_accuracy"] == 0.6
    assert logged["llm_agreement_accuracy"] == 0.8 and "llm_agreement_balanced_accuracy" not in logged  # None: not logged
    # The version's source is a pyfunc model that carries its folds, their sidecars, the tokenizer and the manifest.
    source = {a.path for a in client.list_artifacts(ensemble_run, "model/artifacts")}
    assert {"model/artifacts/tokenizer", "model/artifacts/manifest.json"} <= source
    assert {f"model/artifacts/{Path(c).name}" for c in checkpoints} | {f"model/artifacts/{Path(c).with_suffix('.json').name}" for c in checkpoints} <= source
    second = tracker.set_champion("demo", "v2key", {**manifest, "version": "v2key"}, path)
    assert str(client.get_model_version_by_alias("legolas-demo", CHAMPION_ALIAS).version) == second != first
    # A rollback to a version registered before only moves the alias: no third model version.
    assert tracker.set_champion("demo", "v1key", manifest, path) == first
    assert str(client.get_model_version_by_alias("legolas-demo", CHAMPION_ALIAS).version) == first
    assert len(client.search_model_versions("name = 'legolas-demo'")) == 2


def test_off_by_default_and_a_bad_uri_is_named(monkeypatch):
    monkeypatch.delenv("LEGOLAS_MLFLOW_TRACKING_URI", raising=False)
    assert tracker_from_settings() is None
    monkeypatch.setenv("LEGOLAS_MLFLOW_TRACKING_URI", "var/mlflow.db")
    with pytest.raises(SettingsError, match=r"LEGOLAS_MLFLOW_TRACKING_URI must start with sqlite:///.*got 'var/mlflow.db'"):
        mlflow_tracking_uri()


def test_a_tracking_uri_password_never_reaches_logs_or_errors(monkeypatch):
    from legolas_ml.core import settings
    from legolas_ml.tracking import redacted

    monkeypatch.setenv("LEGOLAS_MLFLOW_TRACKING_URI", "postgresql://bob:hunter2@db:5432/mlflow")
    assert redacted(RuntimeError("cannot connect to postgresql://bob:hunter2@db:5432/mlflow")) == (
        "cannot connect to postgresql://bob:***@db:5432/mlflow")
    monkeypatch.setenv("LEGOLAS_MLFLOW_TRACKING_URI", "ftp://bob:hunter2@db/x")
    with pytest.raises(ValueError) as error:
        settings.mlflow_tracking_uri()
    assert "hunter2" not in str(error.value) and "ftp://bob:***@db/x" in str(error.value)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One SQLite store for the tests below (creating one runs MLflow's migrations: seconds); each its own tenant."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_fold_runs_are_logged_in_batches_and_a_reused_fold_keeps_its_run(tmp_path, monkeypatch, shared_store):
    tracker = MlflowTracker(shared_store)
    calls = []
    batch = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda run_id, **kw: calls.append(run_id) or batch(run_id, **kw))
    for one_by_one in ("log_metric", "log_param"):  # batched, never one call per value
        monkeypatch.setattr(tracker.client, one_by_one, lambda *a, **kw: pytest.fail("logged one value per call"))
    checkpoints = untrained_folds(tmp_path / "folds")
    folds = {str(k): {**_fold(k, tmp_path / "none.png"), "checkpoint_path": c} for k, c in enumerate(checkpoints)}
    config = {f"setting_{i}": i for i in range(150)}  # more params than one call takes
    first = tracker.log_folds("batched", "v1key", config, folds)
    assert calls.count(first["0"]) == 2  # 150 params + 14 metrics: 100 in the first call, the rest in the second
    run = tracker.client.get_run(first["0"])
    assert len(run.data.params) == 150 and run.data.tags["legolas.checkpoint_sha256"] == read_sidecar(checkpoints[0])["sha256"]
    assert [m.value for m in tracker.client.get_metric_history(first["0"], "val_balanced_accuracy")] == pytest.approx([0.5, 0.6, 0.7])
    # A re-materialization with the same folds: the same runs, no new one.
    calls.clear()
    assert tracker.log_folds("batched", "v1key", config, {k: {**f, "reused": True} for k, f in folds.items()}) == first and calls == []
    # Fold 1 retrained under the same key (its checkpoint was lost): another model, a new run; fold 0 keeps its run.
    retrained = untrained_folds(tmp_path / "again", n_folds=2, seed=7)
    again = tracker.log_folds("batched", "v1key", config, {**folds, "1": {**folds["1"], "checkpoint_path": retrained[1]}})
    assert again["0"] == first["0"] and again["1"] != first["1"]
    experiment = tracker.experiment_id("batched")
    assert len(tracker.client.search_runs([experiment])) == 3


def test_a_run_needs_as_few_batches_as_mlflows_limits_allow():
    assert list(batches(0, 0)) == []
    assert list(batches(30, 200)) == [(slice(0, 30), slice(0, 200))]
    calls = list(batches(250, 2500))
    for p, m in calls:
        assert p.stop - p.start <= MAX_PARAMS_PER_BATCH and m.stop - m.start <= MAX_METRICS_PER_BATCH
        assert (p.stop - p.start) + (m.stop - m.start) <= MAX_ENTITIES_PER_BATCH
    assert sum(p.stop - p.start for p, _ in calls) == 250 and sum(m.stop - m.start for _, m in calls) == 2500
    assert len(calls) == 3  # 2750 entities, 1000 a call


def test_which_logged_run_a_fold_reuses():
    logged = {"r2": {"legolas.fold": "0", "legolas.checkpoint_sha256": "aaa"}, "r1": {"legolas.fold": "1"}, "r3": {"legolas.fold": "0", "legolas.checkpoint_sha256": "bbb"}}
    assert fold_run_to_reuse(logged, "0", "bbb") == "r3"
    assert fold_run_to_reuse(logged, "0", "ccc") is None  # another model of fold 0
    assert fold_run_to_reuse(logged, "1", "ddd") == "r1"  # logged before runs carried the checkpoint: same key and fold
    assert fold_run_to_reuse(logged, "0", None) == "r2"  # no checkpoint known: the first by id
    assert fold_run_to_reuse(logged, "2", "aaa") is None


def test_a_fold_replaced_since_the_manifest_is_never_registered(tmp_path, shared_store):
    tracker = MlflowTracker(shared_store)
    checkpoints = untrained_folds(tmp_path / "folds")
    manifest = {"version": "v1key", "tenant": "replaced", "checkpoints": checkpoints, "labels": ["billing", "shipping", "account"],
                "sha256": [read_sidecar(checkpoints[0])["sha256"], "0" * 64]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"fold1\.safetensors has sha256 .* but version v1key's manifest recorded 000000000000"):
        tracker.set_champion("replaced", "v1key", manifest, path)
    assert tracker.client.search_model_versions("name = 'legolas-replaced'") == []
