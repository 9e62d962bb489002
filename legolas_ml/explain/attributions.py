"""Integrated Gradients for the fold ensemble, with adaptive steps and word-level aggregation.

Integrated Gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks"):
``IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a(x - x'))/dx_i da``, here with respect to the
word-embedding output. Completeness: ``sum_i IG_i(x) = F(x) - F(x')``.

``F`` is the ensemble's probability of its predicted class, ``F = (1/K) sum_k softmax(f_k)_c``. Each
fold has its own embedding layer, so the ensemble's input is the K embeddings together, and the
straight path in that joint space moves every fold's embedding at once. Its gradient with respect
to fold k's embedding is that of ``softmax(f_k)_c / K`` alone, so the ensemble's IG is the sum of
the folds' IGs of ``softmax(f_k)_c / K``, computed one model at a time, and completeness holds for
the ensemble itself (``completeness_error`` checks it).

Quadrature is captum's ``riemann_trapezoid`` (Gauss-Legendre recomputes its nodes on the CPU on
every call), corrected: captum places n nodes 1/(n-1) apart on [0, 1] but weighs them 1/n (ends
halved), so its weights sum to (n-1)/n and every attribution comes out (n-1)/n too small, a
relative completeness error of ~1/n that no integrand can remove. All weights share that factor,
so scaling by n/(n-1) gives the true trapezoid rule, whose error falls as 1/n^2: measured on the
demo ensemble, 0.031 -> 0.0001 at 32 steps (``bench/ig_convergence.py``). Steps start small and
double until the relative completeness error is below the tolerance or the maximum is reached.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients

from legolas_ml.evaluation.ensemble import FoldEnsemble


@dataclass
class Explanation:
    """The attribution of one text, at token and word level, with its convergence record."""

    text: str
    predicted: str
    probability: float
    true_label: str | None
    tokens: list[str]
    token_attributions: list[float]
    words: list[str]  # every occurrence, in order (a repeated word appears once per occurrence)
    word_attributions: list[float]
    steps: int
    completeness_error: float | None  # relative; None when F(x) - F(baseline) is ~0 (near_zero_delta)
    converged: bool
    near_zero_delta: bool
    delta: float  # F(x) - F(baseline)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def structural_token_ids(tokenizer) -> set[int]:
    """The ids the IG baseline keeps: sequence markers ([CLS]/[SEP], <s>/</s>), nothing else.

    ``[UNK]`` and ``[MASK]`` are "special" to the tokenizer but stand for words of the text: keeping
    them in the baseline would give every unknown word an attribution of exactly zero.
    """
    ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return {int(i) for i in ids if i is not None} - {tokenizer.pad_token_id}


def baseline_ids(input_ids: torch.Tensor, special_ids: set[int], pad_id: int) -> torch.Tensor:
    """The same sequence with every token but the sequence markers replaced by [PAD] (``[UNK]`` included)."""
    keep = torch.tensor([[int(t) in special_ids for t in row] for row in input_ids.tolist()], dtype=torch.bool)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))


def relative_completeness_error(delta: float, attribution_sum: float, eps: float = 1e-6) -> float | None:
    """``|delta - sum(attr)| / |delta|``, or ``None`` when ``|delta| < eps`` (the ratio is meaningless)."""
    if abs(delta) < eps:
        return None
    return abs(delta - attribution_sum) / abs(delta)


@dataclass
class IGSettings:
    """Adaptive IG settings.

    Args:
        start_steps: steps of the first attempt (doubled until converged).
        max_steps: the most steps tried per text.
        tolerance: relative completeness error that counts as converged.
        internal_batch_size: interpolation steps evaluated per forward pass.
    """

    start_steps: int = 16
    max_steps: int = 512
    tolerance: float = 0.05
    internal_batch_size: int = 32
    method: str = "riemann_trapezoid"

    def __post_init__(self) -> None:
        if self.start_steps < 2 or self.max_steps < self.start_steps:
            raise ValueError(f"need 2 <= start_steps <= max_steps, got {self.start_steps} and {self.max_steps}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")


class EnsembleExplainer:
    """Explain a ``FoldEnsemble``'s predictions with adaptive Integrated Gradients.

    Example:
        >>> explainer = EnsembleExplainer(ensemble)                      # doctest: +SKIP
        >>> e = explainer.explain("my parcel never arrived")             # doctest: +SKIP
        >>> e.converged, e.words, e.word_attributions                    # doctest: +SKIP
    """

    def __init__(self, ensemble: FoldEnsemble, settings: IGSettings | None = None) -> None:
        self.ensemble = ensemble
        self.settings = settings or IGSettings()
        self.tokenizer = ensemble.tokenizer
        self.special_ids = structural_token_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id or 0
        # IG needs all folds for every step count it tries: keep them in memory while explaining.
        self.models = [m.float().eval() for m in ensemble.models()]

    def _probability(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = [torch.softmax(m(input_ids=input_ids, attention_mask=mask).logits.float(), -1) for m in self.models]
        return torch.stack(probs).mean(0)  # (batch, n_classes)

    def _attribute(self, input_ids, baseline, mask, target: int, n_steps: int) -> torch.Tensor:
        total = torch.zeros(input_ids.shape[1], dtype=torch.float64)
        k = len(self.models)
        for model in self.models:

            def forward(ids, attention_mask, model=model):
                return torch.softmax(model(input_ids=ids, attention_mask=attention_mask).logits.float(), -1) / k

            lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
            attr = lig.attribute(
                inputs=input_ids,
                baselines=baseline,
                target=target,
                additional_forward_args=(mask,),
                n_steps=n_steps,
                method=self.settings.method,
                internal_batch_size=self.settings.internal_batch_size,
            )  # (1, seq, hidden)
            total += attr.sum(-1)[0].double().cpu()
        if self.settings.method == "riemann_trapezoid":
            total *= n_steps / (n_steps - 1)  # captum's trapezoid weights sum to (n-1)/n: see module doc
        return total  # (seq,)

    def explain(self, text: str, true_label: str | None = None) -> Explanation:
        started = time.perf_counter()
        tokenizer = self.tokenizer
        tokenizer.truncation_side = self.ensemble.truncation_side
        enc = tokenizer(text, truncation=True, max_length=self.ensemble.max_length, return_tensors="pt")
        input_ids = enc["input_ids"].to(self.ensemble.device)  # (1, seq)
        mask = enc["attention_mask"].to(self.ensemble.device)
        baseline = baseline_ids(input_ids.cpu(), self.special_ids, self.pad_id).to(self.ensemble.device)
        probs = self._probability(input_ids, mask)[0]
        target = int(probs.argmax())
        delta = float(probs[target] - self._probability(baseline, mask)[0, target])
        steps, error, attributions = self.settings.start_steps, None, None
        while True:
            attributions = self._attribute(input_ids, baseline, mask, target, steps)
            error = relative_completeness_error(delta, float(attributions.sum()))
            if error is None or error < self.settings.tolerance or steps * 2 > self.settings.max_steps:
                break
            steps *= 2
        tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
        words, word_attr = _words(text, enc, attributions.tolist())
        return Explanation(
            text=text,
            predicted=self.ensemble.labels[target],
            probability=float(probs[target]),
            true_label=true_label,
            tokens=tokens,
            token_attributions=[float(a) for a in attributions],
            words=words,
            word_attributions=word_attr,
            steps=steps,
            completeness_error=error,
            # With F(x) ~ F(baseline) the relative error is meaningless; the absolute one must be tiny.
            converged=(error < self.settings.tolerance) if error is not None
            else abs(delta - float(attributions.sum())) < 1e-3,
            near_zero_delta=error is None,
            delta=delta,
            seconds=time.perf_counter() - started,
        )


def _words(text: str, encoding, token_attr: Sequence[float]) -> tuple[list[str], list[float]]:
    """Sum wordpiece attributions into words, keeping every occurrence in order."""
    sums: dict[int, float] = defaultdict(float)
    for position, word in enumerate(encoding.word_ids(0)):
        if word is not None:  # [CLS]/[SEP] belong to no word
            sums[word] += token_attr[position]
    words, values = [], []
    for word in sorted(sums):
        chars = encoding.word_to_chars(0, word)
        words.append(text[chars.start : chars.end] if chars is not None else f"<word {word}>")
        values.append(float(sums[word]))
    return words, values


def top_words(explanations: Sequence[Explanation], k: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Per predicted class, the ``k`` words with the largest mean |attribution|, with occurrence counts."""
    per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in explanations:
        for word, value in zip(e.words, e.word_attributions):
            key = word.lower()
            if key.strip() and any(ch.isalnum() for ch in key):
                per_class[e.predicted][key].append(value)
    out = {}
    for label, words in sorted(per_class.items()):
        ranked = sorted(
            ((w, float(np.mean(np.abs(v))), float(np.mean(v)), len(v)) for w, v in words.items()),
            key=lambda item: (-item[1], item[0]),
        )[:k]
        out[label] = [{"word": w, "mean_abs": m, "mean": s, "count": n} for w, m, s, n in ranked]
    return out


