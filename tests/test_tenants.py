"""Many tenants in one deployment: discovery, per-tenant assets, K and classes, one sensor, isolation."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, build_sensor_context

from dagster_helpers import resources, tenant_state
from legolas_assets.definitions import build_definitions
from legolas_assets.tenancy import TenantPlan, discover_tenants
from legolas_ml.cli import main
from legolas_ml.data.demo_data import CLASS_SHARES, INSURANCE_SHARES, generate_demo_data
from legolas_ml.data.store import CLASSIFICATIONS, REVIEWS, FieldChanges, TenantStore, connect, open_tenant_store
from legolas_ml.data.tenants import TenantSettings, open_catalogue
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.lifecycle.retraining import parse_tenant_states


def fill(home: Path, tenant: str, domain: str, conversations: int, reviews: int, seed: int = 3) -> None:
    docs, revs = generate_demo_data(conversations, reviews, seed=seed, domain=domain)
    with open_tenant_store(None, home, "legolas", tenant) as store:
        store.insert_classifications(docs)
        for review in revs:
            store.insert_review(review)


def keys_of(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def tree_digest(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under the roots (what "byte-identical" compares)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


# --- discovery and the code location ------------------------------------------------------------


def test_a_tenant_added_at_run_time_appears_after_a_reload(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    fill(tmp_path, "demo", "support", 60, 10)
    import legolas_assets.definitions as definitions

    keys = keys_of(importlib.reload(definitions).defs)
    assert "fold_models" in keys and not any("/" in k for k in keys)  # the default tenant's keys are unprefixed
    # A command adds a tenant with its own K; a reload of the code location (what the UI's Reload
    # does: import the module again) shows its assets, partitions and job. No code changed.
    assert main(["tenants", "add", "acme", "--n-folds", "4"]) == 0
    defs = importlib.reload(definitions).defs
    assert "acme/fold_models" in keys_of(defs) and "acme/human_reviews" in keys_of(defs)
    assert defs.resolve_job_def("acme__training_job").partitions_def.get_partition_keys() == ["0", "1", "2", "3"]
    assert len(defs.resolve_job_def("demo__training_job").partitions_def.get_partition_keys()) == 3  # LEGOLAS_N_FOLDS
    # Importing a new tenant's documents is enough too.
    fill(tmp_path, "insurance", "insurance", 60, 10)
    assert "insurance/label_audit" in keys_of(importlib.reload(definitions).defs)
    # Removing one takes it out of the deployment and keeps its documents.
    assert main(["tenants", "remove", "insurance"]) == 0
    assert not any(k.startswith("insurance/") for k in keys_of(importlib.reload(definitions).defs))
    with open_tenant_store(None, tmp_path, "legolas", "insurance") as store:
        assert store.counts()["classifications"] > 0
    assert main(["tenants", "add", "insurance"]) == 0  # and brings it back
    assert "insurance/fold_models" in keys_of(importlib.reload(definitions).defs)


def test_tenant_settings_are_validated_and_reach_the_training_config(tmp_path, monkeypatch, capsys):
    from legolas_assets.resources import GPUResource, ReviewLoopResource, TrainingResource

    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    assert main(["tenants", "add", "acme", "--n-folds", "1"]) == 2
    assert "n_folds must be a whole number >= 2, got 1" in capsys.readouterr().err
    assert main(["tenants", "add", "acme", "--settings", '{"min_confidence": 1.5}']) == 2
    assert "min_confidence must be a number in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["tenants", "add", "acme", "--settings", '{"epoch": 3}']) == 2
    assert "unknown tenant setting(s) ['epoch']; the settings are [" in capsys.readouterr().err
    assert main(["tenants", "add", "acme", "--settings", '{"random_share": 0.9}']) == 2
    assert "random_share must be a number in [0, 0.5], got 0.9" in capsys.readouterr().err
    settings = (
        '{"epochs": 3, "max_length": 32, "min_confidence": 0.6, "review_reasons": ["label_issue"], '
        '"review_flag_reasons": ["label_issue", "disagreement"], "queue_size": 40, "random_share": 0.2}'
    )
    assert main(["tenants", "add", "acme", "--n-folds", "4", "--model", "org/acme-bert", "--settings", settings]) == 0
    [acme] = discover_tenants()
    config = TrainingResource(epochs=7, max_length=64).config(GPUResource(device="cpu"), acme)
    # The tenant's K, model, epochs and length, not the deployment's.
    assert (config.n_folds, config.model_name, config.epochs, config.max_length) == (4, "org/acme-bert", 3, 32)
    other = TrainingResource(epochs=7, max_length=64).config(GPUResource(device="cpu"), TenantPlan("other"))
    assert (other.n_folds, other.epochs, other.max_length) == (3, 7, 64) and other.model_name != "org/acme-bert"
    audit = ReviewLoopResource().audit_settings(acme)
    assert audit.min_confidence == 0.6 and audit.reasons == ("label_issue",) and audit.max_entropy == 0.5
    assert (audit.flag_reasons, audit.queue_size, audit.random_share) == (("label_issue", "disagreement"), 40, 0.2)
    deployment = ReviewLoopResource().audit_settings(TenantPlan("other"))
    assert (deployment.flag_reasons, deployment.queue_size, deployment.random_share) == (
        ("label_issue", "disagreement", "label_not_in_model"), 100, 0.1)
    assert main(["tenants", "list"]) == 0
    assert "acme" in capsys.readouterr().out


def test_an_unreachable_store_at_load_keeps_the_last_tenants(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    fill(tmp_path, "insurance", "insurance", 60, 10)
    assert [t.name for t in discover_tenants()] == ["insurance"]
    monkeypatch.setenv("LEGOLAS_MONGO_URI", "mongodb://127.0.0.1:9/?directConnection=true&serverSelectionTimeoutMS=300")
    assert [t.name for t in discover_tenants()] == ["insurance"]  # from $LEGOLAS_HOME/output/tenants.json
    (tmp_path / "output" / "tenants.json").unlink()
    assert [t.name for t in discover_tenants()] == ["demo"]  # nothing known: LEGOLAS_TENANT's default


# --- hostile names --------------------------------------------------------------------------------


HOSTILE = ["../etc", "a/b", "", ".hidden", "x" * 65, "a\x00b", "..", "demo\n"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_tenant_names_are_refused_at_every_entry(tmp_path, monkeypatch, name):
    from legolas_assets.resources import MongoResource
    from legolas_ml.data.tenants import TenantCatalogue

    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    message = "tenant must be 1-64 characters of letters, digits"
    with pytest.raises(SystemExit):  # the CLI: argparse names the allowed characters
        main(["tenants", "add", name])
    with pytest.raises(ValueError, match=message):
        TenantPlan(name)  # the code location, so asset keys, directories and jobs
    with pytest.raises(ValueError, match=message):
        MongoResource(data_dir=str(tmp_path)).open(name)  # a run's store
    with open_catalogue(None, tmp_path) as catalogue:
        with pytest.raises(ValueError, match=message):
            catalogue.add(name)
    # Written into the store by some other writer: discovery skips and reports it, never uses it.
    client = connect(None, tmp_path)
    try:
        client["legolas"][CLASSIFICATIONS].insert_one({"tenant": name, "session_id": "s1", "text": "t"})
        client["legolas"]["tenants"].insert_one({"name": name, "settings": {}})
        found = TenantCatalogue(client["legolas"]).discover()
    finally:
        client.close()
    assert name not in found.names() and any(repr(name) in problem for problem in found.refused)
    assert [t.name for t in discover_tenants()] == ["demo"]  # the default tenant, not the hostile one
    # The sensor's cursor: an entry under a hostile name is dropped, never ticked.
    cursor = json.dumps({"tenants": {name: {"pending": None}, "demo": {"pending": None}}})
    assert list(parse_tenant_states(cursor, legacy_tenant="demo")) == ["demo"]


def test_a_hostile_tenant_in_run_config_fails_the_run(tmp_path):
    from legolas_assets.lifecycle import rollback_job

    res = resources(tmp_path)
    result = rollback_job.execute_in_process(
        run_config={"ops": {"rollback_champion": {"config": {"tenant": "../../etc"}}}},
        resources={k: res[k] for k in ("training", "lifecycle")}, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "tenant must be 1-64 characters" in failure.event_specific_data.error.message


def test_tenants_whose_key_names_collide_are_refused_and_the_others_load(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    assert main(["tenants", "add", "acme-eu"]) == 0
    assert main(["tenants", "add", "acme_eu"]) == 2  # at the command: the key name is taken
    assert "its key name 'acme_eu' (with '.' and '-' as '_') is tenant 'acme-eu''s" in capsys.readouterr().err
    assert main(["demo-data", "--tenant", "acme_eu", "--conversations", "60"]) == 2  # nor by importing documents
    # Written by another writer anyway: the first name keeps the key, the other is refused, the rest loads.
    fill(tmp_path, "acme_eu", "support", 60, 5)
    fill(tmp_path, "zeta", "insurance", 60, 5)
    assert [t.name for t in discover_tenants()] == ["acme-eu", "zeta"]
    assert main(["tenants", "list"]) == 0
    assert "refused: tenant 'acme_eu': its key name 'acme_eu' is tenant 'acme-eu''s" in capsys.readouterr().out
    # A removed tenant keeps its key name: its asset history and values are still under it.
    assert main(["tenants", "remove", "acme-eu"]) == 0
    assert [t.name for t in discover_tenants()] == ["zeta"]


def test_settings_are_kept_changed_one_by_one_and_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    assert main(["tenants", "add", "ins", "--n-folds", "3", "--retrain-threshold", "30"]) == 0
    assert main(["tenants", "add", "ins", "--settings", '{"min_confidence": 0.6}']) == 0
    [ins] = discover_tenants()
    assert ins.settings.to_dict() == {"n_folds": 3, "retrain_threshold": 30, "min_confidence": 0.6}
    assert main(["tenants", "remove", "ins"]) == 0 and main(["tenants", "add", "ins"]) == 0  # back where it was
    assert discover_tenants()[0].settings == ins.settings
    assert main(["tenants", "add", "ins", "--unset", "retrain_threshold"]) == 0
    assert discover_tenants()[0].settings.to_dict() == {"n_folds": 3, "min_confidence": 0.6}
    assert main(["tenants", "add", "ins", "--model", "./no/such/model"]) == 2
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["tenants", "add", "ins", "--model", "./model"]) == 0
    assert discover_tenants()[0].settings.model_name == str(tmp_path / "model")  # absolute: runs start elsewhere


def test_a_tenant_whose_stored_settings_broke_is_held_back_not_trained_with_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    fill(tmp_path, "ins", "insurance", 60, 5)
    assert main(["tenants", "add", "ins", "--n-folds", "3"]) == 0
    client = connect(None, tmp_path)
    try:
        client["legolas"]["tenants"].update_one({"name": "ins"}, {"$set": {"settings": {"n_folds": 3, "epoch": 2}}})
    finally:
        client.close()
    assert [t.name for t in discover_tenants()] == []  # never the deployment's K and model instead
    assert main(["status"]) == 0
    assert "tenant 'ins': its settings are invalid" in capsys.readouterr().out
    assert main(["tenants", "add", "ins", "--n-folds", "3"]) == 0  # the fix
    assert [(t.name, t.n_partitions) for t in discover_tenants()] == [("ins", 3)]


def test_a_deployment_whose_tenants_were_all_removed_shows_none(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    fill(tmp_path, "demo", "support", 60, 5)
    assert main(["tenants", "remove", "demo"]) == 0
    assert discover_tenants() == []  # not LEGOLAS_TENANT's default brought back
    defs = build_definitions()
    # No assets, and of the sensors only the one that sees a tenant added back.
    assert not keys_of(defs) and [s.name for s in defs.sensors] == ["reload_on_tenant_change"]
    assert main(["status"]) == 0 and "no active tenant (1 removed" in capsys.readouterr().out
    monkeypatch.setenv("LEGOLAS_MONGO_URI", "mongodb://127.0.0.1:9/?directConnection=true")
    assert discover_tenants() == []  # an outage now uses the last discovery: still none


def test_reserved_folder_names_are_not_tenants():
    for name in ("asset_values", "logs", "tenants.json"):
        with pytest.raises(ValueError, match="folders of the output directory"):
            TenantPlan(name)


# --- every store query is tenant-scoped ------------------------------------------------------------

#: Collection methods and where their filter is: the argument position, or "doc(s)" for inserts.
_FILTER_ARG = {
    "find": 0, "find_one": 0, "count_documents": 0, "update_one": 0, "update_many": 0, "delete_one": 0,
    "delete_many": 0, "replace_one": 0, "find_one_and_update": 0, "distinct": 1, "aggregate": 0,
    "insert_one": "doc", "insert_many": "docs", "bulk_write": "bulk",
}
_SCHEMA_ONLY = {"create_index", "index_information", "name", "database", "drop_indexes", "list_indexes"}


class RecordingCollection:
    """A collection that records every data access (method, filter) and refuses unknown ones."""

    def __init__(self, inner, log: list) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, attr):
        target = getattr(self._inner, attr)
        if attr in _SCHEMA_ONLY:
            return target
        if attr not in _FILTER_ARG:
            raise AssertionError(f"{self._inner.name}.{attr}: a data access the audit does not know; add it to _FILTER_ARG")

        def call(*args, **kwargs):
            where = _FILTER_ARG[attr]
            if where == "doc":
                self._log.append((self._inner.name, attr, args[0]))
            elif where == "docs":
                self._log += [(self._inner.name, attr, doc) for doc in args[0]]
            elif where == "bulk":
                raise AssertionError("bulk_write is not audited")
            else:
                query = args[where] if len(args) > where else kwargs.get("filter", {})
                if attr == "aggregate":
                    query = args[0][0].get("$match", {}) if args[0] else {}
                self._log.append((self._inner.name, attr, query))
            return target(*args, **kwargs)

        return call


class RecordingDatabase:
    """A database whose tenant collections record what they are asked (and look like MongoDB to the store)."""

    def __init__(self, inner) -> None:
        self._inner, self.log = inner, []

    def __getitem__(self, name):
        return RecordingCollection(self._inner[name], self.log)


def test_every_store_query_is_scoped_to_its_tenant(tmp_path):
    """Every public TenantStore method, and the loop and gate built on them, queries the classification
    and review collections with ``tenant`` equal to the store's; a second tenant's documents stay untouched."""
    from legolas_ml.data.quality_gate import gate_from_store
    from legolas_ml.data.review_import import import_reviews
    from legolas_ml.data.store_integrity import remove_duplicates
    from legolas_ml.data.store import UNIQUE_INDEXES
    from legolas_ml.review.queue import queue_size, review_queue
    from legolas_ml.scoring.predictions import score_documents

    fill(tmp_path, "alpha", "support", 80, 20)
    fill(tmp_path, "beta", "insurance", 80, 20, seed=5)
    client = connect(None, tmp_path)
    try:
        before_beta = _tenant_dump(client["legolas"], "beta")
        database = RecordingDatabase(client["legolas"])
        store = TenantStore(database, "alpha")
        called: set[str] = set()

        def exercise(name, *args, **kwargs):
            called.add(name)
            return getattr(store, name)(*args, **kwargs)

        sid = next(iter(exercise("classification_fields", ["text"])))["session_id"]
        exercise("ensure_indexes")
        exercise("create_indexes")
        exercise("start_writing")
        exercise("duplicates")
        exercise("check_unique")
        list(exercise("trusted_llm_classifications"))
        list(exercise("human_reviews"))
        exercise("texts_for", [sid, f" {sid} "])
        reviews = exercise("reviews_after", None)
        legacy = (None, reviews[0]["reviewed_at"], str(reviews[0]["_id"]))  # a cursor of an older release
        exercise("reviews_after", (reviews[0]["seq"], None, None))
        exercise("reviews_after", legacy)
        exercise("count_reviews_after", None)
        exercise("count_reviews_after", legacy)
        exercise("resolve_cursor", legacy)
        client["legolas"][REVIEWS].insert_one({"tenant": "alpha", "session_id": "raw-1", "label": "billing", "reviewed_at": reviews[0]["reviewed_at"]})
        assert exercise("number_reviews") == 1  # stored without a seq (as by an older release): numbered
        exercise("counts")
        exercise("reviewed_session_ids")
        exercise("reviewed_session_ids", [sid])
        exercise("random_sample_ids")
        list(exercise("classification_fields", ["text"], [sid]))
        exercise("update_unreviewed", sid, FieldChanges(set={"ml_prediction": "billing"}), text="not the text")
        exercise("has_review", sid, "billing")
        exercise("clear_audit_flag", sid, "legolas-audit", FieldChanges(unset=frozenset({"needs_review"})))
        list(exercise("flagged_for_review", ["needs_review"]))
        exercise("insert_classifications", [{"session_id": "new-1", "text": "hello", "llm_prediction": "billing"}])
        exercise("upsert_classifications", [{"session_id": "new-3", "text": "hi", "llm_prediction": "billing"}], ("text", "llm_prediction"))
        exercise("insert_review", {"session_id": "new-1", "label": "billing", "reviewed_at": reviews[-1]["reviewed_at"]})
        exercise("finish_writing")
        # What the assets and commands run on top of the store.
        gate_from_store(store, False, "auto")
        labels = sorted(CLASS_SHARES)
        score_documents(store, lambda texts: np.full((len(texts), len(labels)), 1 / len(labels)), labels, "v-test", batch_size=16)
        review_queue(store, 5)
        queue_size(store)
        (tmp_path / "r.jsonl").write_text(json.dumps({"session_id": sid, "label": "billing", "reviewed_at": "2027-01-01T00:00:00Z"}) + "\n")
        import_reviews(tmp_path / "r.jsonl", store)
        remove_duplicates(store, UNIQUE_INDEXES, tmp_path / "backup")
        # The embedded store's own branch of insert_review (looks before it inserts).
        store.embedded = True
        exercise("insert_review", {"session_id": "new-2", "label": "billing", "reviewed_at": reviews[-1]["reviewed_at"]})
        store.embedded = False
        exercise("delete_tenant_documents")
        store.finish_writing()

        public = {n for n, _ in inspect.getmembers(TenantStore, inspect.isfunction) if not n.startswith("_")}
        assert public <= called, f"TenantStore methods the audit does not exercise: {sorted(public - called)}"
        tenant_queries = [(c, m, q) for c, m, q in database.log if c in (CLASSIFICATIONS, REVIEWS)]
        assert len(tenant_queries) > 40
        # One query reads no tenant's documents on purpose: whether the collection is empty when LEGOLAS writes
        # its first documents (it then records that it created the collection, store._mark_if_creating).
        emptiness_probe = (CLASSIFICATIONS, "find_one", {})
        unscoped = [
            (c, m, q) for c, m, q in tenant_queries
            if (c, m, q) != emptiness_probe and (not isinstance(q, dict) or q.get("tenant") not in ("alpha", {"$eq": "alpha"}))
        ]
        assert not unscoped, f"store queries without tenant='alpha': {unscoped[:5]}"
        assert _tenant_dump(client["legolas"], "beta") == before_beta  # not one of beta's documents changed
    finally:
        client.close()


def test_the_audit_catches_a_query_without_the_tenant(tmp_path):
    """The audit itself can fail: a query that forgets the tenant is reported."""
    fill(tmp_path, "alpha", "support", 60, 5)
    client = connect(None, tmp_path)
    try:
        database = RecordingDatabase(client["legolas"])
        database[CLASSIFICATIONS].count_documents({"needs_review": True})  # what a careless method would do
        unscoped = [q for _, _, q in database.log if q.get("tenant") != "alpha"]
        assert unscoped == [{"needs_review": True}]
        with pytest.raises(AssertionError, match="does not know"):
            database[CLASSIFICATIONS].estimated_document_count()
    finally:
        client.close()


def _tenant_dump(database, tenant: str) -> str:
    docs = [
        (collection, sorted((k, repr(v)) for k, v in doc.items()))
        for collection in (CLASSIFICATIONS, REVIEWS)
        for doc in database[collection].find({"tenant": tenant})
    ]
    return repr(sorted(docs))


# --- two tenants trained in one deployment -----------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Two tenants, different classes and K, trained in one code location built by discovery."""
    home = tmp_path_factory.mktemp("tenants")
    patch = pytest.MonkeyPatch()
    patch.setenv("LEGOLAS_HOME", str(home))
    patch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "40")
    fill(home, "demo", "support", 300, 70)
    fill(home, "insurance", "insurance", 200, 60, seed=11)
    assert main(["tenants", "add", "insurance", "--n-folds", "2"]) == 0
    defs = build_definitions(resources=resources(home))
    instance = DagsterInstance.ephemeral()
    tenants = {t.name: t for t in discover_tenants()}
    results = {}
    try:
        for name, tenant in tenants.items():
            job = defs.resolve_job_def(tenant.job_name)
            results[name] = job.execute_in_process(instance=instance, tags=tenant.range_tags())
    finally:
        patch.undo()  # the tests set what they need: nothing leaks into the rest of the module
    return home, defs, instance, tenants, results


