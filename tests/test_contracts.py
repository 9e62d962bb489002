"""The typed values between assets: stored flat, loaded as their contract, refused by name when incomplete."""

import json

import pytest
from dagster import AssetKey, build_input_context, build_output_context

from legolas_assets.io_manager import CONTRACTS, JsonIOManager
from legolas_ml.core.contracts import Candidate, ContractError, CvMetrics, FoldModel, LabeledDataset, StratifiedSplits

DATASET = LabeledDataset(
    tenant="acme", path="/d/train.parquet", holdout_path="/d/holdout.parquet", data_version="d1", mode="review",
    classes=["a", "b"], summary={"per_class": {"a": 3, "b": 4}, "holdout": {"share": 0.2}, "reviews_cursor": "c1"},
    champion_version="v0", holdout_random_ids=["s1"],
)


def _fold(k: int) -> FoldModel:
    return FoldModel(
        fold=k, checkpoint_path=f"/f/{k}.safetensors", best_epoch=2, best_metrics={"balanced_accuracy": 0.9}, trigger_epoch=None,
        rewind_epoch=None, stop_reason="ran every epoch", epochs_run=3, history=[{"epoch": 1}], duration_s=1.0,
        train_samples_per_s=9.0, n_train=8, n_val=2, device="cpu", precision="fp32", peak_memory_mb=10.0,
        data_version="d1", split_fingerprint="s1", training_key="v1", training_config={"preset": "dev"}, curve_path="c", log_path="l",
    )


def test_every_contract_round_trips_and_keeps_its_flat_json_shape():
    candidate = Candidate(manifest={"version": "v1", "checkpoints": ["/f/0"], "labels": ["a", "b"], "test_metrics": {}},
                          manifest_path="/m.json", run_dir="/r")
    splits = StratifiedSplits(tenant="acme", path="/s.json", fingerprint="s1", data_version="d1", n_folds=2, kfold=True,
                              classes=["a", "b"], n_test=3)
    cv = CvMetrics(n_folds=2, data_version="d1", split_fingerprint="s1", balanced_accuracy={"mean": 0.8, "std": 0.1},
                   accuracy={"mean": 0.8, "std": 0.1}, f1_macro={"mean": 0.8, "std": 0.1}, per_class_recall={}, per_fold=[],
                   fold_spread=0.05)
    for value in (DATASET, splits, _fold(1), cv, candidate):
        stored = json.loads(json.dumps(value.to_dict()))
        assert type(value).from_dict(stored) == value
    # The candidate's value is the manifest's fields beside its two places, as before the contracts.
    assert candidate.to_dict() == {**candidate.manifest, "manifest_path": "/m.json", "run_dir": "/r"}
    assert (DATASET.per_class, DATASET.holdout, DATASET.reviews_cursor) == ({"a": 3, "b": 4}, {"share": 0.2}, "c1")


def test_an_incomplete_stored_value_is_refused_by_name_and_unknown_keys_are_ignored():
    stored = DATASET.to_dict()
    assert LabeledDataset.from_dict({**stored, "written_by_a_newer_release": 1}) == DATASET
    del stored["data_version"]
    with pytest.raises(ContractError, match=r"LabeledDataset: the stored value lacks \['data_version'\].*re-materialize"):
        LabeledDataset.from_dict(stored)
    with pytest.raises(ContractError, match=r"Candidate: the stored value lacks \['manifest_path'\]"):
        Candidate.from_dict({"version": "v", "checkpoints": [], "labels": []})
    with pytest.raises(ContractError, match="must be a JSON object, got list"):
        FoldModel.from_dict([1, 2])


