"""Integrated Gradients on a tiny fold ensemble: completeness, adaptive steps, words, report."""

import re

import pytest
import torch

from legolas_ml.evaluation.cross_validation import run_cross_validation
from legolas_ml.evaluation.ensemble import FoldEnsemble
from legolas_ml.explain.attributions import (
    EnsembleExplainer,
    IGSettings,
    baseline_ids,
    relative_completeness_error,
    select_texts,
    summarise,
    top_words,
)
from legolas_ml.explain.report import render_html, write_report
from synthetic import separable_frame, tiny_config


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    result = run_cross_validation(separable_frame(40), tiny_config(n_folds=2, epochs=4), tmp_path_factory.mktemp("xai"), log=lambda s: None)
    return FoldEnsemble([f["checkpoint_path"] for f in result["folds"]], device="cpu", precision="fp32")


def test_completeness_holds_for_the_ensemble(ensemble):
    explainer = EnsembleExplainer(ensemble, IGSettings(start_steps=64, max_steps=512, tolerance=0.02))
    e = explainer.explain("please refund the invoice charge on my card today", "billing")
    probs = ensemble.predict_proba([e.text])[0]
    assert e.probability == pytest.approx(float(probs.max()), abs=1e-5)  # F is the ensemble's probability
    assert e.converged and e.completeness_error < 0.02
    assert sum(e.token_attributions) == pytest.approx(e.delta, rel=0.02, abs=1e-4)


def test_adaptive_loop_raises_steps_when_it_must(ensemble):
    text = "my parcel delivery is late and the courier tracking shows the package shipped"
    loose = EnsembleExplainer(ensemble, IGSettings(start_steps=2, max_steps=1024, tolerance=0.5)).explain(text)
    strict = EnsembleExplainer(ensemble, IGSettings(start_steps=2, max_steps=1024, tolerance=0.005)).explain(text)
    assert strict.steps > loose.steps
    assert strict.completeness_error <= 0.005 or strict.steps == 1024
    capped = EnsembleExplainer(ensemble, IGSettings(start_steps=2, max_steps=4, tolerance=1e-9)).explain(text)
    assert capped.steps == 4 and not capped.converged  # reported honestly when the maximum is reached


def test_words_keep_every_occurrence(ensemble):
    e = EnsembleExplainer(ensemble).explain("refund refund unrecognisably refund")
    assert e.words == ["refund", "refund", "unrecognisably", "refund"]
    # "unrecognisably" splits into several wordpieces whose attributions are summed into one word.
    assert len(e.tokens) > len(e.words) + 2
    assert sum(e.word_attributions) == pytest.approx(sum(e.token_attributions[1:-1]), abs=1e-9)
    ranked = top_words([e])
    assert ranked[e.predicted][0]["count"] in (1, 3) and {r["word"] for r in ranked[e.predicted]} == {"refund", "unrecognisably"}


def test_baseline_keeps_only_cls_and_sep():
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert baseline_ids(ids, {101, 102}, 0).tolist() == [[101, 0, 0, 102]]
    assert relative_completeness_error(1e-9, 0.3) is None  # near-zero denominator is reported as such
    assert relative_completeness_error(0.5, 0.45) == pytest.approx(0.1)


def test_baseline_replaces_unknown_words_too(ensemble):
    """[UNK] and [MASK] stand for words of the text: the baseline must replace them like any word."""
    tokenizer = ensemble.tokenizer
    explainer = EnsembleExplainer(ensemble)
    assert explainer.special_ids == {tokenizer.cls_token_id, tokenizer.sep_token_id}
    ids = torch.tensor([[tokenizer.cls_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id, 2088, tokenizer.sep_token_id]])
    baseline = baseline_ids(ids, explainer.special_ids, explainer.pad_id)
    assert baseline.tolist() == [[tokenizer.cls_token_id, explainer.pad_id, explainer.pad_id, explainer.pad_id, tokenizer.sep_token_id]]


def test_selection_is_stratified_and_puts_mistakes_first():
    ids = [f"s{i}" for i in range(12)]
    y_true = ["a"] * 6 + ["b"] * 6
    y_pred = ["a"] * 5 + ["b"] + ["b"] * 6
    chosen = select_texts(ids, y_true, y_pred, per_class=2)
    assert 5 in chosen  # the misclassified one
    assert {y_pred[i] for i in chosen} == {"a", "b"} and len(chosen) == 4


def test_html_report_is_self_contained(ensemble, tmp_path):
    explainer = EnsembleExplainer(ensemble)
    explanations = [explainer.explain(t, "billing") for t in ["refund my charge <script>alert(1)</script>", "the parcel is late"]]
    summary = summarise(explanations)
    paths = write_report(explanations, summary, tmp_path, "test report")
    html = paths["html"].read_text()
    assert "<script" not in html and "&lt;" in html  # the text is escaped, never markup
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", html.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    assert "<svg" in html and "converged" in html
    assert paths["json"].exists() and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert render_html(explanations, summary, "t").count("<h3>#") == 2
