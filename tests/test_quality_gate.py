from datetime import datetime, timedelta

import pytest

from legolas_ml.data.quality_gate import GateSettings, RetrainData, decide_mode, gate_from_store, normalise_label, run_gate
from legolas_ml.core.datasets import content_hash
from legolas_ml.data.store import TenantStore, connect
from legolas_ml.core.review_cursor import ReviewCursor

T0 = datetime(2026, 3, 1, 12, 0)


def review(sid, label, minutes=0, text="a real conversation", **extra):
    return {"session_id": sid, "label": label, "text": text, "reviewed_at": T0 + timedelta(minutes=minutes), **extra}


def llm(sid, label, method="llm", needs_review=False, text="an llm labelled conversation", **extra):
    return {
        "session_id": sid, "text": text, "llm_prediction": label, "llm_confidence": 0.9,
        "classification_method": method, "needs_review": needs_review, "created_at": T0, **extra,
    }


@pytest.fixture
def store(tmp_path):
    client = connect(None, tmp_path)
    s = TenantStore(client["legolas"], "acme")
    s.ensure_indexes()
    s.ensure_indexes()  # idempotent
    yield s
    client.close()


def test_human_review_overrides_llm_label(store):
    store.insert_classifications([llm("s1", "billing"), llm("s2", "shipping")])
    store.insert_review(review("s1", "cancellation"))
    result = gate_from_store(store, has_model=False)
    rows = result.dataset.set_index("session_id")
    assert rows.loc["s1", "label"] == "cancellation" and rows.loc["s1", "source"] == "human"
    assert rows.loc["s2", "source"] == "llm"
    assert result.superseded["llm_by_human_review"] == 1 and result.mode == "first"


def test_latest_of_two_reviews_wins(store):
    store.insert_review(review("s1", "billing", minutes=0))
    store.insert_review(review("s1", "shipping", minutes=5))
    result = gate_from_store(store, has_model=True)
    assert result.dataset["label"].tolist() == ["shipping"]
    assert result.superseded["reviews_by_later_review"] == 1
    # A later but invalid review does not beat an earlier valid one: it is quarantined instead.
    store.insert_review(review("s1", "   ", minutes=9))
    result = gate_from_store(store, has_model=True)
    assert result.dataset["label"].tolist() == ["shipping"] and result.quarantined["missing_label"] == 1


@pytest.mark.parametrize(
    "method, trusted",
    [("llm", True), ("LLM", True), ("llm_long_text", True), ("llm+human", False), ("LLM_ml", False),
     ("ml_ensemble", False), ("human_review", False)],
)
def test_trusted_llm_methods(store, method, trusted):
    store.insert_classifications([llm("s1", "billing", method=method)])
    assert len(gate_from_store(store, has_model=False).dataset) == (1 if trusted else 0)


def test_needs_review_and_null_prediction_excluded(store):
    store.insert_classifications([llm("s1", "billing", needs_review=True), llm("s2", None), llm("s3", "billing")])
    store.classifications.insert_one({"tenant": "acme", "session_id": "s4", "text": "x", "classification_method": "llm"})
    assert gate_from_store(store, has_model=False).dataset["session_id"].tolist() == ["s3"]


def test_retrain_data_reviews_is_the_design_rule(store):
    store.insert_classifications([llm("s1", "billing"), llm("s2", "shipping")])
    store.insert_review(review("s3", "billing"))
    store.insert_review(review("s4", "shipping"))
    result = gate_from_store(store, has_model=True, retrain=RetrainData("reviews"), min_rows_per_class=1)
    assert result.mode == "retrain" and result.per_source == {"human": 2, "llm": 0} and result.llm_kept == {}
    assert gate_from_store(store, has_model=True, requested_mode="first").per_source["llm"] == 2


def test_a_class_without_enough_reviews_keeps_its_llm_rows_and_says_so(store):
    store.insert_classifications([llm("s1", "billing"), llm("s2", "shipping"), llm("s5", "shipping")])
    store.insert_review(review("s3", "billing"))
    store.insert_review(review("s4", "billing"))
    result = gate_from_store(store, has_model=True, retrain=RetrainData("reviews"), min_rows_per_class=2)
    # billing has its 2 reviewed rows: its LLM row goes; shipping has none: it keeps both LLM rows.
    assert sorted(result.dataset["session_id"]) == ["s2", "s3", "s4", "s5"]
    assert result.llm_kept == {"shipping": 2} and "['shipping']" in result.mode_reason and "shipping 0" in result.mode_reason
    c = result.counts  # every input accounted for: the LLM row of billing was left out by the policy
    assert c["inputs"] == c["accepted"] + c["quarantined"] + c["superseded"] + c["left_out_by_retrain_data"] == 5
    assert c["left_out_by_retrain_data"] == 1


