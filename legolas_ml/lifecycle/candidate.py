"""A candidate version: the K fold models as one ensemble, evaluated once on the test set and recorded.

``evaluate_candidate`` is what the ``ensemble_model`` asset does: it checks that the folds and the
CV numbers belong to the split in hand, scores the ensemble (and the TF-IDF baseline trained on
the same folds) on the test sessions, and writes the version's manifest. A candidate serves
nothing: promotion is a separate, checked decision (``legolas_ml.lifecycle.decision``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.core.contracts import Candidate, CvMetrics, FoldModel, LabeledDataset, StratifiedSplits
from legolas_ml.core.datasets import read_dataset
from legolas_ml.core.metrics import metrics_by_label_source
from legolas_ml.data.splits import SplitPlan
from legolas_ml.evaluation.baseline import BaselineResult, evaluate_baseline
from legolas_ml.evaluation.cross_validation import evaluate_ensemble
from legolas_ml.evaluation.ensemble import EVAL_PRECISION
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.training.checkpoint import read_sidecar


class CandidateInputsError(ValueError):
    """The folds, the CV numbers and the split of a candidate do not belong together."""


@dataclass
class CandidateEvaluation:
    """A recorded candidate and the numbers behind it (what the asset shows)."""

    candidate: Candidate
    test_metrics: dict[str, Any]  # every test session, human- and LLM-labelled ("mixed")
    human: dict[str, Any]  # the human-labelled test sessions only (``balanced_accuracy`` None when there are none)
    agreement: dict[str, Any]  # agreement with the LLM on the LLM-labelled ones
    baseline: BaselineResult
    inference_s: float
    run_manifest: Path  # the manifest's copy in this run's own folder


def training_of(folds: Mapping[int, FoldModel]) -> str:
    """The one training key every fold shares: the candidate's version id.

    Raises:
        CandidateInputsError: the folds come from different trainings (some were re-materialized since).
    """
    keys = {f.training_key for f in folds.values()}
    if len(keys) != 1 or None in keys:
        raise CandidateInputsError(f"the folds come from different trainings {sorted(map(str, keys))}; re-materialize fold_models")
    return keys.pop()


def _checked_inputs(
    registry: ModelRegistry, dataset: LabeledDataset, splits: StratifiedSplits, folds: Mapping[int, FoldModel], cv: CvMetrics
) -> str:
    """The candidate's version, once its inputs are shown to belong together (``CandidateInputsError`` otherwise)."""
    if dataset.tenant != registry.artifacts.tenant:
        raise CandidateInputsError(
            f"labeled_dataset belongs to tenant {dataset.tenant!r}, the registry to {registry.artifacts.tenant!r}: "
            "re-materialize labeled_dataset (LEGOLAS_TENANT changed since?)"
        )
    if cv.split_fingerprint != splits.fingerprint:
        raise CandidateInputsError("cv_metrics was computed on another split; re-materialize cv_metrics first")
    return training_of(folds)


def evaluate_candidate(
    registry: ModelRegistry,
    dataset: LabeledDataset,
    splits: StratifiedSplits,
    folds: Mapping[int, FoldModel],
    cv: CvMetrics,
    *,
    run_id: str,
    device: str = "auto",
    before_recording: Callable[[Path, dict[str, Any], list[str]], None] | None = None,
    clock: Callable[[], time.struct_time] = time.gmtime,
) -> CandidateEvaluation:
    """Evaluate the ensemble of ``folds`` on the split's test sessions and record it as a candidate.

    Every reported number is computed in fp32 (``EVAL_PRECISION``; training may use bf16): the
    mistakes Integrated Gradients explain, in fp32, are then the ones evaluated here.

    Args:
        registry: the tenant's versions; the manifest is written there (and in the run's folder).
        dataset, splits, folds, cv: the values of the tenant's upstream assets.
        run_id: the run's id: its folder keeps this materialization's files apart from any other's.
        device: where the ensemble runs (``auto``, ``cpu``, ``cuda``...).
        before_recording: called with the run's folder, the test metrics and the labels before the
            version is recorded: what it writes there (the asset's plots) is published with the version.

    Raises:
        CandidateInputsError: the dataset is another tenant's, ``cv`` was computed on another split, or
            the folds on several trainings.
    """
    version = _checked_inputs(registry, dataset, splits, folds, cv)
    paths = [folds[k].checkpoint_path for k in range(splits.n_folds)]
    plan = SplitPlan.load(splits.path)
    rows = read_dataset(dataset.path).set_index("session_id")
    test = rows.loc[plan.test_ids]
    started = time.perf_counter()
    metrics, probs, ensemble = evaluate_ensemble(paths, test["text"].tolist(), test["label"].tolist(), device, EVAL_PRECISION)
    inference_s = time.perf_counter() - started
    # An LLM-labelled test session measures agreement with the LLM, not correctness: reported apart.
    predicted = [ensemble.labels[i] for i in probs.argmax(axis=1)]
    by_source = metrics_by_label_source(test["label"].tolist(), predicted, test["source"].tolist())
    human, agreement = by_source["test_metrics_human"], by_source["llm_agreement"]
    # This materialization's own directory: a later run of the same version never overwrites what
    # an older materialization points at (retention deletes it with the version).
    run_dir = registry.run_dir(version, run_id)
    # The bar the ensemble must clear (check `ensemble_beats_baseline`): same folds, same test sessions.
    baseline = evaluate_baseline(rows, plan, run_dir / "baseline.joblib")
    summary = dataset.summary
    manifest = {
        "version": version,
        "tenant": registry.artifacts.tenant,
        "checkpoints": paths,
        "sha256": [read_sidecar(p)["sha256"] for p in paths],
        "labels": ensemble.labels,
        "data_version": dataset.data_version,
        "split_fingerprint": splits.fingerprint,
        "mode": dataset.mode,
        "source_counts": summary["per_source"],
        "dataset_summary": {"rows": summary.get("rows"), "per_source": summary["per_source"], "per_class": summary["per_class"]},
        "reviews_cursor": dataset.reviews_cursor,  # the reviews this training read: consumed once decided
        "holdout": summary.get("holdout"),
        "test_metrics": metrics,  # every test session, human- and LLM-labelled: mostly LLM agreement at first
        "test_metrics_human": human,
        "llm_agreement": agreement,
        "eval_precision": EVAL_PRECISION,
        # The resolved configuration (preset, config, the layer of each value): `legolas status` shows it.
        "training_config": folds[0].training_config,
        "cv_balanced_accuracy": cv.balanced_accuracy,
        "baseline": baseline.to_dict(),  # its artifact ("path", "sha256") scores the holdout later
        "run_id": run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", clock()),
    }
    if before_recording is not None:
        before_recording(run_dir, metrics, ensemble.labels)
    run_manifest = write_json_atomic(run_dir / "manifest.json", manifest)  # before the candidate: published with its run
    manifest_path = registry.write_candidate(manifest)
    return CandidateEvaluation(
        candidate=Candidate(manifest=manifest, manifest_path=str(manifest_path), run_dir=str(run_dir)),
        test_metrics=metrics, human=human, agreement=agreement, baseline=baseline, inference_s=inference_s, run_manifest=run_manifest,
    )
