"""`legolas import-conversations`: formats, the field map, rejections and counts, idempotence, tenant settings."""

import csv
import json

import pandas as pd
import pytest

from legolas_ml.cli import main
from legolas_ml.data.conversation_import import import_conversations, parse_conversation_record, parse_field_map
from legolas_ml.data.quality_gate import gate_from_store
from legolas_ml.data.store import open_tenant_store
from legolas_ml.data.tenants import TenantSettings

MAP = "session_id=ticket_id,text=body,llm_label=predicted_category,llm_confidence=score"
ROWS = [
    {"ticket_id": "t1", "body": "I was charged twice", "predicted_category": "billing", "score": 0.91},
    {"ticket_id": "t2", "body": "parcel is late", "predicted_category": "shipping", "score": 0.8},
    {"ticket_id": "t3", "body": "app crashes", "predicted_category": "technical", "score": 0.7},
]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    monkeypatch.delenv("LEGOLAS_MONGO_URI", raising=False)
    return tmp_path


def write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def stored(home, tenant="mine"):
    with open_tenant_store(None, home, "legolas", tenant) as store:
        return {d["session_id"]: d for d in store.classification_fields(("text", "turns", "llm_prediction", "llm_confidence", "classification_method", "created_at"))}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_each_format_imports_the_same_documents_as_demo_data_writes(home, fmt, capsys):
    path = write(home / f"tickets.{fmt}", ROWS, fmt)
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP]) == 0
    assert "3 new conversations, 0 updated, 0 already present, 0 rejected" in capsys.readouterr().out
    docs = stored(home)
    assert docs["t1"]["text"] == "I was charged twice" and docs["t1"]["llm_prediction"] == "billing"
    assert docs["t1"]["llm_confidence"] == pytest.approx(0.91) and isinstance(docs["t1"]["llm_confidence"], float)
    assert docs["t1"]["classification_method"] == "llm" and docs["t1"]["created_at"] is not None
    # The quality gate reads the imported documents as trusted LLM labels (first training).
    with open_tenant_store(None, home, "legolas", "mine") as store:
        gate = gate_from_store(store, has_model=False)
    assert gate.per_source == {"human": 0, "llm": 3} and gate.per_class == {"billing": 1, "shipping": 1, "technical": 1}


def test_reimport_changes_nothing_and_a_changed_text_updates_the_document(home, capsys):
    path = write(home / "t.jsonl", ROWS, "jsonl")
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP]) == 0
    first = stored(home)
    capsys.readouterr()
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP]) == 0
    assert "0 new conversations, 0 updated, 3 already present" in capsys.readouterr().out
    assert stored(home) == first  # created_at included: nothing was rewritten
    edited = [{**ROWS[0], "body": "I was charged three times"}, *ROWS[1:]]
    write(path, edited, "jsonl")
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP, "--dry-run"]) == 0
    assert "0 new conversations, 1 updated" in capsys.readouterr().out and stored(home) == first  # dry run: nothing written
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP]) == 0
    assert "0 new conversations, 1 updated, 2 already present" in capsys.readouterr().out
    after = stored(home)
    assert after["t1"]["text"] == "I was charged three times" and after["t1"]["created_at"] == first["t1"]["created_at"]
    assert len(after) == 3


def test_rejections_are_counted_per_line_like_import_reviews(home, capsys):
    lines = [
        json.dumps(ROWS[0]),
        "{not json",
        json.dumps({"ticket_id": "", "body": "x"}),  # empty session id
        json.dumps({"ticket_id": "t9"}),  # neither text nor turns
        json.dumps({"ticket_id": "t8", "body": "ok", "score": "high"}),  # confidence not a number
        json.dumps({"ticket_id": "t1", "body": "again"}),  # the same session twice in one file
        json.dumps(["a", "list"]),
        "",
        json.dumps({"ticket_id": 42, "body": "integer ids name sessions", "predicted_category": "billing"}),
    ]
    path = home / "log.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", MAP]) == 1
    captured = capsys.readouterr()
    for line_no in (2, 3, 4, 5, 6, 7, 10):
        assert f"log.jsonl:{line_no}: rejected" in captured.err
    assert "score (LLM confidence) must be a finite number" in captured.err and "already given on line 1" in captured.err
    assert "ticket_id (session id) must be" in captured.err
    assert "9 lines, 2 new conversations, 0 updated, 0 already present, 7 rejected" in captured.out
    assert set(stored(home)) == {"t1", "42"}