def test_a_class_too_small_even_with_its_llm_rows_is_left_out_not_failed(store):
    store.insert_classifications([llm("s1", "billing"), llm("s2", "refund", needs_review=True)])
    for k in range(3):
        store.insert_review(review(f"b{k}", "billing"))
    store.insert_review(review("r1", "refund"))
    result = gate_from_store(store, has_model=True, retrain=RetrainData("reviews"), min_rows_per_class=2)
    # refund: 1 reviewed row, its only LLM row is flagged (not trusted): too few for K folds even so.
    assert sorted(result.dataset["label"].unique()) == ["billing"] and "refund" not in result.llm_kept
    assert "left out of this training, too few rows for K folds (need 2): refund 1" in result.mode_reason
    # Its held-out reviews stay: the holdout still judges the class the candidate cannot predict.
    store.insert_review(review("r2", "refund"))
    result = gate_from_store(store, has_model=True, retrain=RetrainData("reviews"), min_rows_per_class=2, held_out=lambda sid: sid == "r2")
    assert sorted(result.dataset.loc[result.dataset["label"] == "refund", "session_id"]) == ["r2"]


def test_switch_keeps_first_training_data_until_every_class_has_enough_reviews(store):
    store.insert_classifications([llm("s1", "billing"), llm("s2", "shipping"), llm("s3", "shipping", needs_review=True)])
    store.insert_review(review("r1", "billing"))
    store.insert_review(review("r2", "shipping"))
    switch = RetrainData("switch", min_reviews_per_class=2)
    result = gate_from_store(store, has_model=True, retrain=switch)
    # Not yet: the trusted LLM labels stay (s3 is flagged for review: never trusted).
    assert sorted(result.dataset["session_id"]) == ["r1", "r2", "s1", "s2"] and result.llm_kept == {"billing": 1, "shipping": 1}
    assert "until every class has 2 reviewed training rows (billing 1, shipping 1)" in result.mode_reason
    # A held-out review does not count: it is never trained on.
    store.insert_review(review("r3", "billing"))
    store.insert_review(review("r4", "shipping"))
    assert gate_from_store(store, has_model=True, retrain=switch, held_out=lambda sid: sid == "r4").llm_kept
    result = gate_from_store(store, has_model=True, retrain=switch)
    assert result.per_source == {"human": 4, "llm": 0} and "human reviews only" in result.mode_reason
    # The hash is the data version: it follows the rows the policy kept.
    assert result.content_hash == content_hash(result.dataset)


def test_unflagged_never_switches(store):
    store.insert_classifications([llm("s1", "billing")])
    store.insert_review(review("r1", "billing"))
    result = gate_from_store(store, has_model=True, retrain=RetrainData("unflagged"), min_rows_per_class=1)
    assert result.per_source == {"human": 1, "llm": 1}


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "human"}, "retrain_data must be one of ['switch', 'reviews', 'unflagged'], got 'human'"),
    ({"min_reviews_per_class": 0}, "retrain_min_reviews_per_class must be an integer >= 1, got 0"),
])
def test_retrain_data_validation(kwargs, message):
    with pytest.raises(ValueError) as error:
        RetrainData(**kwargs)
    assert str(error.value) == message


def test_mode_override_and_validation():
    assert decide_mode("auto", False)[0] == "first" and decide_mode("auto", True)[0] == "retrain"
    assert decide_mode("retrain", False)[0] == "retrain"
    with pytest.raises(ValueError, match="'first', 'retrain'"):
        decide_mode("sometimes", True)


