"""The loop: incremental scoring, out-of-fold label audit, flags, and the review queue round trip."""

from __future__ import annotations

import csv
import hashlib
import json
import time

import numpy as np
import pytest
from pymongo.errors import AutoReconnect

from legolas_ml.cli import main
from legolas_ml.data.demo_data import generate_demo_data
from legolas_ml.data.splits import Fold, SplitPlan
from legolas_ml.data.store import open_tenant_store
from legolas_ml.evaluation.ensemble import FoldEnsemble
from legolas_ml.review.calibration import apply_temperature, expected_calibration_error, fit_calibration, fit_temperature
from legolas_ml.review.audit import AuditSettings, audit_labels, normalised_entropy, plan_queue
from legolas_ml.core.choices import REASONS
from legolas_ml.review.label_audit import FLAG_FIELDS, run_label_audit
from legolas_ml.review.novelty import NoveltyModel, embed_texts
from legolas_ml.review.out_of_fold import out_of_fold_probabilities, validation_fold_of
from legolas_ml.review.queue import interleave, queue_record, queue_size, review_queue, write_queue
from legolas_ml.scoring.predictions import SCORE_FIELDS, score_documents
from legolas_ml.training.checkpoint import save_checkpoint
from legolas_ml.training.modeling import build_model
from synthetic import tiny_config

CLASSES = ["account_access", "billing", "cancellation", "shipping", "technical_issue"]
TENANT = "acme"


def fake_predict(texts):
    """Deterministic probabilities from the text alone: a stand-in ensemble, fast and reproducible."""
    rows = []
    for text in texts:
        digest = hashlib.sha256(text.encode()).digest()
        logits = np.array([digest[i] / 32.0 for i in range(len(CLASSES))])
        if "charged" in text or "invoice" in text:
            logits[CLASSES.index("billing")] += 6.0
        p = np.exp(logits - logits.max())
        rows.append(p / p.sum())
    return np.array(rows)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    docs, reviews = generate_demo_data(120, 30, seed=5)
    with open_tenant_store(None, tmp_path, "legolas", TENANT) as store:
        store.insert_classifications(docs)
        for review in reviews:
            store.insert_review(review)
    return tmp_path


def _docs(home):
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        return {d["session_id"]: {k: v for k, v in d.items() if k != "_id"} for d in store.classifications.find({"tenant": TENANT})}


def _reviewed(home):
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        return store.reviewed_session_ids()


def _score(home, version="v1", predict=fake_predict, store_wrapper=None, **kwargs):
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        target = store_wrapper(store) if store_wrapper else store
        return score_documents(target, predict, CLASSES, version, log=lambda line: None, **kwargs)


# --- scoring ---------------------------------------------------------------------------------

def test_scoring_fills_unreviewed_documents_only_and_a_rerun_is_a_no_op(home):
    before = _docs(home)
    reviewed = _reviewed(home)
    assert reviewed, "the demo tenant has reviewed sessions"
    report = _score(home, batch_size=16)
    after = _docs(home)
    scorable = [s for s, d in before.items() if s not in reviewed and isinstance(d["text"], str) and d["text"].strip()]
    assert report.scored == len(scorable) and report.coverage == 1.0
    for sid, doc in after.items():
        if sid in scorable:
            assert set(SCORE_FIELDS) <= set(doc)
            assert doc["ml_prediction"] == max(doc["ml_probabilities"], key=doc["ml_probabilities"].get)
            # The LLM's own fields and the review flag are never touched.
            for key in ("llm_prediction", "llm_confidence", "needs_review", "classification_method", "text"):
                assert doc.get(key) == before[sid].get(key)
        else:
            assert doc == before[sid], f"{sid} (reviewed or without text) was changed"
    again = _score(home, batch_size=16)
    assert again.scored == 0 and again.up_to_date == len(scorable)
    assert _docs(home) == after  # not even ml_scored_at moved


