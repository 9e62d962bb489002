"""Issue #27, serve the champion: the registered MLflow version is a pyfunc of the whole ensemble, and
``mlflow models serve -m models:/legolas-<tenant>@champion`` answers what ``ensemble_predictions`` wrote.

The chain runs in process on the tiny model with MLflow tracking on (a SQLite store in tmp_path): fold
runs logged by ``fold_models``, the version registered and aliased by the operator's ``promote_job``
(the same ``_mirror_champion`` as ``promoted_ensemble``), then ``ensemble_predictions`` scores the
store. What is compared is the served answer, not the model's accuracy: the folds train 2 epochs,
and the runs are split where the blocking ``above_chance`` check would stop a model at chance.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from dagster import DagsterInstance  # noqa: E402

from dagster_helpers import key, resources, run_chain  # noqa: E402
from legolas_ml.data.store import open_tenant_store  # noqa: E402
from legolas_ml.lifecycle.artifacts import TenantArtifacts  # noqa: E402
from legolas_ml.lifecycle.registry import ModelRegistry  # noqa: E402
from legolas_ml.scoring.pyfunc import OUTPUT_COLUMNS, model_texts, save_ensemble_model  # noqa: E402
from legolas_ml.training.checkpoint import read_sidecar  # noqa: E402
from synthetic import untrained_folds  # noqa: E402
from test_dagster_chain import fill_demo  # noqa: E402

pytestmark = pytest.mark.slow
MODEL_URI = "models:/legolas-demo@champion"
EPOCHS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A promoted champion mirrored into MLflow, and the store scored by ``ensemble_predictions``."""
    from legolas_assets.lifecycle import promote_job

    home = tmp_path_factory.mktemp("home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    fill_demo(home, conversations=200, reviews=60)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEGOLAS_MLFLOW_TRACKING_URI", uri)
        env.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.pyfunc.load_model resolves models:/ against
        instance = DagsterInstance.ephemeral()
        trained = run_chain(home, instance, selection=["labeled_dataset", "stratified_splits", "fold_models"], raise_on_error=False, epochs=EPOCHS)
        assert len([m for m in trained.get_asset_materialization_events() if m.asset_key == key("fold_models")]) == 3
        evaluated = run_chain(home, instance, selection=["cv_metrics", "ensemble_model"], raise_on_error=False, epochs=EPOCHS)
        version = [m for m in evaluated.get_asset_materialization_events() if m.asset_key == key("ensemble_model")][-1] \
            .materialization.metadata["version"].value
        promoted = promote_job.execute_in_process(
            run_config={"ops": {"promote_version": {"config": {"tenant": "demo", "version": version}}}},
            resources=resources(home, epochs=EPOCHS), instance=instance,
        )
        assert promoted.success
        scored = run_chain(home, instance, selection=["ensemble_predictions"], epochs=EPOCHS)
        assert scored.success
        yield {"home": home, "uri": uri, "instance": instance, "version": version, "trained": trained}


def test_a_request_without_texts_is_refused_by_name():
    with pytest.raises(ValueError, match=r"needs a 'text' column \(and optionally 'session_id'\), got columns \['session_id', 'body'\]"):
        model_texts(pd.DataFrame({"session_id": ["a"], "body": ["hello"]}))
    with pytest.raises(ValueError, match=r"non-empty string in every row, got 2 row\(s\) without one \(rows \[1, 2\]\)"):
        model_texts(pd.DataFrame({"text": ["hello", "  ", None]}))


