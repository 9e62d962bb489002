"""Optional MLflow tracking on a local SQLite store: fold runs, per-epoch metrics, the champion alias."""

import json

import pytest

mlflow = pytest.importorskip("mlflow")

from legolas_ml.settings import SettingsError, mlflow_tracking_uri  # noqa: E402
from legolas_ml.tracking import CHAMPION_ALIAS, MlflowTracker, tracker_from_settings  # noqa: E402


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

    manifest = {"version": "v1key", "checkpoints": ["a", "b"], "test_metrics": {"balanced_accuracy": 0.75, "n": 40}, "data_version": "d1",
                "test_metrics_human": {"n": 10, "balanced_accuracy": 0.6, "accuracy": 0.7},
                "llm_agreement": {"n": 30, "balanced_accuracy": None, "accuracy": 0.8}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    first = tracker.set_champion("demo", "v1key", manifest, path)
    ensemble_run = client.get_model_version("legolas-demo", first).run_id
    logged = client.get_run(ensemble_run).data.metrics
    assert logged["test_balanced_accuracy"] == 0.75 and logged["test_human_balanced_accuracy"] == 0.6
    assert logged["llm_agreement_accuracy"] == 0.8 and "llm_agreement_balanced_accuracy" not in logged  # None: not logged
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
    from legolas_ml import settings
    from legolas_ml.tracking import redacted

    monkeypatch.setenv("LEGOLAS_MLFLOW_TRACKING_URI", "postgresql://bob:hunter2@db:5432/mlflow")
    assert redacted(RuntimeError("cannot connect to postgresql://bob:hunter2@db:5432/mlflow")) == (
        "cannot connect to postgresql://bob:***@db:5432/mlflow")
    monkeypatch.setenv("LEGOLAS_MLFLOW_TRACKING_URI", "ftp://bob:hunter2@db/x")
    with pytest.raises(ValueError) as error:
        settings.mlflow_tracking_uri()
    assert "hunter2" not in str(error.value) and "ftp://bob:***@db/x" in str(error.value)