def test_turns_become_the_text_and_are_kept(home):
    rows = [{"session_id": "c1", "turns": [{"role": "Customer", "text": "my card was billed"}, {"role": "Agent", "text": "let me check"}]}]
    with open_tenant_store(None, home, "legolas", "mine") as store:
        report = import_conversations(write(home / "c.parquet", rows, "parquet"), store)
    assert report.imported == 1 and report.ok
    doc = stored(home)["c1"]
    assert doc["text"] == "Customer: my card was billed\nAgent: let me check" and doc["turns"][1]["role"] == "Agent"
    assert "llm_prediction" not in doc  # no LLM label: the conversation waits for a review
    assert parse_conversation_record({"session_id": "c2", "turns": [{"role": "", "text": "x"}]}, {})[1].startswith("turns: turns[0] must be")
    # In a CSV cell the turns are JSON.
    doc, problem = parse_conversation_record({"session_id": "c3", "turns": json.dumps(rows[0]["turns"])}, {})
    assert problem is None and doc["text"].startswith("Customer: my card")


def test_field_map_names_allowed_targets_and_what_was_received():
    assert parse_field_map(MAP)["llm_confidence"] == "score"
    with pytest.raises(ValueError, match=r"unknown target 'label'; the targets are \['session_id', 'text', 'turns'"):
        parse_field_map("label=predicted_category")
    with pytest.raises(ValueError, match="target=field pairs"):
        parse_field_map("session_id")
    with pytest.raises(ValueError, match="mapped twice"):
        parse_field_map("text=a,text=b")
    with pytest.raises(ValueError, match="unknown target 'txt'"):
        TenantSettings.from_dict({"field_map": {"txt": "body"}})
    with pytest.raises(ValueError, match="format \\(--format\\) must be one of"):
        import_conversations("x.jsonl", None, fmt="xml")


def test_the_tenant_setting_field_map_is_used_and_map_overrides_it(home, capsys):
    path = write(home / "t.csv", ROWS, "csv")
    assert main(["tenants", "add", "mine", "--field-map", MAP]) == 0
    capsys.readouterr()
    assert main(["import-conversations", str(path), "--tenant", "mine"]) == 0
    out = capsys.readouterr().out
    assert "3 new conversations" in out and "field map from the tenant setting field_map" in out
    renamed = [{"id": r["ticket_id"], "body": r["body"]} for r in ROWS]
    write(path, renamed, "csv")
    assert main(["import-conversations", str(path), "--tenant", "mine", "--map", "session_id=id,text=body"]) == 0
    out = capsys.readouterr().out
    # --map wins: this file has no label column, so the imported label and confidence are dropped.
    assert "0 new conversations, 3 updated" in out and "field map from --map" in out
    assert "llm_prediction" not in stored(home)["t1"]


# --- an existing MongoDB: the tenant's own collection, and LEGOLAS's writes kept apart ---