def test_each_quarantine_reason_counted_and_sampled():
    reviews = [
        review(None, "billing"),                                  # missing_session_id
        review("r-empty", "billing", text="   "),                 # empty_text (no lookup text either)
        review("r-number", "billing", text=12345),                # non_string_text
        review("r-surrogate", "billing", text="bad \ud800 text"), # invalid_utf8
        review("r-bytes", "billing", text=b"\xff\xfe not utf8"),  # invalid_utf8
        review("r-long", "billing", text="x" * 101),              # text_too_long
        review("r-orphan", "billing", text=None),                 # no_text anywhere
        review("r-nolabel", None),                                # missing_label
        review("r-blank", " \t "),                                # missing_label
        review("r-int", 3),                                       # non_string_label
        {"session_id": "r-ts", "label": "billing", "text": "ok", "reviewed_at": "yesterday"},  # invalid_reviewed_at
        review("r-good", "Billing  Issue "),
    ]
    result = run_gate(reviews, [], {}, "retrain", settings=GateSettings(max_text_chars=100))
    assert result.quarantined == {
        "missing_session_id": 1, "empty_text": 1, "non_string_text": 1, "invalid_utf8": 2, "text_too_long": 1,
        "no_text": 1, "missing_label": 2, "non_string_label": 1, "invalid_reviewed_at": 1,
    }
    assert result.dataset["label"].tolist() == ["billing_issue"]
    assert {s["reason"] for s in result.quarantine_samples} == set(k for k, v in result.quarantined.items() if v)
    c = result.counts
    assert c["inputs"] == c["accepted"] + c["quarantined"] + c["superseded"] == len(reviews)


def test_review_without_text_takes_the_classification_text(store):
    store.insert_classifications([llm("s1", "billing", method="ml_ensemble", text="the stored conversation")])
    store.insert_review(review("s1", "billing", text=None))
    assert gate_from_store(store, has_model=True).dataset["text"].tolist() == ["the stored conversation"]


def test_label_normalisation_never_creates_a_new_class():
    assert normalise_label(" Billing  Issue") == ("billing_issue", None)
    assert normalise_label("BILLING\tissue ")[0] == normalise_label("billing issue")[0]
    assert normalise_label("\u3000")[1] == "missing_label"


def test_content_hash_depends_on_content_only():
    a = run_gate([review("s1", "x"), review("s2", "y")], [], {}, "retrain")
    b = run_gate([review("s2", "y"), review("s1", "x")], [], {}, "retrain")
    c = run_gate([review("s1", "x"), review("s2", "z")], [], {}, "retrain")
    assert a.content_hash == b.content_hash == content_hash(a.dataset) != c.content_hash


def test_the_reviews_cursor_is_the_last_review_received_among_those_read(store):
    """What a decided training consumes: every review it read, by the order the store received them;
    a string-dated review it trained on used to be left out of the cursor (and never counted)."""
    store.insert_review(review("s1", "billing", minutes=10))
    store.insert_review(review("s2", "billing", minutes=-600))  # imported late, dated earlier
    store.insert_review({**review("s3", "shipping"), "reviewed_at": "2026-03-01T11:00:00"})
    result = gate_from_store(store, has_model=True)
    assert sorted(result.dataset["session_id"]) == ["s1", "s2", "s3"]
    last = store.reviews_after(None)[-1]
    assert last["session_id"] == "s3" and ReviewCursor.parse(result.reviews_cursor) == ReviewCursor.of(last) == ReviewCursor(seq=3)


def test_only_unflagged_drops_the_labels_the_audit_doubts(store):
    # Issue #28's loop: dropping the audit's doubts starved the rare class (22 rows -> 4) in the random arm.
    store.insert_classifications([
        llm("s1", "billing"),
        llm("s2", "cancellation", needs_review=True, review_flagged_by="label_audit"),
        llm("s3", "cancellation", review_doubted=True),
        llm("s4", "cancellation", needs_review=True),  # flagged before the audit (the LLM pipeline): never trusted
    ])
    store.insert_review(review("r1", "billing"))
    kept = set(gate_from_store(store, has_model=True, retrain=RetrainData("switch")).dataset["session_id"])
    assert kept == {"r1", "s1", "s2", "s3"}
    # The default ('reviews') tops a short class up from the same trusted labels: the doubted ones included.
    topped = gate_from_store(store, has_model=True, min_rows_per_class=2).dataset
    assert set(topped["session_id"]) == {"r1", "s1", "s2", "s3"}
    confident = set(gate_from_store(store, has_model=True, retrain=RetrainData("unflagged")).dataset["session_id"])
    assert confident == {"r1", "s1"}
    assert set(gate_from_store(store, has_model=False).dataset["session_id"]) == {"r1", "s1"}  # a first training: the plain rule