def test_the_previous_releases_values_load_with_the_fields_added_since():
    # cv_metrics before `fold_spread` was stored, ensemble_model before `run_dir` was.
    older_cv = {"n_folds": 2, "data_version": "d1", "split_fingerprint": "s1", "balanced_accuracy": {"mean": 0.8, "std": 0.1},
                "accuracy": {}, "f1_macro": {}, "per_class_recall": {},
                "per_fold": [{"fold": 0, "balanced_accuracy": 0.9}, {"fold": 1, "balanced_accuracy": 0.75}]}
    assert CvMetrics.from_dict(older_cv).fold_spread == pytest.approx(0.15)
    older_candidate = Candidate.from_dict({"version": "v", "checkpoints": [], "labels": [], "manifest_path": "/m"})
    assert older_candidate.run_dir == "" and older_candidate.manifest == {"version": "v", "checkpoints": [], "labels": []}


def test_a_fold_without_a_training_key_is_refused_by_name():
    from legolas_ml.lifecycle.candidate import CandidateInputsError, training_of

    unkeyed = _fold(1)
    unkeyed.training_key = None
    with pytest.raises(CandidateInputsError, match=r"different trainings \['None', 'v1'\]"):
        training_of({0: _fold(0), 1: unkeyed})
    assert training_of({0: _fold(0), 1: _fold(1)}) == "v1"


def test_the_io_manager_hands_each_chain_asset_its_contract(tmp_path):
    manager = JsonIOManager(base_dir=str(tmp_path))
    key = AssetKey(["acme", "labeled_dataset"])
    manager.handle_output(build_output_context(asset_key=key), DATASET)
    on_disk = json.loads((tmp_path / "acme" / "labeled_dataset" / "__all__.json").read_text())
    assert on_disk == DATASET.to_dict()  # stored flat: readable by anything that reads JSON
    loaded = manager.load_input(build_input_context(asset_key=key, upstream_output=build_output_context(asset_key=key)))
    assert isinstance(loaded, LabeledDataset) and loaded == DATASET
    # An asset without a contract keeps its JSON object.
    other = AssetKey(["acme", "label_audit"])
    manager.handle_output(build_output_context(asset_key=other), {"n_texts": 3})
    assert manager.load_input(build_input_context(asset_key=other, upstream_output=build_output_context(asset_key=other))) == {"n_texts": 3}
    # A stored value its contract cannot read names the asset and the file to re-materialize.
    broken = AssetKey(["acme", "cv_metrics"])
    (tmp_path / "acme" / "cv_metrics").mkdir(parents=True)
    (tmp_path / "acme" / "cv_metrics" / "__all__.json").write_text(json.dumps({"n_folds": 2}))
    with pytest.raises(ContractError, match=r"asset acme/cv_metrics \(.*cv_metrics/__all__.json\): CvMetrics: the stored value lacks"):
        manager.load_input(build_input_context(asset_key=broken, upstream_output=build_output_context(asset_key=broken)))
    assert set(CONTRACTS) == {"labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble",
                              "explainability_report"}


def test_a_candidate_of_another_tenants_dataset_or_split_is_refused_before_any_work(tmp_path):
    from legolas_ml.lifecycle.artifacts import TenantArtifacts
    from legolas_ml.lifecycle.candidate import CandidateInputsError, evaluate_candidate
    from legolas_ml.lifecycle.registry import ModelRegistry

    registry = ModelRegistry(TenantArtifacts(tmp_path, "other"))
    splits = StratifiedSplits(tenant="acme", path="/nowhere.json", fingerprint="s1", data_version="d1", n_folds=1, kfold=False,
                              classes=["a", "b"], n_test=1)
    cv = CvMetrics(n_folds=1, data_version="d1", split_fingerprint="s1", balanced_accuracy={}, accuracy={}, f1_macro={},
                   per_class_recall={}, per_fold=[])
    with pytest.raises(CandidateInputsError, match="labeled_dataset belongs to tenant 'acme', the registry to 'other'"):
        evaluate_candidate(registry, DATASET, splits, {0: _fold(0)}, cv, run_id="r1")
    mine = ModelRegistry(TenantArtifacts(tmp_path, "acme"))
    with pytest.raises(CandidateInputsError, match="cv_metrics was computed on another split"):
        evaluate_candidate(mine, DATASET, splits, {0: _fold(0)}, CvMetrics.from_dict({**cv.to_dict(), "split_fingerprint": "s0"}), run_id="r1")
