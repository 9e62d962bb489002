import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta

import pytest

from legolas_ml.data.store import (
    FieldChanges,
    StoreUnavailableError,
    connect,
    open_tenant_store,
    redact_uri,
    scrub,
)
from legolas_ml.core.review_cursor import ReviewCursor

SECRET_URI = "mongodb://alice:s3cr%40tPass@db.internal.example:27017/legolas?authSource=admin"


def test_redact_uri_hides_password_only():
    red = redact_uri(SECRET_URI)
    assert "s3cr" not in red and "alice:***@db.internal.example:27017" in red
    assert redact_uri("mongodb://localhost:27017") == "mongodb://localhost:27017"
    text = f"failed for {SECRET_URI} (password s3cr@tPass)"
    assert "s3cr" not in scrub(text, SECRET_URI)


def test_unreachable_server_is_a_fast_clear_error():
    # Port 9 on loopback: nothing listens, the connection is refused; never a hang.
    uri = "mongodb://bob:hunter2@127.0.0.1:9/?directConnection=true"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        connect(uri, "unused", timeout_s=1.0)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "127.0.0.1:9" in message and "hunter2" not in message and "within 1s" in message


def test_wrong_uri_is_a_clear_error():
    with pytest.raises(StoreUnavailableError, match="invalid MongoDB URI"):
        connect("mongodb://carol:pw@", "unused", timeout_s=1.0)


def test_reviews_after_pages_by_seq_through_equal_timestamps(tmp_path):
    """Paging by a cursor: reviews sharing a timestamp are neither lost nor counted twice (the cursor
    is the store's seq now, no longer ``(reviewed_at, _id)``)."""
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        t = datetime(2026, 1, 1)
        for k in range(4):
            store.insert_review({"session_id": f"s{k}", "label": "x", "reviewed_at": t})
        store.insert_review({"session_id": "s9", "label": "x", "reviewed_at": t + timedelta(seconds=1)})
        first = store.reviews_after(None, limit=2)
        rest = store.reviews_after(ReviewCursor.of(first[-1]).as_tuple())
        seen = [d["session_id"] for d in first + rest]
        assert seen == ["s0", "s1", "s2", "s3", "s9"] and store.count_reviews_after(ReviewCursor.of(first[-1]).as_tuple()) == 3
        assert store.insert_review({"session_id": "s0", "label": "y", "reviewed_at": t}) is False  # unique index



def test_field_changes_are_the_only_way_to_write_fields(tmp_path):
    """Callers say which fields change (``FieldChanges``); the store alone writes ``$set``/``$unset``."""
    with pytest.raises(ValueError, match=r"both set and unset.*\['a'\]"):
        FieldChanges(set={"a": 1}, unset={"a"})
    assert FieldChanges(set={"a": 1}, unset={"c", "b"}).to_update() == {"$set": {"a": 1}, "$unset": {"b": "", "c": ""}}
    assert FieldChanges(unset={"b"}).to_update() == {"$unset": {"b": ""}} and FieldChanges(set={"a": 1}).to_update() == {"$set": {"a": 1}}
    assert not FieldChanges() and FieldChanges().is_empty and FieldChanges(unset={"b"})
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        store.insert_classifications([{"session_id": "s1", "text": "a", "llm_prediction": "x", "review_doubted": True}])
        assert store.update_unreviewed("s1", FieldChanges(set={"ml_prediction": "x"}, unset={"review_doubted"}), text="a")
        doc = next(iter(store.classification_fields(("ml_prediction", "review_doubted"))))
        assert doc["ml_prediction"] == "x" and "review_doubted" not in doc
        with pytest.raises(TypeError, match=r"update_unreviewed: changes must be a FieldChanges .*got dict"):
            store.update_unreviewed("s1", {"$set": {"ml_prediction": "y"}})
        with pytest.raises(TypeError, match=r"clear_audit_flag: changes must be a FieldChanges .*got dict"):
            store.clear_audit_flag("s1", "label_audit", {"$unset": {"needs_review": ""}})


T = datetime(2026, 1, 1)


def check_reviews_numbered_in_received_order(open_store) -> None:
    """Whatever their reviewed_at (older, in the future, a string), per tenant, never reused. Also run on MongoDB."""
    received = [("late-import", T - timedelta(days=30)), ("future", T + timedelta(days=4000)), ("text", "2026-01-02T00:00:00"), ("plain", T)]
    with open_store("acme") as store:
        for sid, reviewed_at in received:
            assert store.insert_review({"session_id": sid, "label": "x", "reviewed_at": reviewed_at, "seq": 99})  # a supplied seq is replaced
        assert [(r["session_id"], r["seq"]) for r in store.reviews_after(None)] == [(sid, k) for k, (sid, _) in enumerate(received, 1)]
        assert [r["session_id"] for r in store.reviews_after(ReviewCursor(seq=1).as_tuple(), limit=2)] == ["future", "text"]
        assert store.count_reviews_after(ReviewCursor(seq=1).as_tuple()) == 3
        assert "tenant_seq" in store.reviews.index_information()
    with open_store("other") as other:
        other.insert_review({"session_id": "s1", "label": "x", "reviewed_at": T})
        assert [r["seq"] for r in other.reviews_after(None)] == [1]  # each tenant counts its own
    with open_store("acme") as store:
        store.delete_tenant_documents()
        store.insert_review({"session_id": "again", "label": "x", "reviewed_at": T})
        assert [r["seq"] for r in store.reviews_after(None)] == [5]  # numbers are never given twice


