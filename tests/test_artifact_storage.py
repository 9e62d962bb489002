"""Artifacts anywhere (issue #27): the store's contract on a local directory and on a real S3 server,
the registry over S3, an upload killed midway, a home copied elsewhere, and the Dagster chain on S3.

The S3 server is moto's server mode (what s3fs's own tests use), started on 127.0.0.1 on a free
port by the ``s3`` fixture; s3fs reaches it through ``AWS_ENDPOINT_URL``, as it would any
S3-compatible server in production.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from legolas_ml.core import settings
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.core.storage import MARKER, ArtifactIntegrityError, ArtifactNotPublishedError, ArtifactStore, open_store
from legolas_ml.training.checkpoint import read_sidecar, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the ``AWS_*`` variables that point s3fs (and subprocesses) at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    variables = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    import boto3

    boto3.client("s3").create_bucket(Bucket="legolas")
    try:
        yield boto3.client("s3")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def s3_root() -> str:
    """A fresh prefix of the test bucket: every test starts from an empty root."""
    return f"s3://legolas/{uuid.uuid4().hex[:8]}"


def _registry(output: Path, root: str | None = None, tenant: str = "acme") -> ModelRegistry:
    """A tenant's registry working in ``output``, published under ``root`` (``None``: in place)."""
    return ModelRegistry(TenantArtifacts(output, tenant, store=open_store(output, root)))


def _checkpoint(folder: Path, fold: int = 0) -> Path:
    """A real (tiny) checkpoint with its sidecar, as a fold writes it."""
    path = folder / f"best_model_text_m_fold{fold}.safetensors"
    save_checkpoint(path, {"w": torch.full((2,), float(fold))},
                    {"epoch": 0, "metrics": {}, "labels": ["a", "b"], "model_config": {}, "training_config": {}})
    return path


def _candidate(registry: ModelRegistry, version: str, n_folds: int = 2) -> dict:
    """A trained version's manifest, its fold files in the working directory (as ``ensemble_model`` builds it)."""
    folds = registry.artifacts.folds_dir(version)
    paths = [_checkpoint(folds, k) for k in range(n_folds)]
    return {"version": version, "checkpoints": [str(p) for p in paths], "sha256": [read_sidecar(p)["sha256"] for p in paths],
            "test_metrics": {"balanced_accuracy": 0.9}}


# --- the store's contract ----------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A store whose root is not the working directory: another local directory, or S3."""
    root = str(tmp_path / "elsewhere") if request.param == "local" else (request.getfixturevalue("s3"), s3_root())[1]
    return ArtifactStore(root, working_dir=tmp_path / "output", cache_dir=tmp_path / "cache")


def test_objects_records_and_trees_on_a_local_root_and_on_s3(store, tmp_path):
    assert not store.exists("acme/ensemble/champion.json")
    with pytest.raises(FileNotFoundError, match="champion.json does not exist"):
        store.read_text("acme/ensemble/champion.json")
    store.write_json("acme/ensemble/champion.json", {"version": "v1"})
    store.write_json("acme/ensemble/champion.json", {"version": "v2"})  # replaced whole
    assert store.read_json("acme/ensemble/champion.json") == {"version": "v2"}
    assert store.glob("acme/ensemble/*.json") == ["acme/ensemble/champion.json"]
    for i in range(3):
        store.append_record("acme/ensemble/decisions.jsonl", {"id": i})
    assert [r["id"] for r in store.records("acme/ensemble/decisions.jsonl")] == [0, 1, 2]  # append order
    store.delete("acme/ensemble/champion.json")
    assert not store.exists("acme/ensemble/champion.json")
    with pytest.raises(ValueError, match="relative to the artifacts root"):
        store.write_text("../escape.txt", "x")

    working = tmp_path / "output" / "acme" / "folds" / "k1"
    _checkpoint(working)
    (working / "curves").mkdir()
    (working / "curves" / "fold0.png").write_bytes(b"png")
    with pytest.raises(ArtifactNotPublishedError, match="no completion marker"):
        store.fetch_tree("acme/folds/k1")
    marker = store.publish_tree("acme/folds/k1")
    assert set(marker["files"]) == {"best_model_text_m_fold0.safetensors", "best_model_text_m_fold0.json", "curves/fold0.png"}
    assert store.tree_published("acme/folds/k1")
    shutil.rmtree(store.cache_root, ignore_errors=True)  # a reader on another machine: nothing cached
    fetched = store.fetch_tree("acme/folds/k1")
    assert (fetched / "curves" / "fold0.png").read_bytes() == b"png"
    assert read_sidecar(fetched / "best_model_text_m_fold0.safetensors")["sha256"]
    store.delete_tree("acme/folds/k1")
    assert not store.tree_published("acme/folds/k1") and not store.glob("acme/folds/k1/*")