def test_changed_text_and_new_model_are_rescored(home):
    _score(home)
    docs = _docs(home)
    sid = next(s for s, d in docs.items() if "ml_prediction" in d)
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        store.classifications.update_one({"tenant": TENANT, "session_id": sid}, {"$set": {"text": "I was charged twice, the invoice is wrong"}})
    report = _score(home)
    assert report.scored == 1 and report.to_score == {"text_changed": 1}
    assert _docs(home)[sid]["ml_prediction"] == "billing"
    report = _score(home, version="v2")
    assert report.to_score == {"model_changed": report.scored} and report.scored == len([d for d in _docs(home).values() if "ml_prediction" in d])


class FlakyCollection:
    """A collection whose ``update_one`` fails like a lost connection after ``ok`` successful calls."""

    def __init__(self, inner, ok):
        self.inner, self.ok = inner, ok

    def update_one(self, *args, **kwargs):
        if self.ok <= 0:
            raise AutoReconnect("connection lost (test)")
        self.ok -= 1
        return self.inner.update_one(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _flaky(ok):
    def wrap(store):
        store.classifications = FlakyCollection(store.classifications, ok)
        return store

    return wrap


def test_store_outage_mid_write_leaves_whole_documents_and_the_rerun_finishes(home):
    with pytest.raises(AutoReconnect):
        _score(home, batch_size=8, store_wrapper=_flaky(21))
    docs = _docs(home)
    written = [d for d in docs.values() if "ml_model_version" in d]
    assert len(written) == 21
    for doc in docs.values():
        present = [k for k in SCORE_FIELDS if k in doc]
        assert present in ([], list(SCORE_FIELDS)), f"half-written document: {present}"
    report = _score(home, batch_size=8)
    assert report.up_to_date == 21 and report.coverage == 1.0
    assert _score(home).scored == 0


def test_a_review_imported_while_a_batch_is_scored_wins(home):
    target = {}
    with open_tenant_store(None, home, "legolas", TENANT) as store:

        def predict_and_review(texts):
            if not target:  # a reviewer labels the first document of the first batch while it is scored
                doc = store.classifications.find_one({"tenant": TENANT, "text": texts[0]})
                target["sid"] = doc["session_id"]
                store.insert_review({"session_id": doc["session_id"], "label": "billing", "reviewed_at": "2026-03-01T00:00:00"})
            return fake_predict(texts)

        report = score_documents(store, predict_and_review, CLASSES, "v1", batch_size=8, log=lambda line: None)
    assert report.reviewed_meanwhile == 1 and report.coverage == 1.0
    assert "ml_prediction" not in _docs(home)[target["sid"]]


# --- out-of-fold probabilities ---------------------------------------------------------------

def _tiny_folds(tmp_path, k=3):
    config = tiny_config(max_length=32)
    paths = []
    for fold in range(k):
        model = build_model(tiny_config(seed=100 + fold), CLASSES)
        sidecar = {"epoch": 0, "metrics": {}, "labels": CLASSES, "model_config": model.config.to_dict(),
                   "training_config": config.to_dict(), "fold": fold}
        paths.append(save_checkpoint(tmp_path / f"fold{fold}.safetensors", model.state_dict(), sidecar))
    return paths


def test_out_of_fold_probabilities_come_from_the_fold_that_validated_the_session(tmp_path):
    paths = _tiny_folds(tmp_path)
    ids = [f"s{i:02d}" for i in range(12)]
    folds = [Fold(k, train_ids=[s for j, s in enumerate(ids[:9]) if j % 3 != k], val_ids=[s for j, s in enumerate(ids[:9]) if j % 3 == k]) for k in range(3)]
    plan = SplitPlan(test_ids=ids[9:], folds=folds, seed=0, kfold=True)
    texts = {s: f"conversation {s} about an invoice and a parcel" for s in ids}
    oof = out_of_fold_probabilities(paths, plan, texts, CLASSES, device="cpu")
    assert sorted(oof) == sorted(ids[:9])  # the test split is not out-of-fold for any model
    singles = [FoldEnsemble([p], device="cpu", precision="fp32") for p in paths]
    for sid, probs in oof.items():
        k = validation_fold_of(plan)[sid]
        assert sid in plan.folds[k].val_ids and sid not in plan.folds[k].train_ids
        own = singles[k].predict_proba([texts[sid]])[0]
        np.testing.assert_allclose(probs, own, atol=1e-6)
        for other in set(range(3)) - {k}:  # every other fold trained on this session
            assert not np.allclose(probs, singles[other].predict_proba([texts[sid]])[0], atol=1e-4)


# --- the audit ---------------------------------------------------------------------------------

def test_audit_reasons_follow_the_rules():
    classes = ["a", "b", "c"]
    probs = np.array([
        [0.96, 0.02, 0.02],  # agrees, confident: not flagged
        [0.02, 0.96, 0.02],  # confident in b, LLM said a: issue + disagreement
        [0.40, 0.35, 0.25],  # agrees, but unsure and spread: low confidence + high entropy
        [0.90, 0.05, 0.05],  # LLM used a class the model does not know
    ] + [[0.95, 0.03, 0.02]] * 8 + [[0.03, 0.95, 0.02]] * 8 + [[0.02, 0.03, 0.95]] * 8)
    given = ["a", "a", "a", "zzz"] + ["a"] * 8 + ["b"] * 8 + ["c"] * 8
    result = audit_labels(given, probs, classes, AuditSettings())
    assert result.reasons[0] == []
    assert result.reasons[1] == ["label_issue", "disagreement"]
    # By default low confidence and entropy only order (their precision is below the base rate):
    # computed and recorded as signals, never a flag on their own.
    assert result.reasons[2] == [] and result.signals[2] == ["low_confidence", "high_entropy"]
    assert result.reasons[3] == ["label_not_in_model"]
    assert result.per_signal["low_confidence"] >= 1 and "low_confidence" not in result.per_reason
    every = audit_labels(given, probs, classes, AuditSettings(flag_reasons=REASONS))
    assert every.reasons[2] == ["low_confidence", "high_entropy"]
    assert result.priority[1] > result.priority[2] > result.priority[0]
    assert set(result.noise_rate) == {"a", "b", "c"} and 0 <= result.noise_rate["a"] <= 1
    only = audit_labels(given, probs, classes, AuditSettings(reasons=("disagreement",)))
    assert only.reasons[1] == ["disagreement"] and only.reasons[2] == []
    assert normalised_entropy(np.array([[1 / 3] * 3]))[0] == pytest.approx(1.0)


def test_temperature_recovers_the_miscalibration():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(2000, 4))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(4, p=p) for p in calibrated])
    shy = apply_temperature(calibrated, 2.5)  # an under-confident model: every row flattened
    fitted = fit_temperature(shy, targets)
    assert fitted == pytest.approx(1 / 2.5, rel=0.1)
    np.testing.assert_allclose(apply_temperature(shy, fitted), calibrated, atol=0.05)
    assert (apply_temperature(shy, fitted).argmax(axis=1) == shy.argmax(axis=1)).all()  # ranking kept
    assert fit_temperature(shy[:5], targets[:5]) == 1.0  # too few rows: left as is


