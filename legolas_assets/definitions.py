"""The LEGOLAS code location: one Definitions object, assembled from the stage modules."""

from dagster import Definitions, in_process_executor

from legolas_ml import settings

from .checks import ALL_CHECKS
from .io_manager import JsonIOManager
from .jobs import ASSETS, promote_job, rollback_job, training_job
from .resources import LifecycleResource, ReviewLoopResource, default_resources
from .reviews import human_reviews
from .sensors import retrain_on_new_reviews

defs = Definitions(
    assets=[*ASSETS, human_reviews],  # the reviews: a source asset the sensor observes
    # One process per run: the folds of a run already train one after another inside one step,
    # and a process per step would re-import torch ~15 times per run for no parallelism.
    executor=in_process_executor,
    asset_checks=ALL_CHECKS,
    jobs=[training_job, promote_job, rollback_job],
    sensors=[retrain_on_new_reviews],
    resources={**default_resources(), "lifecycle": LifecycleResource(), "review": ReviewLoopResource(), "io_manager": JsonIOManager(base_dir=str(settings.output_dir() / "asset_values"))},
)
