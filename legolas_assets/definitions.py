"""The LEGOLAS code location: one Definitions object, assembled from the stage modules."""

from dagster import Definitions, define_asset_job, in_process_executor

from legolas_ml import settings

from .checks import ALL_CHECKS
from .data import labeled_dataset
from .evaluation import cv_metrics, ensemble_model
from .explainability import explainability_report
from .io_manager import JsonIOManager
from .resources import default_resources
from .splits import stratified_splits
from .training import fold_models

ASSETS = [labeled_dataset, stratified_splits, fold_models, cv_metrics, ensemble_model, explainability_report]

#: The whole chain as one job (the UI's "Materialize all" does the same).
training_job = define_asset_job("training_job", selection=ASSETS)

defs = Definitions(
    assets=ASSETS,
    # One process per run: the folds of a run already train one after another inside one step,
    # and a process per step would re-import torch ~15 times per run for no parallelism.
    executor=in_process_executor,
    asset_checks=ALL_CHECKS,
    jobs=[training_job],
    resources={**default_resources(), "io_manager": JsonIOManager(base_dir=str(settings.output_dir() / "asset_values"))},
)