def test_a_download_that_does_not_match_the_marker_is_refused(s3, tmp_path):
    store = ArtifactStore(s3_root(), working_dir=tmp_path / "output", cache_dir=tmp_path / "cache")
    _checkpoint(tmp_path / "output" / "acme" / "folds" / "k1")
    store.publish_tree("acme/folds/k1")
    store.write_bytes("acme/folds/k1/best_model_text_m_fold0.safetensors", b"tampered")  # e.g. an overwrite without a new marker
    shutil.rmtree(store.cache_root)
    with pytest.raises(ArtifactIntegrityError, match="marker records"):
        store.fetch_tree("acme/folds/k1")
    assert not (store.cache_root / "acme/folds/k1" / MARKER).exists()  # nothing half-cached is taken for whole


def test_in_place_copies_nothing_and_writes_no_marker(tmp_path):
    store = ArtifactStore(tmp_path / "output", working_dir=tmp_path / "output")
    assert store.in_place
    folder = tmp_path / "output" / "acme" / "folds" / "k1"
    _checkpoint(folder)
    assert store.publish_tree("acme/folds/k1") is None
    assert store.fetch_tree("acme/folds/k1") == folder and not (folder / MARKER).exists()
    assert not (tmp_path / "cache").exists()


def test_the_root_setting_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("LEGOLAS_ARTIFACTS", "s3://")
    with pytest.raises(settings.SettingsError, match="LEGOLAS_ARTIFACTS must be a local directory or a URL.*got 's3://'"):
        settings.artifacts_root()
    with pytest.raises(ValueError, match=r"LEGOLAS_ARTIFACTS \(training.artifacts_root in Dagster\) must be a local path or a URL of an fsspec protocol.*'nope://x'"):
        ArtifactStore("nope://x", working_dir=tmp_path)
    from legolas_ml.cli.lifecycle import registry_for  # the CLI's registry

    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEGOLAS_ARTIFACTS", str(tmp_path / "volume"))
    store = registry_for("acme").store
    assert store.local_root == tmp_path / "volume" and store.working_dir == tmp_path / "home" / "output" and not store.in_place
    monkeypatch.delenv("LEGOLAS_ARTIFACTS")
    assert registry_for("acme").store.in_place  # unset: today's layout, in place
    assert TenantArtifacts(tmp_path / "output", "acme").store.in_place


# --- the registry on S3 ------------------------------------------------------------------------


def test_the_registry_on_s3_switches_the_pointer_with_one_object_write(s3, tmp_path, monkeypatch):
    root = s3_root()
    registry = _registry(tmp_path / "output", root)
    assert registry.store.is_remote and registry.champion() is None
    for version in ("v1", "v2"):
        registry.write_candidate(_candidate(registry, version))
    stored = json.loads(registry.store.read_text("acme/ensemble/versions/v1/manifest.json"))
    assert stored["checkpoints"] == ["acme/folds/v1/best_model_text_m_fold0.safetensors", "acme/folds/v1/best_model_text_m_fold1.safetensors"]
    registry.promote("v1", actor="t", reason="first")

    writes = []
    original = registry.store.write_bytes
    with monkeypatch.context() as spy:
        spy.setattr(registry.store, "write_bytes", lambda rel, data: (writes.append(rel), original(rel, data))[1])
        registry.promote("v2", actor="t", reason="better")
    assert writes == ["acme/ensemble/champion.json"]  # the commit point: one PUT; the log is its own objects

    registry.rollback(actor="t")
    assert [(r["action"], r["version"]) for r in registry.history()] == [("promoted", "v1"), ("promoted", "v2"), ("rolled_back", "v1")]
    assert len(s3.list_objects_v2(Bucket="legolas", Prefix=root.split("/", 3)[3] + "/acme/ensemble/decisions/")["Contents"]) == 3

    # Another machine: an empty home, the same root. It sees the champion and downloads its folds once.
    other = _registry(tmp_path / "other" / "output", root)
    champion = other.champion(verify_weights=True)
    assert champion["version"] == "v1" and other.versions() == ["v1", "v2"]
    assert all(Path(p).is_relative_to(tmp_path / "other" / "cache") for p in champion["checkpoints"])

    # A run's report (explainability_report publishes its run's directory): `legolas status` shows its URL.
    report = registry.run_dir("v1", "r1") / "explainability" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    assert other.latest_report("v1") is None
    registry.publish_run("v1", "r1")
    assert other.latest_report("v1") == f"{root}/acme/ensemble/versions/v1/runs/r1/explainability/report.html"


