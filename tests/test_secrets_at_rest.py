"""No Mongo password at rest: run config takes the URI only as {env: VAR}; Dagster's storage is scanned after runs."""

import sqlite3
import zlib
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from legolas_assets.configuration import ConfigurationError
from dagster_helpers import ASSETS, key
from legolas_assets.definitions import defs
from legolas_assets.io_manager import JsonIOManager
from legolas_assets.resources import MongoUriSource, TrainingResource, default_resources
from legolas_ml.data import store as store_module
from legolas_ml.data.store import open_tenant_store

SECRET = "Pa55-at-rest-9"
URI = f"mongodb://legolas:{SECRET}@db.internal.example:27017/legolas"


def _secret_in_storage(home: Path) -> list[str]:
    """Every place under ``home`` holding the secret: files, SQLite cells, zlib-compressed cells (snapshots)."""
    hits = []
    needle = SECRET.encode()
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        if needle in path.read_bytes():
            hits.append(str(path))
        if path.suffix == ".db":
            with sqlite3.connect(path) as db:
                for (table,) in db.execute("select name from sqlite_master where type = 'table'").fetchall():
                    for row in db.execute(f'select * from "{table}"'):
                        for cell in row:
                            data = cell.encode() if isinstance(cell, str) else cell if isinstance(cell, bytes) else b""
                            try:
                                data += zlib.decompress(data)
                            except zlib.error:
                                pass
                            if needle in data:
                                hits.append(f"{path.name}:{table}")
    return hits


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A tenant in the embedded store that the 'MongoDB' URI is routed to, and an on-disk Dagster instance."""
    with open_tenant_store(None, tmp_path, "legolas", "demo", writer=True) as store:
        store.insert_review({"session_id": "s1", "label": "billing", "text": "my invoice is wrong", "reviewed_at": "2026-01-01T10:00:00"})
    embedded = store_module.connect
    # No MongoDB server runs here: the client for the URI is the embedded store; everything else is real.
    monkeypatch.setattr(store_module, "connect", lambda uri, data_dir, timeout_s=5.0: embedded(None, tmp_path, timeout_s))
    monkeypatch.delenv("LEGOLAS_MONGO_URI", raising=False)
    (tmp_path / "dagster").mkdir()
    return tmp_path


def _run(home: Path, instance: DagsterInstance, run_config=None):
    resources = {
        **defs.resources,  # whatever else the assets need, as the code location binds it
        **default_resources(),
        "training": TrainingResource(output_dir=str(home / "output")),
        "io_manager": JsonIOManager(base_dir=str(home / "output" / "asset_values")),
    }
    return materialize(ASSETS, selection=[key("labeled_dataset")], resources=resources, instance=instance, run_config=run_config or {})


def _uri_config(uri) -> dict:
    return {"resources": {"mongo": {"config": {"uri": uri}}}}


def test_password_in_run_config_is_refused_before_a_run_exists(home):
    with DagsterInstance.local_temp(str(home / "dagster")) as instance:
        try:
            _run(home, instance, _uri_config(URI))
            refusal = None
        except ConfigurationError as exc:
            refusal = str(exc)
        runs = instance.get_runs()
    assert _secret_in_storage(home) == []  # nothing at rest...
    assert refusal is not None and runs == []  # ...because the config never became a run
    assert "resources.mongo.config.uri" in refusal and '{"env": "LEGOLAS_MONGO_URI"}' in refusal
    assert "db.internal.example" in refusal and SECRET not in refusal


def test_env_reference_in_run_config_runs_and_stores_only_the_name(home, monkeypatch):
    monkeypatch.setenv("TEAM_MONGO_URI", URI)
    with DagsterInstance.local_temp(str(home / "dagster")) as instance:
        result = _run(home, instance, _uri_config({"env": "TEAM_MONGO_URI"}))
        assert result.success
        source = result.get_asset_materialization_events()[0].materialization.metadata
        assert any("db.internal.example" in str(value.value) for value in source.values())  # the URI was used
        assert instance.get_run_by_id(result.run_id).run_config["resources"]["mongo"]["config"]["uri"] == {"env": "TEAM_MONGO_URI"}
    assert _secret_in_storage(home) == []


def test_uri_from_legolas_mongo_uri_never_reaches_storage(home, monkeypatch):
    monkeypatch.setenv("LEGOLAS_MONGO_URI", URI)
    with DagsterInstance.local_temp(str(home / "dagster")) as instance:
        assert _run(home, instance).success
    assert _secret_in_storage(home) == []


def test_only_a_uri_holding_a_password_is_refused():
    source = MongoUriSource()
    assert source.post_process("mongodb://db.internal.example:27017/legolas") == "mongodb://db.internal.example:27017/legolas"
    assert source.post_process("") == ""
    for uri in (URI, f"mongodb://db.internal.example/?authMechanism=PLAIN&password={SECRET}"):
        with pytest.raises(ConfigurationError) as err:
            source.post_process(uri)
        assert SECRET not in str(err.value)
