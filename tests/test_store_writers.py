"""One writer at a time on the embedded store; a store broken by concurrent writers is named and repaired."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from legolas_ml.cli import main
from legolas_ml.data.quality_gate import gate_from_store
from legolas_ml.data.store import REVIEWS, connect, open_tenant_store
from legolas_ml.data.store_integrity import StoreIntegrityError
from legolas_ml.data.store_lock import StoreBusyError, StoreWriterLock

WRITERS = 3
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from legolas_ml.data.store_lock import StoreWriterLock
    StoreWriterLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _env(home: Path, **extra) -> dict:
    return {**os.environ, "LEGOLAS_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}


def _review_line(k: int) -> str:
    return json.dumps({"session_id": f"s{k}", "label": "billing", "text": f"text {k}", "reviewed_at": f"2026-01-01T00:{k // 60 % 60:02d}:{k % 60:02d}Z"})


def _stored_keys(home: Path, tenant: str) -> list[tuple]:
    client = connect(None, home)
    try:
        return [(d["session_id"], d["reviewed_at"]) for d in client["legolas"][REVIEWS].find({"tenant": tenant})]
    finally:
        client.close()


def test_parallel_imports_of_overlapping_files_keep_every_review_once(tmp_path):
    """3 imports at once of overlapping files, with gate reads during them: each distinct review is
    stored exactly once, no writer crashes, no read fails, and the store still opens."""
    files = []
    for w in range(WRITERS):  # writer w imports reviews 150*w .. 150*w + 299: each overlaps its neighbours
        path = tmp_path / f"log{w}.jsonl"
        path.write_text("".join(_review_line(k) + "\n" for k in range(150 * w, 150 * w + 300)))
        files.append(path)
    distinct = 150 * (WRITERS - 1) + 300
    procs = [
        subprocess.Popen([sys.executable, "-m", "legolas_ml.cli", "import-reviews", str(f), "--tenant", "acme"],
                         env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in files
    ]
    reads, failed_reads = 0, []
    while any(p.poll() is None for p in procs):
        try:
            with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
                gate_from_store(store, has_model=True)
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every failure of a reader is what this test counts
            failed_reads.append(repr(exc)[:200])
        time.sleep(0.2)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, [err[-600:] for _, err in outputs]
    imported = sum(int(out.split(" lines, ")[1].split(" reviews imported")[0]) for out, _ in outputs)
    keys = _stored_keys(tmp_path, "acme")
    assert len(keys) == len(set(keys)) == distinct == imported
    assert reads > 0 and not failed_reads, failed_reads
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        assert store.counts()["reviews"] == distinct


def test_second_writer_waits_with_a_message_then_fails_clearly_and_readers_never_wait(tmp_path, caplog):
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        store.insert_review({"session_id": "s1", "label": "x", "reviewed_at": datetime(2026, 1, 1)})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "store"), "60"],
                              env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with open_tenant_store(None, tmp_path, "legolas", "acme") as reader:  # a reader neither waits nor fails
            assert reader.counts()["reviews"] == 1
        assert time.monotonic() - started < 5
        caplog.set_level(logging.WARNING, logger="legolas.store")
        with pytest.raises(StoreBusyError) as err:
            with open_tenant_store(None, tmp_path, "legolas", "acme", writer=True, lock_wait_s=0.5):
                pass
        assert f"pid {holder.pid}" in str(err.value) and "0.5s" in str(err.value)
        assert "waiting up to 0.5s" in caplog.text and f"pid {holder.pid}" in caplog.text
        with open_tenant_store(None, tmp_path, "legolas", "acme", lock_wait_s=0.5) as store:  # lazily, at the first write
            with pytest.raises(StoreBusyError):
                store.insert_review({"session_id": "s2", "label": "x", "reviewed_at": datetime(2026, 1, 1)})
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the killed holder's lock: the next writer gets it at once.
    with open_tenant_store(None, tmp_path, "legolas", "acme", writer=True, lock_wait_s=0.5) as store:
        assert store.insert_review({"session_id": "s2", "label": "x", "reviewed_at": datetime(2026, 1, 1)})


def test_writer_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    import threading

    outcome = []

    def other_writer():
        try:
            StoreWriterLock(tmp_path, wait_s=0.2).acquire()
            outcome.append("acquired")
        except StoreBusyError:
            outcome.append("busy")

    with StoreWriterLock(tmp_path, wait_s=0.2), StoreWriterLock(tmp_path, wait_s=0.2):  # nested: no self-deadlock
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join()
    assert outcome == ["busy"]
    with StoreWriterLock(tmp_path, wait_s=0.2):  # released by the outermost exit
        pass
    with pytest.raises(ValueError, match="wait_s must be a number of seconds >= 0, got -1"):
        StoreWriterLock(tmp_path, wait_s=-1)


def test_a_review_already_present_is_never_written_not_even_for_an_instant(tmp_path):
    """litemongo inserts, then deletes a copy that breaks the unique index: a reader scanning at that
    instant saw two copies and failed. A writer now looks first, so a duplicate commits nothing."""
    import sqlite3

    review = {"session_id": "s1", "label": "x", "reviewed_at": datetime(2026, 1, 1)}
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        assert store.insert_review(review)
        observer = sqlite3.connect(tmp_path / "store" / "legolas" / REVIEWS)
        before = observer.execute("PRAGMA data_version").fetchone()[0]
        assert store.insert_review(dict(review)) is False
        assert store.insert_review({**review, "session_id": " s1 "}) is False  # the same id, normalised
        assert observer.execute("PRAGMA data_version").fetchone()[0] == before  # no commit by the writer
        observer.close()


def _corrupt_store(home: Path) -> None:
    """A store as two unserialised imports left it: one review twice, its unique index declared."""
    import litemongo

    client = litemongo.connect(str(home / "store"))
    reviews = client["legolas"][REVIEWS]
    t = datetime(2026, 1, 1)
    reviews.insert_many([
        {"tenant": "acme", "session_id": "s1", "label": "billing", "reviewed_at": t},
        {"tenant": "acme", "session_id": "s1", "label": "billing", "reviewed_at": t},
        {"tenant": "acme", "session_id": "s2", "label": "shipping", "reviewed_at": t},
    ])
    # Declared directly on the collection store, as it was before the copies raced in.
    reviews._store.create_index(
        "tenant_session_reviewed", {"key": [("tenant", 1), ("session_id", 1), ("reviewed_at", 1)], "unique": True}
    )
    client.close()


def test_corrupt_store_names_the_duplicate_and_repair_store_fixes_it(tmp_path, monkeypatch, capsys):
    _corrupt_store(tmp_path)
    with pytest.raises(StoreIntegrityError) as err:
        with open_tenant_store(None, tmp_path, "legolas", "acme"):
            pass
    message = str(err.value)
    assert "session_id='s1'" in message and "2 times" in message and "legolas repair-store --tenant acme" in message

    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    line = tmp_path / "one.jsonl"
    line.write_text(_review_line(7) + "\n")
    assert main(["import-reviews", str(line), "--tenant", "acme"]) == 1  # refused with the message, no trace (runtime: exit 1)
    assert "repair-store" in capsys.readouterr().err

    assert main(["repair-store"]) == 0
    out = capsys.readouterr().out
    assert "tenant 'acme': removed 0 classifications, 1 human_reviews" in out
    backup = Path(out.split("saved to ")[1].strip())
    saved = [json.loads(row) for row in backup.read_text().splitlines()]
    assert len(saved) == 1 and saved[0]["document"]["session_id"] == "s1"
    assert sorted(_stored_keys(tmp_path, "acme")) == [("s1", datetime(2026, 1, 1)), ("s2", datetime(2026, 1, 1))]
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:  # opens again, index intact
        assert store.insert_review({"session_id": "s1", "label": "billing", "reviewed_at": datetime(2026, 1, 1)}) is False
    assert main(["import-reviews", str(line), "--tenant", "acme"]) == 0
    assert main(["repair-store", "--tenant", "acme"]) == 0
    assert "removed 0 classifications, 0 human_reviews duplicate documents" in capsys.readouterr().out


def test_database_names_are_validated_like_tenant_names(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    line = tmp_path / "one.jsonl"
    line.write_text(_review_line(1) + "\n")
    monkeypatch.setenv("LEGOLAS_HOME", str(home))
    for bad in ("../../x", str(tmp_path / "abs"), "a.b", "a/b"):
        monkeypatch.setenv("LEGOLAS_DATABASE", bad)
        assert main(["import-reviews", str(line), "--tenant", "acme"]) == 2
        err = capsys.readouterr().err
        assert "LEGOLAS_DATABASE" in err and repr(bad) in err
    assert {p.name for p in tmp_path.iterdir()} <= {"home", "one.jsonl"}  # nothing outside LEGOLAS_HOME
    assert not (home / "store").exists() or not any(p.is_dir() for p in (home / "store").iterdir())
    for bad in ("../x", "x\n", "", "a" * 64):
        with pytest.raises(ValueError, match=r"LEGOLAS_DATABASE, MongoResource.database.*letters, digits, '_' or '-'"):
            with open_tenant_store(None, home, bad, "acme"):
                pass