@pytest.mark.slow
def test_two_tenants_train_end_to_end_with_their_own_classes_and_k(deployment):
    home, defs, _, tenants, results = deployment
    assert sorted(tenants) == ["demo", "insurance"] and tenants["insurance"].n_partitions == 2
    folds = {}
    for name, result in results.items():
        assert result.success
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert all(k == tenants[name].key(k.path[-1]) for k in materialized)  # a tenant's run materializes its own assets only
        folds[name] = sorted(
            e.partition for e in result.get_asset_materialization_events() if e.asset_key == tenants[name].key("fold_models")
        )
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.asset_key == tenants[name].key(c.asset_key.path[-1]) for c in checks)
        assert [c.check_name for c in checks if not c.passed and c.severity.value == "ERROR"] == []
    assert folds == {"demo": ["0", "1", "2"], "insurance": ["0", "1"]}
    champions = {n: ModelRegistry(TenantArtifacts(home / "output", n)).champion() for n in tenants}
    assert champions["demo"]["labels"] == ["account_access", "billing", "cancellation", "shipping", "technical_issue"]
    assert champions["insurance"]["labels"] == sorted(INSURANCE_SHARES)
    assert len(champions["demo"]["checkpoints"]) == 3 and len(champions["insurance"]["checkpoints"]) == 2
    for name, manifest in champions.items():
        assert manifest["tenant"] == name
        assert all(Path(p).is_relative_to(home / "output" / name) for p in manifest["checkpoints"])
    assert (home / "output" / "asset_values" / "insurance" / "fold_models" / "1.json").exists()
    assert not (home / "output" / "asset_values" / "insurance" / "fold_models" / "2.json").exists()