def test_reviews_are_numbered_in_the_order_the_store_received_them(tmp_path):
    check_reviews_numbered_in_received_order(lambda tenant: open_tenant_store(None, tmp_path, "legolas", tenant))


def check_reviews_of_an_older_release(open_store) -> None:
    """A store an older release wrote (reviews without seq) and a cursor it wrote ``(reviewed_at, id)``:
    the first open numbers the reviews once, by (reviewed_at, _id), and the old cursor counts exactly
    the reviews after it; reviews received later wait, even one dated before it. Also run on MongoDB."""
    older = [{"tenant": "acme", "session_id": f"old{k}", "label": "x", "reviewed_at": T + timedelta(minutes=k)} for k in (3, 0, 2, 1)]
    older.append({"tenant": "acme", "session_id": "text-dated", "label": "x", "reviewed_at": "2026-01-01T00:00:30"})
    with open_store("acme") as store:
        store.start_writing()
        store.reviews.insert_many(older)  # as an older release stored them: no seq, not in date order
    with open_store("acme") as store:
        numbered = [(r["session_id"], r["seq"]) for r in store.reviews_after(None)]
        assert numbered == [("old0", 1), ("old1", 2), ("old2", 3), ("old3", 4), ("text-dated", 5)]
    with open_store("acme") as store:
        assert store.number_reviews() == 0 and [(r["session_id"], r["seq"]) for r in store.reviews_after(None)] == numbered
        old2 = next(r for r in store.reviews_after(None) if r["session_id"] == "old2")
        legacy = ReviewCursor.parse(json.dumps({"reviewed_at": old2["reviewed_at"].isoformat(), "id": str(old2["_id"])}))
        assert legacy.legacy and store.resolve_cursor(legacy.as_tuple()) == 3
        assert [r["session_id"] for r in store.reviews_after(legacy.as_tuple())] == ["old3", "text-dated"]
        assert store.insert_review({"session_id": "late-import", "label": "x", "reviewed_at": T - timedelta(days=30)})
        assert [r["session_id"] for r in store.reviews_after(legacy.as_tuple())] == ["old3", "text-dated", "late-import"]
        everything = ReviewCursor(T + timedelta(days=1), "z")  # an old cursor after every dated review
        assert store.count_reviews_after(everything.as_tuple()) == 2  # the string-dated one it never counted, and the late import


def test_reviews_of_an_older_release_are_numbered_once_and_its_cursors_resolve(tmp_path):
    check_reviews_of_an_older_release(lambda tenant: open_tenant_store(None, tmp_path, "legolas", tenant))


def test_the_first_writer_numbers_an_older_release_reviews_and_a_reader_never_waits_for_it(tmp_path):
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        store.start_writing()
        store.reviews.insert_many([{"tenant": "acme", "session_id": f"s{k}", "label": "x", "reviewed_at": T - timedelta(minutes=k)} for k in range(3)])
    with open_tenant_store(None, tmp_path, "legolas", "acme", writer=True) as writer:
        assert [r["session_id"] for r in writer.reviews_after(None)] == ["s2", "s1", "s0"]
        writer.reviews.insert_one({"tenant": "acme", "session_id": "raw", "label": "x", "reviewed_at": T})  # around insert_review

        def read() -> None:  # another thread: the writer lock is reentrant within one
            with open_tenant_store(None, tmp_path, "legolas", "acme") as reader:  # the writer holds the lock: left to it
                counted.append(reader.count_reviews_after(None))

        counted: list[int] = []
        started = time.monotonic()
        thread = threading.Thread(target=read)
        thread.start()
        thread.join(timeout=30)
        assert counted == [3] and time.monotonic() - started < 5
    with open_tenant_store(None, tmp_path, "legolas", "acme") as reader:
        assert [r["session_id"] for r in reader.reviews_after(ReviewCursor(seq=3).as_tuple())] == ["raw"]


def test_tenants_are_isolated(tmp_path):
    with open_tenant_store(None, tmp_path, "legolas", "a") as a:
        a.insert_review({"session_id": "s", "label": "x", "reviewed_at": datetime(2026, 1, 1)})
    with open_tenant_store(None, tmp_path, "legolas", "b") as b:
        assert b.counts()["reviews"] == 0


def test_cross_process_writer_and_reader(tmp_path):
    """One process writes reviews while this one reads: every review is visible, none duplicated."""
    writer = textwrap.dedent(f"""
        from datetime import datetime, timedelta
        from legolas_ml.data.store import open_tenant_store
        with open_tenant_store(None, {str(tmp_path)!r}, "legolas", "acme") as store:
            for k in range(50):
                store.insert_review({{"session_id": f"s{{k}}", "label": "x",
                                      "reviewed_at": datetime(2026, 1, 1) + timedelta(seconds=k)}})
    """)
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        assert store.counts()["reviews"] == 0
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        ids = [d["session_id"] for d in store.reviews_after(None)]
    assert len(ids) == 50 == len(set(ids))