def test_a_saved_version_loads_from_its_directory_and_its_settings_are_checked(tmp_path):
    checkpoints = untrained_folds(tmp_path / "folds")
    manifest = {"version": "v1", "tenant": "demo", "checkpoints": checkpoints, "labels": ["billing", "shipping", "account"],
                "sha256": [read_sidecar(c)["sha256"] for c in checkpoints]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model_dir = save_ensemble_model(manifest, tmp_path / "manifest.json", tmp_path / "model")
    shutil.rmtree(tmp_path / "folds")  # the model directory holds its own copy
    answer = mlflow.pyfunc.load_model(str(model_dir), model_config={"device": "cpu"}).predict(pd.DataFrame({"text": ["refund my card"]}))
    assert list(answer.columns) == list(OUTPUT_COLUMNS) and answer["ml_model_version"].tolist() == ["v1"]
    assert sum(answer["ml_probabilities"][0].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        mlflow.pyfunc.load_model(str(model_dir), model_config={"device": "gpu"})
    with pytest.raises(ValueError, match=r"model_config batch_size must be an integer >= 1, got 0"):
        mlflow.pyfunc.load_model(str(model_dir), model_config={"batch_size": 0})


def _scored_documents(home: Path, version: str) -> pd.DataFrame:
    """What ``ensemble_predictions`` wrote: one row per scored document."""
    fields = ("text", *OUTPUT_COLUMNS)
    with open_tenant_store(None, home, "legolas", "demo") as store:
        docs = [d for d in store.classification_fields(fields) if d.get("ml_model_version") == version]
    assert docs, "ensemble_predictions scored nothing"
    return pd.DataFrame([{"session_id": str(d["session_id"]), **{f: d[f] for f in fields}} for d in docs])


def _assert_same_answers(answer: pd.DataFrame, scored: pd.DataFrame) -> None:
    assert list(answer.columns) == ["session_id", *OUTPUT_COLUMNS]
    assert answer["session_id"].tolist() == scored["session_id"].tolist()
    assert answer["ml_prediction"].tolist() == scored["ml_prediction"].tolist()
    assert answer["ml_model_version"].tolist() == scored["ml_model_version"].tolist()
    assert answer["ml_text_sha256"].tolist() == scored["ml_text_sha256"].tolist()
    labels = list(scored["ml_probabilities"].iloc[0])
    served = np.array([[row[c] for c in labels] for row in answer["ml_probabilities"]])  # (n, n_classes)
    stored = np.array([[row[c] for c in labels] for row in scored["ml_probabilities"]])
    np.testing.assert_allclose(served, stored, atol=2e-6)  # both rounded to 6 digits
    np.testing.assert_allclose(answer["ml_confidence"].to_numpy(float), scored["ml_confidence"].to_numpy(float), atol=2e-6)


def test_the_champion_loads_as_a_pyfunc_and_answers_as_ensemble_predictions(served):
    home, version = served["home"], served["version"]
    scored = _scored_documents(home, version)
    client = mlflow.MlflowClient(tracking_uri=served["uri"])
    champion = client.get_model_version_by_alias("legolas-demo", "champion")
    assert champion.tags["legolas.version"] == version and champion.tags["legolas.flavor"] == "pyfunc"
    # The model carries its folds and tokenizer: with the version's checkpoints moved away it still loads.
    folds_dir = Path(ModelRegistry(TenantArtifacts(home / "output", "demo")).manifest(version)["checkpoints"][0]).parent
    hidden = folds_dir.with_name(folds_dir.name + ".hidden")
    folds_dir.rename(hidden)
    try:
        model = mlflow.pyfunc.load_model(MODEL_URI, model_config={"device": "cpu"})
        answer = model.predict(scored[["session_id", "text"]])
    finally:
        hidden.rename(folds_dir)
    _assert_same_answers(answer, scored)
    tokenizer_dir = Path(model.unwrap_python_model().ensemble.tokenizer.name_or_path)
    assert tokenizer_dir.parts[-3:] == ("model", "artifacts", "tokenizer") and (tokenizer_dir / "tokenizer.json").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, payload: dict, timeout: float = 60) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_as_ensemble_predictions(served, tmp_path):
    scored = _scored_documents(served["home"], served["version"]).head(40)
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    # MLflow starts the server as `uvicorn` by name: the environment's bin first, as an activated venv has it.
    env = {**os.environ, "MLFLOW_TRACKING_URI": served["uri"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    started = time.monotonic()
    try:
        while True:  # up when /ping answers 200 (the model is loaded by then)
            assert server.poll() is None, f"mlflow models serve exited with {server.returncode}: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            assert time.monotonic() - started < 180, f"mlflow models serve not up after 180 s: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        up_s = time.monotonic() - started
        request = {"dataframe_split": {"columns": ["session_id", "text"], "data": scored[["session_id", "text"]].values.tolist()}}
        answer = pd.DataFrame(_post(f"http://127.0.0.1:{port}/invocations", request)["predictions"])
        # A request without a text is refused by the model's signature, naming the column.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"session_id": "x"}]})
        assert refused.value.code == 400 and "text" in refused.value.read().decode()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)  # the server's own process group: mlflow, uvicorn and its worker
            server.wait(timeout=30)
        log.close()
    _assert_same_answers(answer, scored)
    print(f"mlflow models serve: up in {up_s:.1f} s")


def test_rematerializing_reused_folds_logs_no_new_fold_runs(served):
    client = mlflow.MlflowClient(tracking_uri=served["uri"])
    experiment = client.get_experiment_by_name("legolas/demo").experiment_id

    def fold_runs() -> dict[str, str]:
        runs = client.search_runs([experiment], filter_string="tags.`legolas.fold` != ''")
        return {r.info.run_id: r.data.tags["legolas.fold"] for r in runs}

    before = fold_runs()
    assert sorted(before.values()) == ["0", "1", "2"]
    first = {m.materialization.partition: m.materialization.metadata["mlflow_run_id"].value
             for m in served["trained"].get_asset_materialization_events() if m.asset_key == key("fold_models")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEGOLAS_MLFLOW_TRACKING_URI", served["uri"])
        again = run_chain(served["home"], served["instance"], selection=["fold_models"], raise_on_error=False, epochs=EPOCHS)
    materialized = [m.materialization for m in again.get_asset_materialization_events() if m.asset_key == key("fold_models")]
    assert all(m.metadata["reused_finished_fold"].value for m in materialized)
    assert {m.partition: m.metadata["mlflow_run_id"].value for m in materialized} == first
    assert fold_runs() == before
