"""A classical baseline beside every candidate: TF-IDF word n-grams + logistic regression, per fold.

One scikit-learn pipeline (``TfidfVectorizer`` over word 1-2 grams with sublinear tf, then a
class-balanced ``LogisticRegression``) is trained on exactly the training sessions of each fold of
the tenant's ``SplitPlan`` and scored on that fold's validation sessions: the same folds, the same
metric function (``classification_metrics``) as the fold models, so the two CV numbers compare.
On the test split the fold pipelines act as one classifier, like the ensemble:
``p(c | x) = (1/K) * sum_k p_k(c | x)``, each row summing to 1 (``check_probabilities``).

A fine-tuned transformer that does not beat this is not worth its cost: ``compare`` is that
decision. Char n-grams were left out: they doubled the fitting time for no gain on the demo data.
Measured on a 2-core machine running other work (load ~3.5): 5 folds over 600 demo texts (~210
chars) in ~1 s, over 10,000 in ~4 s; 10 folds over 10,000 in ~8 s.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from legolas_ml.core.atomic_io import atomic_write
from legolas_ml.data.splits import SplitPlan
from legolas_ml.core.metrics import classification_metrics, mean_std, metrics_by_label_source

#: What the UI calls it.
BASELINE_NAME = "TF-IDF + LR baseline"
#: The layout of the saved artifact; ``load_baseline`` refuses any other.
ARTIFACT_FORMAT = "legolas-baseline/1"
# lbfgs converges in under 100 iterations on the demo data; the ceiling only guards unusual data.
MAX_ITER = 2000
# Half the iterations of scikit-learn's 1e-4 (10,000 demo texts, 10 folds: 8 s instead of 12 s on a
# loaded 2-core machine) for 0.004 less CV balanced accuracy, within the folds' std of 0.018.
TOL = 1e-3


def make_baseline(seed: int) -> Pipeline:
    """One fold's untrained pipeline: word 1-2 gram TF-IDF (sublinear tf, min_df=1), balanced logistic regression.

    ``class_weight="balanced"`` weighs each class by ``n / (C * n_c)``, so a rare class counts as much
    as a common one: what the balanced accuracy reported everywhere rewards.
    """
    return Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
        ("logreg", LogisticRegression(class_weight="balanced", max_iter=MAX_ITER, tol=TOL, random_state=seed)),
    ])


@dataclass
class BaselineModel:
    """The fold pipelines of one training as one classifier (mean of their probabilities)."""

    labels: list[str]  # sorted class names: the columns of ``predict_proba``
    fold_models: list[Pipeline]
    sklearn_version: str

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The mean of the fold pipelines' probabilities, ``(n, C)`` in ``labels`` order."""
        probs = np.zeros((len(texts), len(self.labels)))  # (n, C)
        if not len(texts):
            return probs
        column = {label: j for j, label in enumerate(self.labels)}
        for model in self.fold_models:
            # A fold's classes_ may lack a class its training sessions did not have: align by name.
            columns = [column[str(c)] for c in model.classes_]
            probs[:, columns] += model.predict_proba(list(texts))  # (n, C_fold)
        probs /= len(self.fold_models)
        _check_probabilities(probs)
        return probs

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]


@dataclass(frozen=True)
class BaselineResult:
    """The baseline of one candidate: where it is saved, its CV numbers and its test numbers."""

    path: str
    sha256: str  # of the saved artifact; ``load_baseline`` verifies it when given
    sklearn_version: str
    labels: list[str]
    n_folds: int
    per_fold: list[dict]  # fold, n, balanced_accuracy, accuracy on the fold's validation sessions
    cv: dict  # {"balanced_accuracy": {"mean", "std"}, "accuracy": {"mean", "std"}} over the folds
    test_metrics: dict  # classification_metrics on every test session (human- and LLM-labelled)
    test_metrics_human: dict | None  # n, balanced_accuracy, accuracy; None without a source column
    llm_agreement: dict | None
    fit_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BaselineResult":
        return cls(**values)


