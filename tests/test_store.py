import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta

import pytest

from legolas_ml.data.store import (
    StoreUnavailableError,
    connect,
    open_tenant_store,
    redact_uri,
    scrub,
)

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


def test_reviews_after_cursor_handles_equal_timestamps(tmp_path):
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        t = datetime(2026, 1, 1)
        for k in range(4):
            store.insert_review({"session_id": f"s{k}", "label": "x", "reviewed_at": t})
        store.insert_review({"session_id": "s9", "label": "x", "reviewed_at": t + timedelta(seconds=1)})
        first = store.reviews_after(None, limit=2)
        cursor = (first[-1]["reviewed_at"], str(first[-1]["_id"]))
        rest = store.reviews_after(cursor)
        seen = [d["session_id"] for d in first + rest]
        assert sorted(seen) == ["s0", "s1", "s2", "s3", "s9"] and len(seen) == len(set(seen))
        assert store.insert_review({"session_id": "s0", "label": "y", "reviewed_at": t}) is False  # unique index


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