def test_an_upload_killed_midway_publishes_no_version_and_a_rerun_completes_it(s3, tmp_path):
    root = s3_root()
    registry = _registry(tmp_path / "output", root)
    manifest = _candidate(registry, "v1", n_folds=3)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # The publisher is killed (SIGKILL: no cleanup runs) once its first checkpoint file is uploaded.
    script = textwrap.dedent(f"""
        import json, sys, time
        from legolas_ml.core.storage import ArtifactStore, open_store
        from legolas_ml.lifecycle.artifacts import TenantArtifacts
        from legolas_ml.lifecycle.registry import ModelRegistry
        upload = ArtifactStore._upload_file
        def upload_then_hang(self, path, rel):
            upload(self, path, rel)
            print("uploaded", rel, flush=True)
            time.sleep(120)
        ArtifactStore._upload_file = upload_then_hang
        output = {str(tmp_path / "output")!r}
        registry = ModelRegistry(TenantArtifacts(output, "acme", store=open_store(output, {root!r})))
        registry.write_candidate(json.loads(open({str(tmp_path / "manifest.json")!r}).read()))
    """)
    publisher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = publisher.stdout.readline()
        assert line.startswith("uploaded acme/folds/v1/"), line
        os.kill(publisher.pid, signal.SIGKILL)
    finally:
        publisher.wait(timeout=60)
    assert publisher.returncode == -signal.SIGKILL

    reader = _registry(tmp_path / "reader" / "output", root)
    assert reader.store.glob("acme/folds/v1/*")  # some files made it to S3...
    assert not reader.store.tree_published("acme/folds/v1")  # ...but no marker: not a tree
    assert reader.versions() == []  # the manifest comes last: no version to see
    with pytest.raises(ArtifactNotPublishedError):
        reader.store.fetch_tree("acme/folds/v1")

    registry.write_candidate(manifest)  # the re-run
    registry.promote("v1", actor="t", reason="re-run")
    assert reader.champion(verify_weights=True)["version"] == "v1"


# --- relative manifests: a home copied or restored elsewhere -------------------------------------


def test_a_home_copied_elsewhere_still_serves_its_champion(tmp_path):
    registry = ModelRegistry(TenantArtifacts(tmp_path / "home" / "output", "acme"))
    registry.write_candidate(_candidate(registry, "v1"))
    registry.promote("v1", actor="t", reason="first")
    stored = json.loads(registry.manifest_path("v1").read_text())
    assert all(not os.path.isabs(p) and p.startswith("acme/folds/v1/") for p in stored["checkpoints"])

    shutil.copytree(tmp_path / "home", tmp_path / "restored")
    shutil.rmtree(tmp_path / "home")  # nothing may still be read from the old place
    restored = ModelRegistry(TenantArtifacts(tmp_path / "restored" / "output", "acme"))
    champion = restored.champion(verify_weights=True)
    assert all(Path(p).is_relative_to(tmp_path / "restored") for p in champion["checkpoints"])


def test_an_older_manifest_with_absolute_paths_still_loads_and_is_re_rooted_when_moved(tmp_path):
    registry = ModelRegistry(TenantArtifacts(tmp_path / "home" / "output", "acme"))
    manifest = _candidate(registry, "v1")
    # As LEGOLAS wrote it before issue #27: absolute paths, straight to disk.
    registry.manifest_path("v1").parent.mkdir(parents=True)
    registry.manifest_path("v1").write_text(json.dumps(manifest))
    registry.promote("v1", actor="t", reason="first")
    assert registry.champion(verify_weights=True)["checkpoints"] == manifest["checkpoints"]

    shutil.copytree(tmp_path / "home", tmp_path / "restored")
    shutil.rmtree(tmp_path / "home")
    restored = ModelRegistry(TenantArtifacts(tmp_path / "restored" / "output", "acme"))
    champion = restored.champion(verify_weights=True)
    assert all(Path(p).is_relative_to(tmp_path / "restored" / "output" / "acme" / "folds") for p in champion["checkpoints"])


