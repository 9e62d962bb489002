"""The typed values passed between the assets of a tenant's chain.

Each asset returns one of these, the Dagster layer's JSON IO manager stores ``to_dict()`` and
hands the next asset ``from_dict(...)``: a field renamed here fails every reader at once (a type
checker sees it; a test does), where a string key read in five places fails one run at a time.
They are descriptions (paths, hashes, metrics), never the data: datasets, checkpoints and reports
are files the assets write themselves.

    labeled_dataset   -> LabeledDataset     the quality gate's training rows and holdout
    stratified_splits -> StratifiedSplits   the test set and K folds (``SplitPlan.load(path)``)
    fold_models       -> FoldModel          one per fold partition: a ``FoldResult`` and what it was trained on
    cv_metrics        -> CvMetrics          mean ± std of the folds' validation metrics
    ensemble_model    -> Candidate          the version's manifest, where it was written, its run's folder
    promoted_ensemble -> PromotionOutcome   what the champion/challenger decision did
    explainability_report -> ExplanationReport  where the report is and how well attributions converged

Stored values keep the flat JSON shape they had before these classes existed, so the previous
release's values load (and the fields added since, ``fold_spread`` and ``run_dir``, have defaults);
``from_dict`` ignores keys it does not know and names the ones it needs but lacks.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="Contract")


class ContractError(ValueError):
    """A stored asset value lacks fields its contract needs (written by another LEGOLAS release)."""


class Contract:
    """``to_dict``/``from_dict`` for a dataclass whose fields are JSON values (or nested lists/dicts of them)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        cls._require(values, [name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING])
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def _require(cls, values: Any, needed: list[str]) -> None:
        """Refuse a stored value that is not a JSON object or lacks a ``needed`` key, naming what it lacks."""
        if not isinstance(values, Mapping):
            raise ContractError(f"{cls.__name__}: a stored value must be a JSON object, got {type(values).__name__}")
        missing = [name for name in needed if name not in values]
        if missing:
            raise ContractError(
                f"{cls.__name__}: the stored value lacks {missing} (it has {sorted(values)}); it was written by "
                "another LEGOLAS release: re-materialize the asset"
            )


@dataclass
class LabeledDataset(Contract):
    """What the quality gate let through: the training rows and the holdout beside them (parquet files)."""

    tenant: str
    path: str  # the training rows; never the holdout's sessions
    holdout_path: str
    data_version: str  # content hash of the training rows
    mode: str  # "bootstrap" (trusted LLM labels too) or "review" (human reviews only)
    classes: list[str]
    summary: dict[str, Any]  # the gate's counts, per_class, per_source, holdout, reviews_cursor
    champion_dataset: dict[str, Any] | None = None  # what the model in service was trained on (shrinkage check)
    champion_version: str | None = None  # the champion the gate read: the warm start follows it
    holdout_random_ids: list[str] = field(default_factory=list)  # holdout sessions reviewed as random samples

    @property
    def per_class(self) -> dict[str, int]:
        return self.summary["per_class"]

    @property
    def holdout(self) -> dict[str, Any]:
        """The holdout's summary: ``share``, ``n``, ``per_class``."""
        return self.summary["holdout"]

    @property
    def reviews_cursor(self) -> str | None:
        """The newest review this dataset read (consumed once a decision is recorded)."""
        return self.summary.get("reviews_cursor")


@dataclass
class StratifiedSplits(Contract):
    """Where the split plan was written and what it is (``SplitPlan.load(path)`` reads the session ids)."""

    tenant: str
    path: str
    fingerprint: str
    data_version: str
    n_folds: int
    kfold: bool
    classes: list[str]
    n_test: int