@pytest.mark.slow
def test_new_reviews_of_one_tenant_retrain_that_tenant_only(deployment, tmp_path, capsys, monkeypatch):
    home, defs, instance, tenants, _ = deployment
    monkeypatch.setenv("LEGOLAS_HOME", str(home))
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "40")
    sensor = defs.resolve_sensor_def("retrain_on_new_reviews")
    res = resources(home)

    def tick(cursor):
        context = build_sensor_context(cursor=cursor, instance=instance, resources={k: res[k] for k in ("mongo", "training", "lifecycle")})
        return sensor(context)

    first = tick(None)
    assert not first.run_requests  # both champions consumed their reviews
    assert set(parse_tenant_states(first.cursor, "demo")) == {"demo", "insurance"}
    insurance_before = tenant_state(first.cursor, "insurance")
    files_before = tree_digest(home / "output" / "insurance", home / "output" / "asset_values" / "insurance")
    docs, _ = generate_demo_data(300, 0, seed=3)
    lines = [
        json.dumps({"session_id": d["session_id"], "label": d["llm_prediction"], "reviewed_at": f"2027-01-01T10:{k // 60:02d}:{k % 60:02d}Z"})
        for k, d in enumerate(docs[:60])
    ]
    (tmp_path / "demo.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["import-reviews", str(tmp_path / "demo.jsonl"), "--tenant", "demo"]) == 0
    second = tick(first.cursor)
    [request] = second.run_requests
    assert request.job_name == "demo__training_job" and request.tags["legolas/tenant"] == "demo"
    assert request.tags["dagster/asset_partition_range_end"] == "2"
    assert tenant_state(second.cursor, "insurance") == insurance_before  # B's cursor unmoved
    run = defs.resolve_job_def(request.job_name).execute_in_process(instance=instance, tags=request.tags)
    assert run.success and all(len(e.asset_key.path) == 1 for e in run.get_asset_materialization_events())  # demo's: unprefixed
    demo = ModelRegistry(TenantArtifacts(home / "output", "demo"))
    assert demo.manifest(demo.history()[-1]["version"])["mode"] == "retrain"  # trained on the new reviews
    third = tick(second.cursor)
    assert not third.run_requests and "tenant demo: 0 new reviews" in third.skip_reason.skip_message
    assert tenant_state(third.cursor, "insurance") == insurance_before
    assert tree_digest(home / "output" / "insurance", home / "output" / "asset_values" / "insurance") == files_before
    # `legolas status` lists both tenants with their model in service.
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    for name in tenants:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert ModelRegistry(TenantArtifacts(home / "output", name)).champion_version() in row


def test_each_tenant_keeps_its_cursor_entry_when_tenants_come_and_go(tmp_path, monkeypatch):
    from dagster_helpers import retrain_sensor
    from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource
    from dagster_helpers import training_session
    from test_sensor import add_reviews

    monkeypatch.setenv("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "0")
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "50")
    add_reviews(tmp_path, 12)  # tenant demo: 12 reviews waiting, under the threshold
    demo, acme = TenantPlan("demo"), TenantPlan("acme", TenantSettings(retrain_threshold=3))
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        for k in range(5):
            store.insert_review({"session_id": training_session("acme", k), "label": "x", "reviewed_at": datetime(2026, 3, 1, 0, 0, k)})

    def tick(tenants, cursor):
        context = build_sensor_context(cursor=cursor, instance=DagsterInstance.ephemeral(), resources={
            "mongo": MongoResource(data_dir=str(tmp_path)), "training": TrainingResource(output_dir=str(tmp_path / "output")),
            "lifecycle": LifecycleResource(),
        })
        return retrain_sensor(tenants)(context)

    alone = tick([demo], None)
    assert set(parse_tenant_states(alone.cursor, "demo")) == {"demo"} and not alone.run_requests
    both = tick([demo, acme], alone.cursor)  # acme added: its own entry, its own threshold (3), its own job
    assert tenant_state(both.cursor, "demo") == tenant_state(alone.cursor, "demo")
    [request] = both.run_requests
    assert request.job_name == "acme__training_job" and request.tags["legolas/tenant"] == "acme"
    only_acme = tick([acme], both.cursor)  # demo removed: its entry stays, untouched, for when it comes back
    assert tenant_state(only_acme.cursor, "demo") == tenant_state(alone.cursor, "demo")
    back = tick([demo, acme], only_acme.cursor)
    assert "tenant demo: 12 new reviews, threshold 50" in back.skip_reason.skip_message
    # A cursor from before tenants were first-class is the default tenant's state.
    legacy = tenant_state(alone.cursor, "demo")
    assert parse_tenant_states(legacy, legacy_tenant="demo") == {"demo": legacy}


def test_one_tenants_broken_store_does_not_stop_another_tenants_retraining(tmp_path, monkeypatch):
    from dagster_helpers import retrain_sensor
    from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource

    monkeypatch.setenv("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "0")
    acme, bad = TenantPlan("acme", TenantSettings(retrain_threshold=3)), TenantPlan("bad")
    client = connect(None, tmp_path)
    try:  # bad: two copies of one review, what concurrent writers left before they were serialised
        for _ in range(2):
            client["legolas"][REVIEWS].insert_one({"tenant": "bad", "session_id": "b1", "label": "x", "reviewed_at": datetime(2026, 3, 1)})
        for k in range(5):
            client["legolas"][REVIEWS].insert_one({"tenant": "acme", "session_id": f"a{k}", "label": "x", "reviewed_at": datetime(2026, 3, 1, 0, 0, k)})
    finally:
        client.close()
    context = build_sensor_context(instance=DagsterInstance.ephemeral(), resources={
        "mongo": MongoResource(data_dir=str(tmp_path)), "training": TrainingResource(output_dir=str(tmp_path / "output")),
        "lifecycle": LifecycleResource(),
    })
    result = retrain_sensor([acme, bad])(context)
    assert [r.job_name for r in result.run_requests] == ["acme__training_job"]
    assert set(parse_tenant_states(result.cursor, "acme")) == {"acme"}  # bad's (empty) state is kept as it was


def test_the_embedded_uniqueness_scan_reads_its_own_tenant_only(tmp_path):
    """The embedded store checks uniqueness by reading litemongo's documents directly (not a query the
    audit sees): another tenant's duplicates are never this tenant's."""
    client = connect(None, tmp_path)
    try:
        for tenant in ("beta", "beta"):
            client["legolas"][REVIEWS].insert_one({"tenant": tenant, "session_id": "s1", "label": "x", "reviewed_at": datetime(2026, 1, 1)})
        client["legolas"][REVIEWS].insert_one({"tenant": "alpha", "session_id": "s1", "label": "x", "reviewed_at": datetime(2026, 1, 1)})
        alpha, beta = TenantStore(client["legolas"], "alpha"), TenantStore(client["legolas"], "beta")
        assert alpha.embedded and alpha.duplicates() == []
        assert [d.key for d in beta.duplicates()] and beta.duplicates()[0].ids
    finally:
        client.close()