def evaluate_baseline(df: pd.DataFrame, plan: SplitPlan, path: str | Path) -> BaselineResult:
    """Train the baseline on every fold of ``plan``, score it like the ensemble, and save it at ``path``.

    Args:
        df: the labelled dataset: ``text`` and ``label`` columns, ``session_id`` as a column or the
            index, and optionally ``source`` (``"human"``/``"llm"``) to report the human-labelled
            test sessions apart.
        plan: the split the fold models were trained on; its seed seeds every logistic regression.
        path: where the fitted fold pipelines are written (one joblib file, written atomically).

    Returns:
        A ``BaselineResult``: CV mean/std of balanced accuracy and accuracy over the folds' validation
        sessions, and the test metrics of the folds' averaged probabilities.

    Raises:
        ValueError: if a column is missing or a session of the plan is not in ``df`` (a stale split).
    """
    started = time.perf_counter()
    df = _indexed(df)
    labels = sorted(df["label"].astype(str).unique().tolist())
    models, per_fold = [], []
    for fold in plan.folds:
        train, val = _rows(df, fold.train_ids, f"fold {fold.index} train_ids"), _rows(df, fold.val_ids, f"fold {fold.index} val_ids")
        model = make_baseline(plan.seed).fit(train["text"].tolist(), train["label"].astype(str).tolist())
        scores = classification_metrics(val["label"].astype(str).tolist(), model.predict(val["text"].tolist()).tolist(), classes=labels)
        per_fold.append({"fold": fold.index, "n": scores["n"], "balanced_accuracy": scores["balanced_accuracy"], "accuracy": scores["accuracy"]})
        models.append(model)
    baseline = BaselineModel(labels=labels, fold_models=models, sklearn_version=sklearn.__version__)
    test = _rows(df, plan.test_ids, "test_ids")
    y_true = test["label"].astype(str).tolist()
    predicted = baseline.predict(test["text"].tolist())
    by_source = metrics_by_label_source(y_true, predicted, test["source"].tolist()) if "source" in test else {}
    cv = {metric: dict(zip(("mean", "std"), mean_std([f[metric] for f in per_fold]))) for metric in ("balanced_accuracy", "accuracy")}
    path = save_baseline(baseline, path)
    return BaselineResult(
        path=str(path),
        sha256=_sha256(path),
        sklearn_version=baseline.sklearn_version,
        labels=labels,
        n_folds=plan.n_folds,
        per_fold=per_fold,
        cv=cv,
        test_metrics=classification_metrics(y_true, predicted, classes=labels),
        test_metrics_human=by_source.get("test_metrics_human"),
        llm_agreement=by_source.get("llm_agreement"),
        fit_s=time.perf_counter() - started,
    )


def save_baseline(model: BaselineModel, path: str | Path) -> Path:
    """Write the fold pipelines, their labels and the scikit-learn version as one joblib file."""
    payload = {"format": ARTIFACT_FORMAT, **asdict(model)}
    return atomic_write(path, lambda tmp: joblib.dump(payload, tmp))


def load_baseline(path: str | Path, sha256: str | None = None) -> BaselineModel:
    """The baseline saved at ``path`` (our own artifact: joblib unpickles it, so only load our own files).

    Args:
        path: a file written by ``save_baseline``/``evaluate_baseline``.
        sha256: the checksum ``BaselineResult.sha256`` recorded; verified when given.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the checksum differs or the file is not a baseline artifact.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"baseline artifact {path} does not exist")
    if sha256 is not None and _sha256(path) != sha256:
        raise ValueError(f"baseline artifact {path} has sha256 {_sha256(path)}, expected {sha256}: the file was altered")
    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a baseline artifact: format must be {ARTIFACT_FORMAT!r}, got {found!r}")
    if payload["sklearn_version"] != sklearn.__version__:
        # Pickled estimators usually load across minor versions; say so rather than refuse a holdout score.
        warnings.warn(
            f"baseline {path} was saved with scikit-learn {payload['sklearn_version']}, loaded with {sklearn.__version__}",
            stacklevel=2,
        )
    return BaselineModel(labels=payload["labels"], fold_models=payload["fold_models"], sklearn_version=payload["sklearn_version"])


def baseline_predict_proba(model: BaselineModel | str | Path, texts: Sequence[str]) -> np.ndarray:
    """The baseline's ``(n, C)`` probabilities (columns: ``model.labels``), from a model or its file."""
    return _model(model).predict_proba(texts)


def baseline_predict(model: BaselineModel | str | Path, texts: Sequence[str]) -> list[str]:
    """The baseline's predicted class of each text, from a model or its file."""
    return _model(model).predict(texts)