@dataclass
class FoldResult(Contract):
    """What a fold's training produced (``legolas_ml.training.trainer.train_fold``)."""

    fold: int
    checkpoint_path: str
    best_epoch: int  # the epoch shipped in the checkpoint: best balanced accuracy up to the rewind point
    best_metrics: dict[str, Any]
    trigger_epoch: int | None  # the epoch early stopping triggered at (None: ran every epoch)
    rewind_epoch: int | None  # trigger_epoch - patience: no epoch after it can be shipped
    stop_reason: str
    epochs_run: int
    history: list[dict[str, Any]]
    duration_s: float
    train_samples_per_s: float
    n_train: int
    n_val: int
    device: str
    precision: str
    peak_memory_mb: float
    timings_s: dict[str, float] = field(default_factory=dict)
    held_copies_peak: int = 0  # most CPU copies of the weights held for the rewind window at once
    reused: bool = False  # True when a finished fold was reused instead of retrained
    warm_start: dict[str, Any] | None = None  # the champion checkpoint this fold started from (warm_start.py); None: cold


@dataclass(kw_only=True)
class FoldModel(FoldResult):
    """One ``fold_models`` partition: the fold's result and what it was trained on."""

    data_version: str
    split_fingerprint: str
    training_key: str  # data version + split + config: the version id of the ensemble these folds make
    training_config: dict[str, Any]  # the resolved configuration, with the layer each value came from
    curve_path: str
    log_path: str
    mlflow_run_id: str | None = None


@dataclass
class CvMetrics(Contract):
    """Mean ± std across folds of the best validation metrics (``{"mean": m, "std": s}`` each)."""

    n_folds: int
    data_version: str
    split_fingerprint: str
    balanced_accuracy: dict[str, float]
    accuracy: dict[str, float]
    f1_macro: dict[str, float]
    per_class_recall: dict[str, dict[str, float]]
    per_fold: list[dict[str, Any]]  # fold, balanced_accuracy, accuracy, f1_macro, best_epoch
    fold_spread: float | None = None  # best minus worst fold balanced accuracy; from per_fold when not given

    def __post_init__(self) -> None:
        if self.fold_spread is None and self.per_fold:  # computed here only: aggregate_folds and older stored values
            scores = [row["balanced_accuracy"] for row in self.per_fold]
            self.fold_spread = max(scores) - min(scores)


#: The keys of a ``Candidate``'s stored value that are not its manifest's.
_CANDIDATE_PLACES = ("manifest_path", "run_dir")


@dataclass
class Candidate(Contract):
    """A version on disk, not yet the model in service: its manifest and where it lives.

    The manifest is the registry's record of the version (checkpoints and their SHA-256, labels,
    data, split, test metrics, baseline, training configuration); it stays a JSON object because the
    registry, the promotion rule, warm starts and serving all read versions written by older releases.
    """

    manifest: dict[str, Any]
    manifest_path: str
    run_dir: str  # this materialization's folder (plots, baseline, reports); "" when a stored value predates it

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def checkpoints(self) -> list[str]:
        return self.manifest["checkpoints"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def test_metrics(self) -> dict[str, Any]:
        return self.manifest["test_metrics"]

    def to_dict(self) -> dict[str, Any]:
        # Flat, as stored before this class existed: the manifest's fields beside its two places.
        return {**self.manifest, "manifest_path": self.manifest_path, "run_dir": self.run_dir}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Candidate":
        cls._require(values, ["version", "checkpoints", "labels", "manifest_path"])
        manifest = {k: v for k, v in values.items() if k not in _CANDIDATE_PLACES}
        return cls(manifest=manifest, manifest_path=values["manifest_path"], run_dir=values.get("run_dir") or "")


@dataclass
class PromotionOutcome(Contract):
    """What ``promoted_ensemble`` decided about the run's candidate."""

    tenant: str
    champion_version: str | None  # in service after the decision
    candidate_version: str
    promoted: bool  # the candidate serves (promoted now, or already the champion)
    outcome: str  # "promoted", "rejected", "challenger", "kept (already the champion)"
    reason: str


@dataclass
class ExplanationReport(Contract):
    """Where ``explainability_report`` wrote its report and how well the attributions converged."""

    tenant: str
    report: str  # the HTML report
    json: str  # the same as JSON
    n_texts: int
    share_converged: float
    mean_steps: float
    seconds_per_text: float