def test_annotation_mode_follows_the_setting_then_who_created_the_collection(home):
    from legolas_ml.data.annotations import annotation_mode, validate_collection
    from legolas_ml.data.store import connect, tenant_layout

    assert annotation_mode(None, created_by_legolas=True)[0] == "inline"
    assert annotation_mode(None, created_by_legolas=False)[0] == "separate"
    assert annotation_mode("inline", created_by_legolas=False) == ("inline", "tenant setting annotations='inline'")
    with pytest.raises(ValueError, match=r"annotations must be one of \['inline', 'separate'\], got 'apart'"):
        TenantSettings.from_dict({"annotations": "apart"})
    with pytest.raises(ValueError, match="tenant setting collection must be"):
        validate_collection("human_reviews")
    # A store read as MongoDB (embedded=False): a collection without LEGOLAS's marker is the user's.
    client = connect(None, home)
    db = client["legolas"]
    db["tickets"].insert_one({"tenant": "mine", "session_id": "u1", "text": "theirs"})
    db["tenants"].insert_one({"name": "mine", "settings": {"collection": "tickets"}})
    assert tenant_layout(db, "mine", embedded=False) == ("tickets", "separate")
    assert tenant_layout(db, "mine", embedded=True) == ("tickets", "inline")
    client.close()
    # LEGOLAS importing into an empty collection records that it created it.
    with open_tenant_store(None, home, "legolas", "other") as store:
        import_conversations(write(home / "t.jsonl", ROWS, "jsonl"), store, parse_field_map(MAP))
    client = connect(None, home)
    assert client["legolas"]["legolas_collections"].find_one({"_id": "classifications"})["created_by"] == "legolas"
    assert tenant_layout(client["legolas"], "other", embedded=False) == ("classifications", "inline")
    client.close()


def test_separate_annotations_leave_the_users_documents_untouched_and_the_gate_reads_them(home, capsys):
    import numpy as np

    from legolas_ml.data.store import FieldChanges, connect
    from legolas_ml.review.label_audit import AUDITOR, flag_changes
    from legolas_ml.review.queue import review_queue
    from legolas_ml.scoring.predictions import score_documents

    assert main(["tenants", "add", "mine", "--field-map", MAP, "--settings", '{"collection": "tickets", "annotations": "separate"}']) == 0
    assert main(["import-conversations", str(write(home / "t.csv", ROWS, "csv")), "--tenant", "mine"]) == 0

    def raw(collection):
        client = connect(None, home)
        try:
            return sorted((d for d in client["legolas"][collection].find({}, {"_id": 0})), key=lambda d: d["session_id"])
        finally:
            client.close()

    users = raw("tickets")
    assert [d["session_id"] for d in users] == ["t1", "t2", "t3"] and raw("classifications") == []
    labels = ["billing", "shipping", "technical"]
    with open_tenant_store(None, home, "legolas", "mine") as store:
        assert store.separate
        report = score_documents(store, lambda texts: np.tile([0.6, 0.3, 0.1], (len(texts), 1)), labels, "v1", log=lambda _: None)
        assert report.scored == 3
        assert score_documents(store, lambda texts: 1 / 0, labels, "v1", log=lambda _: None).up_to_date == 3  # read back joined
        now = pd.Timestamp("2026-03-01").to_pydatetime()
        docs = {d["session_id"]: d for d in store.classification_fields(("needs_review", "review_flagged_by", "review_doubted", "review_sample"))}
        assert store.update_unreviewed("t2", flag_changes(docs["t2"], ["label_issue"], 0.9, 0.2, "v1", now))
        assert store.update_unreviewed("t3", flag_changes(docs["t3"], [], 0.1, 0.9, "v1", now, doubted=True))
        assert [r["session_id"] for r in review_queue(store)] == ["t2"]
        gate = gate_from_store(store, has_model=False)
        assert gate.per_class == {"billing": 1}  # t2 flagged and t3 doubted by the audit: not trusted
        assert store.clear_audit_flag("t2", AUDITOR, FieldChanges(set={"needs_review": False}, unset=frozenset({"review_flagged_by"})))
        assert not store.clear_audit_flag("t2", AUDITOR, FieldChanges(set={"needs_review": False}))  # no audit flag any more
        with pytest.raises(ValueError, match="LEGOLAS never deletes them"):
            store.delete_tenant_documents()
    assert raw("tickets") == users  # the user's documents: never written
    notes = {d["session_id"]: d for d in raw("legolas_annotations")}
    assert notes["t1"]["ml_prediction"] == "billing" and notes["t1"]["ml_model_version"] == "v1"
    assert notes["t2"]["needs_review"] is False and notes["t3"]["review_doubted"] is True
