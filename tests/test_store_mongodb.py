"""The store tests against a real MongoDB: run only when LEGOLAS_MONGO_URI is set.

No MongoDB server can be installed on the CI machines, so CI skips this module; on a machine with a
server, ``LEGOLAS_MONGO_URI=mongodb://... pytest tests/test_store_mongodb.py`` runs the same queries,
indexes, gate rules and review numbering (``seq``, the sensor's order) against it.
"""

import os
import uuid
from datetime import datetime, timedelta

import pytest

from legolas_ml.data.quality_gate import gate_from_store
from legolas_ml.data.store import FieldChanges, connect, open_tenant_store
from test_store import check_reviews_numbered_in_received_order, check_reviews_of_an_older_release

URI = os.environ.get("LEGOLAS_MONGO_URI")
pytestmark = [pytest.mark.mongo, pytest.mark.skipif(not URI, reason="LEGOLAS_MONGO_URI is not set")]


@pytest.fixture
def database():
    name = f"legolas_test_{uuid.uuid4().hex[:8]}"
    yield name
    client = connect(URI, "unused")
    client.drop_database(name)
    client.close()


@pytest.fixture
def store(database):
    with open_tenant_store(URI, "unused", database, "acme") as s:
        yield s


def test_reviews_are_numbered_in_received_order_on_mongodb(database):
    """The same counter ($inc in review_sequences), index and seq queries as the embedded store."""
    check_reviews_numbered_in_received_order(lambda tenant: open_tenant_store(URI, "unused", database, tenant))


def test_reviews_of_an_older_release_are_numbered_at_open_on_mongodb(database):
    check_reviews_of_an_older_release(lambda tenant: open_tenant_store(URI, "unused", database, tenant))


def test_same_gate_rules_on_mongodb(store):
    t = datetime(2026, 1, 1)
    store.insert_classifications([
        {"session_id": "s1", "text": "a", "llm_prediction": "x", "classification_method": "llm", "needs_review": False},
        {"session_id": "s2", "text": "b", "llm_prediction": "y", "classification_method": "LLM_ml", "needs_review": False},
        {"session_id": "s3", "text": "c", "llm_prediction": "y", "classification_method": "llm+human"},
        {"session_id": "s4", "text": "d", "llm_prediction": "y", "classification_method": "LLM", "needs_review": True},
    ])
    store.insert_review({"session_id": "s1", "label": "z", "reviewed_at": t})
    store.insert_review({"session_id": "s1", "label": "w", "reviewed_at": t + timedelta(seconds=1)})
    result = gate_from_store(store, has_model=False)
    assert result.dataset[["session_id", "label"]].values.tolist() == [["s1", "w"]]
    assert result.superseded["llm_by_human_review"] == 1 and result.superseded["reviews_by_later_review"] == 1
    assert len(store.reviews_after(None)) == 2
    assert store.insert_review({"session_id": "s1", "label": "w", "reviewed_at": t}) is False


def test_same_loop_queries_on_mongodb(store):
    """The scoring and audit writes: human decisions and edited texts are never overwritten."""
    store.insert_classifications([
        {"session_id": "s1", "text": "a", "llm_prediction": "x", "classification_method": "llm"},
        {"session_id": "s2", "text": "b", "llm_prediction": "y", "classification_method": "human_review"},
        {"session_id": "s3", "text": "c", "llm_prediction": "y", "classification_method": "llm", "needs_review": True},
    ])
    store.insert_review({"session_id": " s3 ", "label": "z", "reviewed_at": datetime(2026, 1, 1)})
    assert store.reviewed_session_ids() == {"s2", "s3"}
    assert store.reviewed_session_ids(among=["s1", "s3"]) == {"s3"}
    assert store.update_unreviewed("s1", FieldChanges(set={"ml_prediction": "x"}), text="a") is True
    assert store.update_unreviewed("s1", FieldChanges(set={"ml_prediction": "q"}), text="edited meanwhile") is False
    assert store.update_unreviewed("s2", FieldChanges(set={"ml_prediction": "x"})) is False  # a human decided
    docs = {d["session_id"]: d for d in store.classification_fields(("ml_prediction",))}
    assert docs["s1"]["ml_prediction"] == "x" and "ml_prediction" not in docs["s2"]
    assert [d["session_id"] for d in store.flagged_for_review(("text",))] == ["s3"]
