"""Hostile records are counted rejections, never crashes: the importer names the line, the gate the document."""

import json
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legolas_ml.cli import main
from legolas_ml.core.ids import normalise_session_id
from legolas_ml.data.quality_gate import QUARANTINE_REASONS, gate_from_store, parse_timestamp, run_gate
from legolas_ml.data.review_import import parse_review_line
from legolas_ml.data.store import open_tenant_store

T0 = datetime(2026, 3, 1, 12, 0)
UNDERFLOW = "0001-01-01T00:00:00+01:00"  # year 0 once in UTC
OVERFLOW = "9999-12-31T23:59:59-01:00"  # year 10000 once in UTC


def _deep(depth: int = 50_000):
    """A list nested past Python's recursion limit: repr() and json.dumps() of it raise RecursionError."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _good(k: int) -> str:
    return json.dumps({"session_id": f"g{k}", "label": "billing", "text": "fine", "reviewed_at": f"2026-02-01T10:00:0{k}Z"})


def test_import_rejects_every_hostile_line_by_number_and_finishes_the_file(tmp_path, monkeypatch, capsys):
    hostile = [
        json.dumps({"session_id": "h1", "label": "x", "reviewed_at": UNDERFLOW}),
        json.dumps({"session_id": "h2", "label": "x", "reviewed_at": OVERFLOW}),
        '{"session_id": "h3", "label": "bad \\ud800 label", "reviewed_at": "2026-02-01T10:00:00"}',
        '{"session_id": "h4", "label": "x", "text": "\\udfff", "reviewed_at": "2026-02-01T10:00:00"}',
        '{"session_id": "\\ud800", "label": "x", "reviewed_at": "2026-02-01T10:00:00"}',
        '{"session_id": "h6", "label": ' + "[" * 200_000 + "]" * 200_000 + "}",
        '{"session_id": "h7", "label": "x", "reviewed_at": "2026-02-01", "confidence": ' + "9" * 5000 + "}",
        '{"session_id": "h8", "label": "x", "reviewed_at": "2026-02-01", "confidence": ' + "9" * 400 + "}",
    ]
    lines = [_good(0), *hostile, _good(1), " " + _good(2)]
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    assert main(["import-reviews", str(path), "--tenant", "acme"]) == 1
    captured = capsys.readouterr()
    assert "11 lines, 3 reviews imported, 0 already present, 0 left unlabelled, 8 rejected" in captured.out
    for line_no, why in [(2, "reviewed_at"), (3, "reviewed_at"), (4, "label is not valid UTF-8"), (5, "text is not valid UTF-8"),
                         (6, "session_id is not valid UTF-8"), (7, "not valid JSON (nested deeper"), (8, "not valid JSON"), (9, "confidence")]:
        assert f"hostile.jsonl:{line_no}: rejected: {why}" in captured.err, (line_no, captured.err[-2000:])
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        assert sorted(d["session_id"] for d in store.human_reviews()) == ["g0", "g1", "g2"]


def test_timestamps_that_overflow_in_utc_are_unparseable_not_fatal():
    assert parse_timestamp(UNDERFLOW) is None and parse_timestamp(OVERFLOW) is None
    assert parse_timestamp("9999-12-31T23:59:59+01:00") == datetime(9999, 12, 31, 22, 59, 59)
    assert parse_timestamp("2026-01-01T00:00:00+02:00") == datetime(2025, 12, 31, 22, 0)


def test_gate_quarantines_hostile_documents_stored_directly_and_names_them(tmp_path):
    """Written straight into the store (not through the importer): the gate still accounts for each one."""
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        store.start_writing()
        store.reviews.insert_many([
            {"tenant": "acme", "session_id": "under", "label": "x", "text": "t", "reviewed_at": UNDERFLOW},
            {"tenant": "acme", "session_id": "over", "label": "x", "text": "t", "reviewed_at": OVERFLOW},
            {"tenant": "acme", "session_id": "ok", "label": "x", "text": "t", "reviewed_at": T0},
        ])
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        result = gate_from_store(store, has_model=True)
    assert result.quarantined["invalid_reviewed_at"] == 2 and list(result.dataset["session_id"]) == ["ok"]
    named = {s["session_id"] for s in result.quarantine_samples if s["reason"] == "invalid_reviewed_at"}
    assert named == {"under", "over"}  # plain ids, as people type them (not repr'd)


def test_gate_survives_deep_nesting_huge_ints_and_surrogates_in_every_field():
    deep = _deep()
    reviews = [
        {"session_id": deep, "label": "x", "text": "t", "reviewed_at": T0},
        {"session_id": "s1", "label": deep, "text": "t", "reviewed_at": T0},
        {"session_id": "s2", "label": "x", "text": deep, "reviewed_at": T0},
        {"session_id": "s3", "label": "x", "text": "t", "reviewed_at": T0, "_id": deep},
        {"session_id": 10**5000, "label": "x", "text": "t", "reviewed_at": T0},
        {"session_id": "s4", "label": "x\ud800", "text": "t", "reviewed_at": T0},
        {"session_id": "s5", "label": "x", "text": "t", "reviewed_at": UNDERFLOW},
        {"session_id": "s6", "label": "x", "text": "t", "reviewed_at": T0, "_id": 10**5000},
    ]
    llm = [{"session_id": "s7", "text": "t", "llm_prediction": "y", "created_at": OVERFLOW, "_id": deep}]
    result = run_gate(reviews, llm, {}, "first")
    assert result.counts["inputs"] == 9 == result.counts["accepted"] + result.counts["quarantined"] + result.counts["superseded"]
    assert sorted(result.dataset["session_id"]) == ["s3", "s6", "s7"]
    assert result.quarantined["missing_session_id"] == 2 and result.quarantined["non_string_label"] == 1
    assert result.quarantined["non_string_text"] == 1 and result.quarantined["invalid_utf8"] == 1
    assert result.quarantined["invalid_reviewed_at"] == 1
    assert all(len(s["session_id"]) <= 60 and (s["text"] is None or len(s["text"]) <= 80) for s in result.quarantine_samples)


def test_session_ids_are_normalised_the_same_way_in_the_store_and_the_gate(tmp_path):
    """A review of " s1 " stored directly finds the text stored under "s1" (or under " s1 ")."""
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        store.start_writing()
        store.classifications.insert_many([
            {"tenant": "acme", "session_id": "s1", "text": "text of s1"},
            {"tenant": "acme", "session_id": " s2\t", "text": "text of s2"},
        ])
        store.reviews.insert_many([
            {"tenant": "acme", "session_id": " s1 ", "label": "billing", "reviewed_at": T0},
            {"tenant": "acme", "session_id": " s2\t", "label": "billing", "reviewed_at": T0},
        ])
    with open_tenant_store(None, tmp_path, "legolas", "acme") as store:
        result = gate_from_store(store, has_model=True)
    assert result.quarantined["no_text"] == 0
    assert dict(zip(result.dataset["session_id"], result.dataset["text"])) == {"s1": "text of s1", "s2": "text of s2"}
    assert [normalise_session_id(v) for v in (" s1 ", 7, 7.5, True, None, "", "\ud800", 10**5000, [1])] == [
        "s1", "7", "7.5", None, None, None, None, None, None]


# --- fuzz: the gate's hypothesis test (test_reliability.py) with the hostile values added --------------

_hostile_value = st.one_of(
    st.sampled_from([UNDERFLOW, OVERFLOW, "bad \ud800", " s1 ", "\ts1\n", "", "2026-13-45"]),
    st.sampled_from([10**5000, _deep(2000), {"nested": _deep(2000)}]),  # built once: hypothesis reuses them
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
    st.text(max_size=10),
    st.none(),
)
_hostile_review = st.fixed_dictionaries(
    {"session_id": _hostile_value, "text": _hostile_value, "label": _hostile_value, "reviewed_at": _hostile_value},
    optional={"_id": _hostile_value},
)
_hostile_llm = st.fixed_dictionaries(
    {"session_id": _hostile_value, "text": _hostile_value, "llm_prediction": _hostile_value, "created_at": _hostile_value},
    optional={"_id": _hostile_value},
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reviews=st.lists(_hostile_review, max_size=8), llm=st.lists(_hostile_llm, max_size=8),
       mode=st.sampled_from(["first", "retrain"]))
def test_gate_never_raises_on_hostile_values(reviews, llm, mode):
    result = run_gate(reviews, llm, {"s1": "looked-up text"}, mode)
    c = result.counts
    assert c["inputs"] == len(reviews) + (len(llm) if mode == "first" else 0)
    assert c["inputs"] == c["accepted"] + c["quarantined"] + c["superseded"]
    assert set(result.quarantined) == set(QUARANTINE_REASONS)
    assert result.dataset["session_id"].is_unique


_json_piece = st.one_of(
    st.sampled_from([
        '"' + UNDERFLOW + '"', '"' + OVERFLOW + '"', '"\\ud800"', '"\\udfff x"', '" s1 "', "1" * 5000, "9" * 400,
        "[" * 5000 + "]" * 5000, "null", "true", "1e999", '""', '"billing"', '"2026-01-01T00:00:00Z"',
    ]),
    st.text(max_size=8).map(json.dumps),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sid=_json_piece, label=_json_piece, reviewed_at=_json_piece, extra=_json_piece,
       extra_key=st.sampled_from(["text", "reviewer", "notes", "confidence"]))
def test_parse_review_line_never_raises_and_every_kept_line_is_storable(sid, label, reviewed_at, extra, extra_key):
    import bson

    raw = f'{{"session_id": {sid}, "label": {label}, "reviewed_at": {reviewed_at}, "{extra_key}": {extra}}}'.encode(
        "utf-8", "surrogatepass"
    )
    doc, problem = parse_review_line(raw)
    assert (doc is None) != (problem is None)
    if doc is not None:
        bson.encode(doc)  # storable: no surrogates, no out-of-range dates, no huge ints
        assert doc["session_id"] == normalise_session_id(doc["session_id"])
    else:
        assert isinstance(problem, str) and len(problem) < 300