def test_a_version_whose_files_were_never_published_is_unavailable_not_absent(s3, tmp_path):
    root = s3_root()
    registry = _registry(tmp_path / "output", root)
    registry.write_candidate(_candidate(registry, "v1"))
    registry.promote("v1", actor="t", reason="first")
    registry.store.delete("acme/folds/v1/" + MARKER)  # e.g. a bucket lifecycle rule deleted the folds
    reader = _registry(tmp_path / "reader" / "output", root)
    with pytest.raises(ChampionUnavailableError, match="no completion marker.*legolas rollback"):
        reader.champion()


# --- the whole chain with LEGOLAS_ARTIFACTS=s3://... ------------------------------------------


@pytest.mark.slow
def test_the_dagster_chain_publishes_to_s3_and_a_fresh_home_serves_its_champion(s3, tmp_path):
    from dagster import DagsterInstance

    from dagster_helpers import run_chain
    from test_dagster_chain import fill_demo

    root = s3_root()
    home = tmp_path / "trainer"
    fill_demo(home, conversations=150, reviews=40)
    result = run_chain(
        home, DagsterInstance.ephemeral(), artifacts_root=root,
        selection=["labeled_dataset", "stratified_splits", "fold_models", "cv_metrics", "ensemble_model", "promoted_ensemble"],
    )
    assert result.success
    candidate = next(m.materialization.metadata for m in result.get_asset_materialization_events()
                     if m.asset_key.path[-1] == "ensemble_model")["version"].value
    registry = _registry(home / "output", root, tenant="demo")
    assert registry.versions() == [candidate]
    assert [r["version"] for r in registry.history()] == [candidate]  # the decision, in the bucket
    if registry.champion_version() != candidate:  # a tiny model the rule rejected: an operator promotes it
        registry.promote(candidate, actor="test", reason="the chain's candidate")
    stored = registry.store.read_json(f"demo/ensemble/versions/{candidate}/manifest.json")
    assert all(p.startswith(f"demo/folds/{candidate}/") for p in stored["checkpoints"]) and len(stored["checkpoints"]) == 3
    assert stored["baseline"]["path"].startswith(f"demo/ensemble/versions/{candidate}/runs/")
    assert registry.store.tree_published(f"demo/folds/{candidate}")
    run_dir = registry.store.glob(f"demo/ensemble/versions/{candidate}/runs/*/{MARKER}")
    assert len(run_dir) == 1 and registry.store.exists(run_dir[0].replace(MARKER, "confusion_matrix.png"))

    # A fresh process on an empty home, the same root (LEGOLAS_ARTIFACTS, read as the CLI reads it):
    # it finds, downloads, verifies and runs the champion.
    fresh = tmp_path / "fresh"
    script = textwrap.dedent("""
        import json
        from legolas_ml.evaluation.ensemble import FoldEnsemble
        from legolas_ml.cli.lifecycle import registry_for
        champion = registry_for("demo").champion(verify_weights=True)
        ensemble = FoldEnsemble(champion["checkpoints"], device="cpu", precision="fp32")
        print(json.dumps({"version": champion["version"], "checkpoints": champion["checkpoints"], "labels": ensemble.labels,
                          "predicted": ensemble.predict(["I was charged twice on my card"])}))
    """)
    env = {**os.environ, "LEGOLAS_HOME": str(fresh), "LEGOLAS_ARTIFACTS": root, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["version"] == candidate and served["predicted"][0] in served["labels"]
    assert all(Path(p).is_relative_to(fresh / "cache") for p in served["checkpoints"])


def test_the_dagster_resources_publish_where_LEGOLAS_ARTIFACTS_says(tmp_path, monkeypatch):
    """`legolas train` runs Dagster with the default resources: they must read LEGOLAS_ARTIFACTS when the run starts."""
    from legolas_assets.resources import TrainingResource, default_resources

    elsewhere = tmp_path / "published"
    monkeypatch.setenv("LEGOLAS_ARTIFACTS", str(elsewhere))
    assert default_resources()["training"].artifacts_root is None  # nothing copied from the environment at load time
    store = TrainingResource(output_dir=str(tmp_path / "output")).artifact_store()
    assert not store.in_place and str(elsewhere) in str(store.location("x"))
    explicit = TrainingResource(output_dir=str(tmp_path / "output"), artifacts_root=str(tmp_path / "run-config")).artifact_store()
    assert str(tmp_path / "run-config") in str(explicit.location("x"))  # a run config's root wins over the variable

