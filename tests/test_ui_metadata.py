"""What the UI shows after a run: per-fold metadata and observations, headline numbers, versioned artifacts."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, TableMetadataValue

from dagster_helpers import key, run_chain
from test_dagster_chain import fill_demo

pytestmark = pytest.mark.slow

FOLDS = key("fold_models")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui")
    fill_demo(home, conversations=300, reviews=60)
    instance = DagsterInstance.ephemeral()
    # MLflow tracking on (a local SQLite store) when mlflow is installed: the `tracking` extra.
    tracking = importlib.util.find_spec("mlflow") is not None
    previous = os.environ.get("LEGOLAS_MLFLOW_TRACKING_URI")
    if tracking:
        os.environ["LEGOLAS_MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    try:
        # Up to the promotion: the explainability step adds nothing these tests read.
        result = run_chain(
            home, instance,
            selection=["labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble"],
        )
    finally:
        os.environ.pop("LEGOLAS_MLFLOW_TRACKING_URI", None)
        if previous is not None:
            os.environ["LEGOLAS_MLFLOW_TRACKING_URI"] = previous
    assert result.success
    return home, instance, result


def _materialization(result, asset):
    return [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == key(asset)][-1]


def test_every_fold_partition_shows_its_own_numbers_and_curve(run):
    home, _, result = run
    folds = {e.materialization.partition: e.materialization.metadata
             for e in result.get_asset_materialization_events() if e.asset_key == FOLDS}
    assert sorted(folds) == ["0", "1", "2"]
    values = {k: json.loads((home / "output" / "asset_values" / "fold_models" / f"{k}.json").read_text()) for k in folds}
    for key, metadata in folds.items():
        # The partition's own fold, not the first fold's (or a table of all of them) repeated.
        assert metadata["val_balanced_accuracy"].value == round(values[key]["best_metrics"]["balanced_accuracy"], 4)
        assert metadata["shipped_epoch"].value == values[key]["best_epoch"]
        assert metadata["checkpoint"].value == values[key]["checkpoint_path"]
        assert f"fold {key} training curve" in metadata["training_curve"].value
        # The curve inline too, as a table of the partition's own epochs, the shipped one marked.
        epochs = [r.data for r in metadata["curve_by_epoch"].value.records]
        assert [e["val_balanced_accuracy"] for e in epochs] == [round(h["val_balanced_accuracy"], 4) for h in values[key]["history"]]
        assert [e["epoch"] for e in epochs if e["shipped"] == "yes"] == [values[key]["best_epoch"]]
        assert "None" not in metadata["early_stopping"].value
        assert isinstance(metadata["duration_s"].value, float) and metadata["peak_memory_mb"].value > 0
    assert len({m["checkpoint"].value for m in folds.values()}) == 3


def test_every_epoch_of_every_fold_is_observed_while_training(run):
    home, _, result = run
    observations = [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()]
    per_fold = {}
    for observation in observations:
        assert observation.asset_key == FOLDS
        per_fold.setdefault(observation.partition, []).append(observation.metadata)
    values = {k: json.loads((home / "output" / "asset_values" / "fold_models" / f"{k}.json").read_text()) for k in per_fold}
    assert sorted(per_fold) == ["0", "1", "2"]
    for key, epochs in per_fold.items():
        assert [m["epoch"].value for m in epochs] == [h["epoch"] for h in values[key]["history"]]
        assert [m["val_balanced_accuracy"].value for m in epochs] == [round(h["val_balanced_accuracy"], 4) for h in values[key]["history"]]
    # The remaining-time estimate only ever shrinks to 0 once the last epoch of the last fold is done.
    ordered = [o.metadata for o in observations]
    done = [m["run_epochs_done"].value for m in ordered]
    assert done == list(range(1, len(ordered) + 1))
    assert ordered[-1]["remaining_s_at_most"].value == 0 and ordered[-1]["run_folds_done"].value == "3/3"
    assert all(m["remaining_s_at_most"].value > 0 for m in ordered[:-1] if m["run_folds_done"].value != "3/3")


def test_headline_numbers_come_first_rounded_to_four_digits(run):
    _, _, result = run
    cv = _materialization(result, "cv_metrics").metadata
    assert list(cv)[:4] == ["cv_balanced_accuracy", "balanced_accuracy_mean", "balanced_accuracy_std", "worst_class_recall"]
    assert cv["cv_balanced_accuracy"].value == f"{cv['balanced_accuracy_mean'].value:.4f} ± {cv['balanced_accuracy_std'].value:.4f}"
    assert isinstance(cv["per_class_recall"], TableMetadataValue) and isinstance(cv["per_fold"], TableMetadataValue)
    assert "data:image/png;base64" in cv["fold_curves"].value
    assert {f"fold_{k}_balanced_accuracy" for k in range(3)} <= set(cv)
    ens = _materialization(result, "ensemble_model").metadata
    assert list(ens)[:11] == [
        "test_balanced_accuracy_human", "test_accuracy_human", "test_n_human",
        "llm_agreement_balanced_accuracy", "llm_agreement_accuracy", "llm_agreement_n", "test_balanced_accuracy_mixed",
        "cv_balanced_accuracy", "cv_balanced_accuracy_mean", "cv_balanced_accuracy_std", "worst_class_recall",
    ]
    per_class = ens["per_class"]
    assert isinstance(per_class, TableMetadataValue)
    recalls = {r.data["class"]: r.data["recall"] for r in per_class.records}
    assert ens["worst_class_recall"].value == min(recalls.values()) and recalls[ens["worst_class"].value] == min(recalls.values())
    for record in per_class.records:
        assert all(round(v, 4) == v for v in record.data.values() if isinstance(v, float))
    counts, shares = ens["confusion_matrix_counts"], ens["confusion_matrix_normalised"]
    assert sum(sum(v for k, v in r.data.items() if k != "true") for r in counts.records) == ens["test_n"].value
    for record in shares.records:
        assert sum(v for k, v in record.data.items() if k != "true") == pytest.approx(1, abs=1e-3)


def test_fold_spread_check_warns_with_the_folds_named(run):
    _, _, result = run
    check = [c for c in result.get_asset_check_evaluations() if c.check_name == "cv_fold_spread"][0]
    assert check.severity.value == "WARN"
    data = {k: v.value for k, v in check.metadata.items()}
    # Each value is rounded on its own: the difference of the rounded ones may differ in the last digit.
    assert data["spread"] == pytest.approx(data["best_balanced_accuracy"] - data["worst_balanced_accuracy"], abs=2e-4)
    assert check.passed == (data["spread"] <= data["tolerance"])


def test_artifacts_of_an_older_materialization_are_never_overwritten(run):
    home, instance, result = run
    first = _materialization(result, "ensemble_model").metadata
    first_png = Path(first["confusion_matrix_png"].value)
    first_manifest = Path(first["manifest"].value)
    assert result.run_id in str(first_png) and result.run_id in str(first_manifest)
    before = first_png.read_bytes(), first_manifest.read_text()
    again = run_chain(home, instance, selection=["ensemble_model"])
    second = _materialization(again, "ensemble_model").metadata
    assert second["version"].value == first["version"].value  # the same version, materialized again
    assert Path(second["confusion_matrix_png"].value) != first_png and again.run_id in second["manifest"].value
    assert (first_png.read_bytes(), first_manifest.read_text()) == before


def test_mlflow_mirrors_the_folds_and_the_champion(run):
    mlflow = pytest.importorskip("mlflow")
    home, _, result = run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    folds = {e.materialization.partition: e.materialization.metadata
             for e in result.get_asset_materialization_events() if e.asset_key == FOLDS}
    for key, metadata in folds.items():
        fold_run = client.get_run(metadata["mlflow_run_id"].value)
        assert fold_run.data.tags["legolas.fold"] == key
        assert fold_run.data.metrics["best_val_balanced_accuracy"] == pytest.approx(metadata["val_balanced_accuracy"].value, abs=1e-4)
        assert len(client.get_metric_history(fold_run.info.run_id, "val_loss")) == metadata["epochs_run"].value
    promoted = _materialization(result, "promoted_ensemble").metadata
    champion = client.get_model_version_by_alias("legolas-demo", "champion")
    assert champion.tags["legolas.version"] == promoted["champion_version"].value
    assert promoted["mlflow_model_version"].value == f"legolas-demo version {champion.version} (alias champion)"