def baseline_holdout_metrics(path: str | Path, texts: Sequence[str], labels: Sequence[str], *, sha256: str | None = None) -> dict:
    """The saved baseline's ``classification_metrics`` on the holdout, scored like the candidate there.

    The classes are those of ``labels`` (as ``decision.decide`` scores the candidate): a reviewed class
    the baseline never saw counts as a miss, not as a column of its own.

    Args:
        path: the manifest's ``baseline["path"]``.
        texts: the holdout texts.
        labels: their human labels, aligned with ``texts``.
        sha256: the manifest's ``baseline["sha256"]``; the file is verified against it when given.

    Raises:
        ValueError: if ``texts`` and ``labels`` differ in length or are empty, or the file was altered.
    """
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
    y_true = [str(label) for label in labels]
    return classification_metrics(y_true, load_baseline(path, sha256).predict(texts), classes=sorted(set(y_true)))


def compare(ensemble_metrics: dict, baseline_metrics: dict | None) -> tuple[bool, str]:
    """Whether the ensemble's test balanced accuracy is at least the baseline's, and why.

    Both must be ``classification_metrics`` of the same test sessions (the same ``n``): the mixed
    test set, human- and LLM-labelled, is the one both always have. A tie passes: the ensemble is
    not worse.

    Args:
        ensemble_metrics: the ensemble's test metrics (``balanced_accuracy``, ``n``).
        baseline_metrics: the baseline's on the same sessions; ``None`` for a candidate evaluated
            before baselines existed, which fails: nothing shows that the ensemble beats it.

    Returns:
        ``(passed, reason)``; the reason gives both numbers and their difference.

    Raises:
        ValueError: if a dict lacks ``balanced_accuracy`` or ``n`` (naming the keys it has), or the two
            were scored on different numbers of sessions.

    Example:
        >>> compare({"balanced_accuracy": 0.7, "n": 50}, {"balanced_accuracy": 0.8, "n": 50})
        (False, "the ensemble scores 0.7000 test balanced accuracy, below the TF-IDF + LR baseline's 0.8000 (-0.1000) on the same 50 sessions")
    """
    if baseline_metrics is None:
        return False, f"no {BASELINE_NAME} was evaluated for this candidate: re-materialize ensemble_model"
    for name, metrics in (("ensemble_metrics", ensemble_metrics), ("baseline_metrics", baseline_metrics)):
        missing = [k for k in ("balanced_accuracy", "n") if k not in metrics]
        if missing:
            raise ValueError(f"{name} needs keys ['balanced_accuracy', 'n'], missing {missing}; it has {sorted(metrics)}")
    if ensemble_metrics["n"] != baseline_metrics["n"]:
        raise ValueError(
            f"ensemble_metrics and baseline_metrics must be scored on the same test sessions, got n={ensemble_metrics['n']} "
            f"and n={baseline_metrics['n']}"
        )
    ours, theirs = ensemble_metrics["balanced_accuracy"], baseline_metrics["balanced_accuracy"]
    where = f"({ours - theirs:+.4f}) on the same {ensemble_metrics['n']} sessions"
    if ours >= theirs:
        return True, f"the ensemble scores {ours:.4f} test balanced accuracy, at least the {BASELINE_NAME}'s {theirs:.4f} {where}"
    return False, f"the ensemble scores {ours:.4f} test balanced accuracy, below the {BASELINE_NAME}'s {theirs:.4f} {where}"


def _indexed(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"df needs columns ['text', 'label'] (and session_id), missing {missing}; it has {list(df.columns)}")
    return df.set_index(df["session_id"].astype(str)) if "session_id" in df.columns else df.set_axis(df.index.astype(str))


def _rows(df: pd.DataFrame, ids: Sequence[str], part: str) -> pd.DataFrame:
    absent = [i for i in ids if i not in df.index]
    if absent:
        raise ValueError(f"{len(absent)} sessions of the plan's {part} are not in df (a stale split?), e.g. {absent[:5]}")
    return df.loc[list(ids)]


def _model(model: BaselineModel | str | Path) -> BaselineModel:
    return model if isinstance(model, BaselineModel) else load_baseline(model)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_probabilities(probs: np.ndarray, atol: float = 1e-6) -> None:
    """Sanity check: every row is a probability distribution (``ensemble.check_probabilities`` imports torch)."""
    if probs.size and not np.allclose(probs.sum(axis=1), 1.0, atol=atol):
        worst = float(np.abs(probs.sum(axis=1) - 1).max())
        raise AssertionError(f"baseline probabilities do not sum to 1 (worst row off by {worst:.2e})")
