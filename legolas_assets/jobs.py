"""Jobs: the whole training chain as one job (the sensor's target and the UI's one-click retrain)."""

from dagster import define_asset_job

from .data import labeled_dataset
from .evaluation import cv_metrics, ensemble_model
from .explainability import explainability_report
from .lifecycle import promote_job, promoted_ensemble, rollback_job
from .loop import ensemble_predictions, label_audit
from .splits import stratified_splits
from .training import fold_models

ASSETS = [labeled_dataset, stratified_splits, fold_models, cv_metrics, ensemble_model, promoted_ensemble, explainability_report, ensemble_predictions, label_audit]

__all__ = ["ASSETS", "training_job", "promote_job", "rollback_job"]

training_job = define_asset_job(
    "training_job",
    selection=ASSETS,
    description="Every asset, all fold partitions in one run: launch with a partition range 0...K-1",
)
