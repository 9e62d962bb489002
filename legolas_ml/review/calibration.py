"""Temperature scaling: make the ensemble's probabilities mean what the audit's thresholds assume.

Focal loss and early-stopped training leave the fold models under-confident (on the demo, the
median top probability of a 0.85-balanced-accuracy ensemble is about 0.41), so fixed thresholds
such as "top probability below 0.7" would flag every document. One temperature ``T`` is fitted on
the out-of-fold probabilities of the training sessions against their training labels, minimising
the negative log-likelihood (Guo et al., 2017, "On Calibration of Modern Neural Networks")::

    p_T(c | x) = softmax(log p(c | x) / T)

``T < 1`` sharpens, ``T > 1`` flattens; the ranking of classes within a row never changes.

``fit_calibration`` also says how well it worked: whether ``T`` ended on a bound of its search
interval (then the NLL wanted a more extreme temperature, and the calibrated rows are still
miscalibrated in that direction), and the expected calibration error (ECE, Naeini et al., 2015;
10 equal-width bins on the top probability) of the rows it was fitted on, before and after::

    ECE = sum_b |B_b| / n * |accuracy(B_b) - mean top probability(B_b)|
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

#: Fewer labelled out-of-fold rows than this leave the probabilities as they are (T = 1).
MIN_CALIBRATION_ROWS = 20
#: The search interval of ``T``: a fit within 1% of either end is reported as at that bound.
TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 10
_EPS = 1e-12


@dataclass(frozen=True)
class TemperatureFit:
    """One fitted temperature and how well it calibrates the rows it was fitted on.

    ``at_bound`` is ``"lower"`` or ``"upper"`` when ``T`` sits on that end of
    ``TEMPERATURE_BOUNDS`` (the optimum lies beyond it), else ``None``. The ECEs are ``None``
    when there were no rows.
    """

    temperature: float = 1.0
    rows: int = 0
    at_bound: str | None = None
    ece_before: float | None = None
    ece_after: float | None = None


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` per row ``(n, n_classes)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.log(np.clip(probs, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of ``probs`` ``(n, n_classes)`` against ``targets`` (class indices), ``bins`` equal-width bins on the top probability.

    Returns 0.0 for no rows. A top probability of exactly 1 falls in the last bin.
    """
    if len(targets) == 0:
        return 0.0
    confidence = probs.max(axis=1)  # (n,)
    correct = probs.argmax(axis=1) == targets  # (n,)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in np.unique(which):
        members = which == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / len(targets))


def fit_calibration(probs: np.ndarray, targets: np.ndarray) -> TemperatureFit:
    """``fit_temperature`` plus whether ``T`` hit a bound and the ECE of these rows before and after ``T``."""
    if len(targets) == 0:
        return TemperatureFit()
    temperature = fit_temperature(probs, targets)
    low, high = TEMPERATURE_BOUNDS
    at_bound = "lower" if temperature <= low * 1.01 else "upper" if temperature >= high / 1.01 else None
    return TemperatureFit(
        temperature=temperature,
        rows=len(targets),
        at_bound=at_bound,
        ece_before=expected_calibration_error(probs, targets),
        ece_after=expected_calibration_error(apply_temperature(probs, temperature), targets),
    )


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature in ``TEMPERATURE_BOUNDS`` that minimises the NLL of ``targets`` (class indices) under ``probs``.

    Returns 1.0 when there are fewer than ``MIN_CALIBRATION_ROWS`` rows.
    """
    if len(targets) < MIN_CALIBRATION_ROWS:
        return 1.0
    log_p = np.log(np.clip(probs, _EPS, 1.0))
    rows = np.arange(len(targets))

    def nll(log_t: float) -> float:
        logits = log_p / np.exp(log_t)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float(-(logits[rows, targets] - log_norm).mean())

    best = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded")
    return float(np.exp(best.x))