def test_audit_settings_name_the_bad_value():
    with pytest.raises(ValueError, match=r"review.min_confidence must be a number in \[0, 1\], got 1.5"):
        AuditSettings(min_confidence=1.5)
    with pytest.raises(ValueError, match=r"review.novelty_quantile must be a number in \(0, 1\], got 0"):
        AuditSettings(novelty_quantile=0)
    with pytest.raises(ValueError, match="unknown \\['vibes'\\]"):
        AuditSettings(reasons=("vibes",))
    with pytest.raises(ValueError, match=r"review.flag_reasons must be among \[.*\], got unknown \['vibes'\]"):
        AuditSettings(flag_reasons=("vibes",))
    with pytest.raises(ValueError, match=r"review.queue_size must be a whole number >= 1, got 0"):
        AuditSettings(queue_size=0)
    with pytest.raises(ValueError, match=r"review.random_share must be a number in \[0, 0.5\], got 0.6"):
        AuditSettings(random_share=0.6)


def test_novelty_flags_texts_far_from_the_training_data(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    training = centre + 0.05 * rng.normal(size=(200, 16))
    training /= np.linalg.norm(training, axis=1, keepdims=True)
    model = NoveltyModel.fit(training, quantile=0.99)
    near = centre + 0.05 * rng.normal(size=(20, 16))
    far = -centre + 0.05 * rng.normal(size=(5, 16))
    queries = np.vstack([near, far])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    novel = model.distance(queries) > model.threshold
    assert novel[20:].all() and novel[:20].mean() < 0.2
    emb = embed_texts(_tiny_folds(tmp_path, k=1)[0], ["hello there", "my parcel is late"], device="cpu")
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def _audit(home, version="v1", settings=AuditSettings(), **kwargs):
    manifest = {"version": version, "labels": CLASSES, "checkpoints": []}
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        return run_label_audit(store, manifest, plan=None, training=None, settings=settings, log=lambda line: None, **kwargs)


def test_audit_flags_never_reviewed_documents_and_a_rerun_changes_nothing(home):
    _score(home)
    # One document flagged earlier by someone else (the LLM pipeline): the audit never clears it.
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        reviewed = store.reviewed_session_ids()
        external = sorted(set(_docs(home)) - reviewed)[0]
        store.classifications.update_one({"tenant": TENANT, "session_id": external}, {"$set": {"needs_review": True}})
    before = _docs(home)
    report, result = _audit(home)
    after = _docs(home)
    assert report.audited > 0 and report.flagged > 0 and report.updated > 0
    for sid in reviewed & set(after):
        assert after[sid] == before[sid], f"reviewed document {sid} was changed"
    flagged = {s for s, d in after.items() if d.get("review_flagged_by") == "label_audit"}
    assert flagged and all(after[s]["needs_review"] is True and after[s]["review_reason"] for s in flagged)
    sampled = {s for s in flagged if after[s].get("review_sample") == "random"}  # they stay until reviewed
    again, _ = _audit(home)
    assert again.updated == 0 and _docs(home) == after
    # A reviewer answers one flagged document: the next audit takes the loop's flag off it.
    answered = sorted(flagged - {external})[0]
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        store.insert_review({"session_id": answered, "label": "billing", "reviewed_at": "2026-03-01T00:00:00"})
    resolved, _ = _audit(home)
    assert resolved.cleared_after_review == 1 and resolved.updated == 0
    assert _docs(home)[answered]["needs_review"] is False and "review_reason" not in _docs(home)[answered]
    assert _audit(home)[0].cleared_after_review == 0
    flagged -= {answered} | sampled
    # A new model that agrees with every LLM label: the audit's own flags are cleared, the external one stays.
    def agreeing(texts):
        with open_tenant_store(None, home, "legolas", TENANT) as store:
            label_of = {d["text"]: d["llm_prediction"] for d in store.classifications.find({"tenant": TENANT})}
        return np.array([[0.99 if c == label_of[t] else 0.0025 for c in CLASSES] for t in texts])

    _score(home, version="v2", predict=agreeing)
    cleared, _ = _audit(home, version="v2")
    final = _docs(home)
    assert cleared.unflagged >= len(flagged - {external}) > 0
    assert all(final[s]["needs_review"] is False and "review_reason" not in final[s] for s in flagged - {external})
    assert final[external]["needs_review"] is True and "review_reason" not in final[external]
    assert not [k for k in FLAG_FIELDS[1:] if k in final[external] and k != "review_flagged_by"]


# --- the queue round trip ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_exported_queue_round_trips_through_import_reviews(home, fmt, capsys):
    _score(home)
    _audit(home)
    path = home / f"queue.{fmt}"
    assert main(["review-queue", "--tenant", TENANT, "--format", fmt, "--output", str(path)]) == 0
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        queue = review_queue(store)
    ranked = [r["review_priority"] for r in queue if r["review_priority"] is not None and r["review_reason"] != ["random_sample"]]
    assert queue and ranked == sorted(ranked, reverse=True)  # the random samples are spread through it, not ranked
    assert all(len(r["ensemble_top3"]) == 3 for r in queue if r["review_reason"] != ["flagged_before_audit"])
    # The reviewer labels the first three entries and leaves the rest empty.
    if fmt == "jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle))
    _label_rows(path, fmt, records, slice(0, 3), "shipping")
    assert [r["session_id"] for r in records] == [r["session_id"] for r in queue]
    assert main(["import-reviews", str(path), "--tenant", TENANT]) == 0
    out = capsys.readouterr().out
    assert "3 reviews imported" in out and f"{len(records) - 3} left unlabelled" in out and "0 rejected" in out
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        labelled = {r["session_id"] for r in records[:3]}
        stored = list(store.reviews.find({"tenant": TENANT, "session_id": {"$in": sorted(labelled)}, "label": "shipping"}))
        assert {r["session_id"] for r in stored} == labelled
        remaining = {r["session_id"] for r in review_queue(store)}
    assert not labelled & remaining and len(remaining) == len(queue) - 3  # reviewed documents leave the queue
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        assert queue_size(store) == len(remaining)
    assert not any("text" in r for r in stored)  # the conversation is context, never a review's training text
    time.sleep(1.1)  # a later import time: the second import must recognise the reviews, not their timestamp
    assert main(["import-reviews", str(path), "--tenant", TENANT]) == 0  # same file again: nothing twice
    assert "0 reviews imported, 3 already present" in capsys.readouterr().out
    # Labelled in a second sitting: the next two rows are new reviews, the first three stay single.
    _label_rows(path, fmt, records, slice(3, 5), "billing")
    assert main(["import-reviews", str(path), "--tenant", TENANT]) == 0
    assert "2 reviews imported, 3 already present" in capsys.readouterr().out
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        assert store.reviews.count_documents({"tenant": TENANT, "session_id": {"$in": [r["session_id"] for r in records[:5]]}}) == 5


def _label_rows(path, fmt, records, rows, label):
    for record in records[rows]:
        record["label"] = label
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def test_csv_queue_cells_are_never_spreadsheet_formulas():
    import io

    record = {"session_id": "s1", "label": None, "reviewed_at": None, "reviewer": None, "notes": None,
              "conversation": "=HYPERLINK(\"http://evil\")", "llm_label": "@billing", "llm_confidence": 0.5,
              "ensemble_top3": [], "review_reason": ["disagreement"], "review_priority": 0.9}
    out = io.StringIO()
    write_queue([record], out, "csv")
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["conversation"] == "'=HYPERLINK(\"http://evil\")" and row["llm_label"] == "'@billing"


def test_audit_uses_the_validating_folds_probabilities_for_training_sessions(tmp_path, monkeypatch):
    import pandas as pd

    paths = _tiny_folds(tmp_path)
    ids = [f"s{i:02d}" for i in range(30)]
    labels = [CLASSES[i % 3] for i in range(30)]
    pool = ids[:24]
    folds = [Fold(k, train_ids=[s for j, s in enumerate(pool) if j % 3 != k], val_ids=[s for j, s in enumerate(pool) if j % 3 == k]) for k in range(3)]
    plan = SplitPlan(test_ids=ids[24:], folds=folds, seed=0, kfold=True)
    texts = {s: f"conversation {s} about an invoice and a parcel number {i}" for i, s in enumerate(ids)}
    training = pd.DataFrame({"session_id": ids, "text": [texts[s] for s in ids], "label": labels})
    with open_tenant_store(None, tmp_path, "legolas", TENANT) as store:
        store.insert_classifications([{"session_id": s, "text": texts[s], "llm_prediction": lab, "classification_method": "llm"} for s, lab in zip(ids, labels)]
                                     + [{"session_id": "new-1", "text": "a brand new conversation", "llm_prediction": "billing", "classification_method": "llm"}])
        score_documents(store, fake_predict, CLASSES, "v1", log=lambda line: None)
        manifest = {"version": "v1", "labels": CLASSES, "checkpoints": [str(p) for p in paths]}
        report, result = run_label_audit(store, manifest, plan=plan, training=training, device="cpu", write=False, log=lambda line: None)
    assert report.out_of_fold == 24 and report.calibration_rows == 24
    row_of = {sid: i for i, sid in enumerate(result.session_ids)}
    fold_of = validation_fold_of(plan)
    for sid in pool:
        own = FoldEnsemble([paths[fold_of[sid]]], device="cpu", precision="fp32").predict_proba([texts[sid]])
        np.testing.assert_allclose(result.probabilities[row_of[sid]], apply_temperature(own, report.temperature)[0], atol=1e-5)
    for sid in [*ids[24:], "new-1"]:  # never validated by a fold: the ensemble's stored row, its own temperature
        np.testing.assert_allclose(result.probabilities[row_of[sid]], apply_temperature(fake_predict([texts.get(sid, "a brand new conversation")]), report.ensemble_temperature)[0], atol=1e-5)


def test_review_queue_rejects_a_bad_limit_and_format(home, capsys):
    with pytest.raises(SystemExit):
        main(["review-queue", "--tenant", TENANT, "--limit", "0"])
    assert "must be a whole number >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"format must be one of \['jsonl', 'csv'\], got 'xml'"):
        write_queue([], None, "xml")


def test_the_loop_assets_wait_for_a_model_in_service(tmp_path):
    """A tenant whose first candidate was not promoted: both assets say so and write nothing."""
    from dagster import DagsterInstance, materialize

    from dagster_helpers import DEMO, resources
    from legolas_assets.loop import build_ensemble_predictions, build_label_audit

    ensemble_predictions, label_audit = build_ensemble_predictions(DEMO), build_label_audit(DEMO)

    docs, _ = generate_demo_data(60, 0, seed=1)
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        store.insert_classifications(docs)
    result = materialize([ensemble_predictions, label_audit], resources=resources(tmp_path), instance=DagsterInstance.ephemeral())
    for mat in result.get_asset_materialization_events():
        assert mat.materialization.metadata["model_version"].value == "none"
        assert "has no model in service yet" in mat.materialization.metadata["reason"].value
    assert all(c.passed for c in result.get_asset_check_evaluations())
    with open_tenant_store(None, tmp_path, "legolas", "demo") as store:
        assert store.classifications.count_documents({"tenant": "demo", "ml_model_version": {"$exists": True}}) == 0


# --- the queue: budget, random slice, calibration report, the probabilities shown ---------------

def test_queue_budget_keeps_the_highest_priorities_and_counts_external_flags():
    ids = [f"s{i:02d}" for i in range(40)]
    reasons = [["disagreement"] if i < 30 else [] for i in range(40)]
    priority = np.linspace(0.99, 0.01, 40)  # s00 first
    external = np.zeros(40, dtype=bool)
    external[29] = True  # flagged by the LLM pipeline, the lowest priority of the flagged: kept anyway
    settings = AuditSettings(queue_size=10, random_share=0.2)
    plan = plan_queue(ids, reasons, priority, external=external, sampled=np.zeros(40, dtype=bool),
                      external_elsewhere=1, settings=settings, key="v1")
    assert (plan.random_part, plan.flagged_part, plan.external) == (2, 8, 2)
    kept = [i for i in range(40) if plan.reasons[i] == ["disagreement"]]
    assert kept == [0, 1, 2, 3, 4, 5, 29]  # 8 places minus the 2 external flags, by priority; the external one stays
    assert plan.cut == 29 - 6 and plan.wanted == 30
    assert int(plan.queued.sum()) + 1 <= settings.queue_size  # + the external flag on a document not audited
    assert "6 of 29 rule flags" in plan.reason and "23 cut" in plan.reason


def test_audit_writes_no_more_flags_than_the_budget(home):
    _score(home)
    report, result = _audit(home, settings=AuditSettings(queue_size=12, random_share=0.25))
    docs = _docs(home)
    queued = {s for s, d in docs.items() if d.get("review_flagged_by") == "label_audit" and d.get("needs_review")}
    assert len(queued) == report.flagged <= 12 and report.random_sampled == 3
    assert report.flagged_by_rules > 9 and report.cut_by_budget == report.flagged_by_rules - 9
    by_rules = {s for s in queued if docs[s]["review_reason"] != ["random_sample"]}
    row = {sid: i for i, sid in enumerate(result.session_ids)}
    cut = [s for s in result.session_ids if result.reasons[row[s]] and s not in by_rules]
    assert len(by_rules) == 9 and min(docs[s]["review_priority"] for s in by_rules) >= max(result.priority[row[s]] for s in cut)
    # The labels the rules doubt but the budget left out are not trusted for training either.
    doubted = {s for s, d in docs.items() if d.get("review_doubted") is True}
    assert doubted == set(cut) - queued and doubted
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        trusted = {d["session_id"] for d in store.trusted_llm_classifications()}
    assert not trusted & (doubted | queued)
    # A review answers a doubt as it answers a flag: the next audit removes the mark.
    answered = sorted(doubted)[0]
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        store.insert_review({"session_id": answered, "label": "billing", "reviewed_at": "2027-01-01T00:00:00Z", "reviewer": "qa"})
    _audit(home, settings=AuditSettings(queue_size=12, random_share=0.25))
    assert "review_doubted" not in _docs(home)[answered]
    doubted.discard(answered)
    # A larger budget takes them into the queue: the doubt mark goes, the flag takes over.
    _audit(home, settings=AuditSettings(queue_size=200, random_share=0.0))
    docs = _docs(home)
    assert not any(d.get("review_doubted") for d in docs.values())
    assert all(docs[s]["needs_review"] is True for s in doubted)


def test_random_slice_is_drawn_kept_after_the_review_and_spread_through_the_export(home):
    _score(home)
    settings = AuditSettings(queue_size=30, random_share=0.1)
    report, result = _audit(home, settings=settings)
    docs = _docs(home)
    sampled = {s for s, d in docs.items() if d.get("review_sample") == "random"}
    assert len(sampled) == report.random_sampled == 3  # ceil(30 * 0.1)
    row = {sid: i for i, sid in enumerate(result.session_ids)}
    for sid in sampled:  # unreviewed, audited, and not what the rules flag: the rest of the service
        assert docs[sid]["review_reason"] == ["random_sample"] and docs[sid]["needs_review"] is True
        assert not result.reasons[row[sid]] or result.queue.cut
    assert _audit(home, settings=settings)[0].updated == 0  # one champion, one sample
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        queue = review_queue(store)
        assert store.random_sample_ids() == sampled
    # Every prefix holds the queue's share of random samples: positions 10, 20, 30 of 30.
    positions = [i for i, r in enumerate(queue, 1) if r["review_reason"] == ["random_sample"]]
    assert len(queue) == 30 and positions == [10, 20, 30]
    assert interleave(list("abcdefgh"), ["X", "Y"]) == list("abcdXefghY")
    # A reviewer answers one sample: its flag goes, its mark stays (the lifecycle reads it), the other
    # samples stay and one more is drawn to keep the random part full.
    answered = sorted(sampled)[0]
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        store.insert_review({"session_id": answered, "label": "billing", "reviewed_at": "2026-03-01T00:00:00"})
    again, _ = _audit(home, settings=settings)
    after = _docs(home)
    assert again.cleared_after_review == 1 and after[answered]["review_sample"] == "random"
    assert "review_reason" not in after[answered] and after[answered]["needs_review"] is False
    still = {s for s, d in after.items() if d.get("review_sample") == "random" and s != answered}
    assert sampled - {answered} <= still and len(still) == 3  # the earlier samples stay, one drawn
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        assert answered in store.random_sample_ids() and answered in store.reviewed_session_ids()
    # A smaller random part takes samples out before any review: they stop being samples.
    smaller, _ = _audit(home, settings=AuditSettings(queue_size=30, random_share=0.0))
    assert smaller.random_sampled == 0
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        assert store.random_sample_ids() == {answered}


def test_calibration_reports_its_bound_and_its_error_before_and_after():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(2000, 4))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(4, p=p) for p in calibrated])
    fit = fit_calibration(apply_temperature(calibrated, 2.5), targets)
    assert fit.at_bound is None and fit.rows == 2000 and fit.ece_after < 0.03 < 0.1 < fit.ece_before
    # So flat that the NLL wants T below 0.05: reported at the lower bound, still mis-calibrated.
    flat = fit_calibration(apply_temperature(calibrated, 200.0), targets)
    assert flat.temperature == pytest.approx(0.05, rel=0.01) and flat.at_bound == "lower"
    # Confidently wrong: the NLL wants the flattest rows it can get.
    wrong = fit_calibration(calibrated, calibrated.argmin(axis=1))
    assert wrong.at_bound == "upper"
    # ECE by hand: ten rows at 0.8, five right -> |0.5 - 0.8| = 0.3; one bin.
    probs = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.3)


