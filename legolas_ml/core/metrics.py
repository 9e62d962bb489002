"""Classification metrics for binary and multi-class string labels (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


#: A model must beat chance, 1/C, by this much: the promotion rule's first test and the chance checks'.
CHANCE_MARGIN = 0.05


def chance_threshold(n_classes: int, margin: float = CHANCE_MARGIN) -> float:
    """``1/C + margin``: the balanced accuracy a model of ``n_classes`` classes must exceed.

    Example:
        >>> round(chance_threshold(4), 2)
        0.3
    """
    return 1 / max(n_classes, 1) + margin


def classification_metrics(y_true: Sequence, y_pred: Sequence, classes: Sequence[str] | None = None) -> dict:
    """Accuracy, balanced accuracy, macro and weighted P/R/F1, a per-class report and the confusion matrix.

    Args:
        y_true: true labels (strings or ints).
        y_pred: predicted labels, same type as ``y_true``.
        classes: the label order of the report and the confusion matrix rows/columns; defaults to the
            sorted union of both label sets. Classes absent from the data score 0 without a warning.

    Returns:
        A JSON-serialisable dict: ``accuracy``, ``balanced_accuracy``, ``{precision,recall,f1}_{macro,weighted}``,
        ``per_class`` (precision, recall, f1, support per class), ``confusion_matrix`` (rows = true),
        ``classes`` and ``n``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on an empty set of predictions")
    labels = list(classes) if classes is not None else sorted(set(y_true) | set(y_pred))
    out: dict = {
        "n": len(y_true),
        "classes": [str(c) for c in labels],
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # sklearn warns when y_pred has classes absent from y_true; the score is still the mean recall.
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        out[f"precision_{average}"] = float(p)
        out[f"recall_{average}"] = float(r)
        out[f"f1_{average}"] = float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(labels)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


LABEL_SOURCES = ("human", "llm")


def _subset_scores(y_true: list, y_pred: list) -> dict:
    """``n``, ``balanced_accuracy`` and ``accuracy`` of a subset; the scores are None when it is empty."""
    if not y_true:
        return {"n": 0, "balanced_accuracy": None, "accuracy": None}
    return {
        "n": len(y_true),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def metrics_by_label_source(y_true: Sequence, y_pred: Sequence, sources: Sequence[str]) -> dict:
    """The test scores on human-labelled sessions and the agreement with the LLM on LLM-labelled ones, apart.

    On a session labelled by the LLM, ``y_true`` is the LLM's label: predicting it measures agreement
    with the LLM, not correctness. A test split that is mostly LLM-labelled (a first training) therefore
    gives a mixed balanced accuracy that is mostly agreement; only the human-labelled part says how
    often the model is right. Balanced accuracy is the mean recall over the classes present in each
    subset (scikit-learn's ``balanced_accuracy_score``).

    Args:
        y_true: the reference labels, one per session.
        y_pred: the predicted labels, same length.
        sources: who labelled each session, ``"human"`` or ``"llm"`` (the dataset's ``source`` column).

    Returns:
        ``{"test_metrics_human": {...}, "llm_agreement": {...}}``, each with ``n``, ``balanced_accuracy``
        and ``accuracy``; a subset without sessions has ``n`` 0 and None for both scores.

    Raises:
        ValueError: if the lengths differ or a source is neither ``"human"`` nor ``"llm"``.

    Example:
        >>> metrics_by_label_source(["a", "b", "a"], ["a", "a", "a"], ["human", "human", "llm"])["llm_agreement"]
        {'n': 1, 'balanced_accuracy': 1.0, 'accuracy': 1.0}
    """
    if not len(y_true) == len(y_pred) == len(sources):
        raise ValueError(f"y_true, y_pred and sources differ in length: {len(y_true)}, {len(y_pred)}, {len(sources)}")
    unknown = sorted({str(s) for s in sources} - set(LABEL_SOURCES))
    if unknown:
        raise ValueError(f"sources must be one of {list(LABEL_SOURCES)}, got {unknown}")
    subsets = {
        source: ([t for t, s in zip(y_true, sources) if s == source], [p for p, s in zip(y_pred, sources) if s == source])
        for source in LABEL_SOURCES
    }
    return {"test_metrics_human": _subset_scores(*subsets["human"]), "llm_agreement": _subset_scores(*subsets["llm"])}
