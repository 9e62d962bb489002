"""Run the Dagster chain in process on a tiny model and a small demo tenant."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import DagsterInstance, materialize

from legolas_assets.definitions import ASSETS
from legolas_assets.checks import ALL_CHECKS
from legolas_assets.io_manager import JsonIOManager
from legolas_assets.resources import GPUResource, LifecycleResource, MongoResource, ReviewLoopResource, TrainingResource
from synthetic import TINY_OVERRIDES

TINY_TRAINING = dict(
    model_init="scratch",
    model_overrides_json=json.dumps(TINY_OVERRIDES),
    epochs=8,
    lr=5e-3,
    batch_size=8,
    max_length=48,
    min_delta=1e-4,
)


def resources(home: Path, tenant: str = "demo", mongo: MongoResource | None = None, lifecycle: dict | None = None, **training) -> dict:
    return {
        "lifecycle": LifecycleResource(**(lifecycle or {})),
        "review": ReviewLoopResource(),
        "mongo": mongo or MongoResource(tenant=tenant, data_dir=str(home)),
        "gpu": GPUResource(device="cpu", precision="fp32"),
        "training": TrainingResource(output_dir=str(home / "output"), **{**TINY_TRAINING, **training}),
        "io_manager": JsonIOManager(base_dir=str(home / "output" / "asset_values")),
    }


def run_chain(
    home: Path, instance: DagsterInstance, n_folds: int = 3, selection=None, raise_on_error=True, mongo=None, lifecycle=None, **training
):
    """Materialize the chain (all fold partitions in one run, as the CLI's --partition-range does)."""
    return materialize(
        ASSETS + ALL_CHECKS,
        selection=selection,
        resources=resources(home, mongo=mongo, lifecycle=lifecycle, **training),
        instance=instance,
        tags={"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": str(n_folds - 1)},
        raise_on_error=raise_on_error,
    )