def test_the_export_shows_the_probabilities_the_audit_flagged_on(home, monkeypatch):
    import legolas_ml.review.label_audit as label_audit

    _score(home)
    # A calibration that sharpens the rows: what the rules see is no longer the stored ml_probabilities.
    monkeypatch.setattr(label_audit, "apply_temperature", lambda probs, t: apply_temperature(probs, 0.5) if len(probs) else probs)
    external = sorted(set(_docs(home)) - _reviewed(home))[0]
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        store.classifications.update_one({"tenant": TENANT, "session_id": external}, {"$set": {"needs_review": True, "text": "  "}})
    _, result = _audit(home)
    docs = _docs(home)
    row = {sid: i for i, sid in enumerate(result.session_ids)}
    with open_tenant_store(None, home, "legolas", TENANT) as store:
        queue = review_queue(store)
    shown = 0
    for record in queue:
        sid = record["session_id"]
        if sid == external:  # flagged by someone else and not audited (no text): the ensemble's scores
            assert "review_probabilities" not in docs[sid]
            assert record["ensemble_top3"][0]["probability"] == round(max(docs[sid]["ml_probabilities"].values()), 4)
            continue
        used = dict(zip(CLASSES, result.probabilities[row[sid]]))
        assert docs[sid]["review_probabilities"] == {c: round(float(p), 4) for c, p in used.items()}
        top = sorted(used.values(), reverse=True)[:3]
        assert [t["probability"] for t in record["ensemble_top3"]] == [round(float(p), 4) for p in top]
        assert all(round(float(used[t["class"]]), 4) == t["probability"] for t in record["ensemble_top3"])
        assert record["ensemble_top3"][0]["probability"] != round(max(docs[sid]["ml_probabilities"].values()), 4)
        shown += 1
    assert shown > 10
    fallback = queue_record({"session_id": "x", "ml_probabilities": {"a": 0.7, "b": 0.3}, "needs_review": True})
    assert fallback["ensemble_top3"][0] == {"class": "a", "probability": 0.7}