def select_texts(
    session_ids: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str], per_class: int = 3, seed: int = 0
) -> list[int]:
    """Indices of texts to explain: up to ``per_class`` per predicted class, about half misclassified.

    Mistakes are what a reviewer most wants explained, but a report of mistakes only hides what the
    ensemble gets right: up to ``ceil(per_class / 2)`` misclassified texts per class come first, and
    correct ones fill the rest (or more mistakes when there are too few correct ones).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in rng.permutation(len(session_ids)):
        by_class[y_pred[i]].append(int(i))
    chosen = []
    for label in sorted(by_class):
        wrong = [i for i in by_class[label] if y_true[i] != y_pred[i]]
        right = [i for i in by_class[label] if y_true[i] == y_pred[i]]
        take_wrong = min(len(wrong), max(-(-per_class // 2), per_class - len(right)))
        chosen.extend(wrong[:take_wrong] + right[: per_class - take_wrong])
    return sorted(chosen)


@dataclass
class ExplanationSummary:
    n_texts: int
    share_converged: float
    mean_steps: float
    seconds_per_text: float
    mean_completeness_error: float | None
    near_zero: int
    top_words: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def summarise(explanations: Sequence[Explanation], k: int = 10) -> ExplanationSummary:
    if not explanations:
        raise ValueError("nothing was explained: the selection of texts is empty")
    errors = [e.completeness_error for e in explanations if e.completeness_error is not None]
    return ExplanationSummary(
        n_texts=len(explanations),
        share_converged=sum(e.converged for e in explanations) / len(explanations),
        mean_steps=float(np.mean([e.steps for e in explanations])),
        seconds_per_text=float(np.mean([e.seconds for e in explanations])),
        mean_completeness_error=float(np.mean(errors)) if errors else None,
        near_zero=sum(e.near_zero_delta for e in explanations),
        top_words=top_words(explanations, k),
    )
