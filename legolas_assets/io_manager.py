"""A JSON IO manager: asset values are small JSON documents (paths, hashes, metrics), never pickles.

Large artifacts (datasets, checkpoints, reports) are files the assets write themselves under the
output directory; what passes between assets is their description: the typed values of
``legolas_ml.core.contracts``, stored as their ``to_dict()`` and handed to the next asset as the
contract ``CONTRACTS`` names for the asset (the review loop's values, which no asset reads, stay JSON objects). Partitioned
outputs are stored one file per partition, which is what a single-run backfill of several fold
partitions needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext

from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.core.contracts import (
    Candidate,
    Contract,
    ContractError,
    CvMetrics,
    ExplanationReport,
    FoldModel,
    LabeledDataset,
    PromotionOutcome,
    StratifiedSplits,
)

#: The contract of each chain asset's value, by the asset's name (a tenant's key ends with it).
CONTRACTS: dict[str, type[Contract]] = {
    "labeled_dataset": LabeledDataset,
    "stratified_splits": StratifiedSplits,
    "fold_models": FoldModel,
    "cv_metrics": CvMetrics,
    "ensemble_model": Candidate,
    "promoted_ensemble": PromotionOutcome,
    "explainability_report": ExplanationReport,
}


def _stored(obj: Any) -> Any:
    return obj.to_dict() if isinstance(obj, Contract) else obj


def _loaded(asset_key, value: Any, path: Path) -> Any:
    contract = CONTRACTS.get(asset_key.path[-1])
    if contract is None:
        return value
    try:
        return contract.from_dict(value)
    except ContractError as exc:  # which asset, which partition: the one to re-materialize
        raise ContractError(f"asset {asset_key.to_user_string()} ({path}): {exc}") from None


class JsonIOManager(ConfigurableIOManager):
    """Stores each asset value as ``<base_dir>/<asset>/<partition or __all__>.json``."""

    base_dir: str

    def _path(self, asset_key, partition: str | None) -> Path:
        return Path(self.base_dir, *asset_key.path, f"{partition if partition is not None else '__all__'}.json")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None or not context.has_asset_key:
            return  # an op's result (promote, rollback, a challenger's look): shown in the run, recorded by the registry
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            keys = list(context.asset_partition_keys)
            if not isinstance(obj, dict) or set(obj) != set(keys):
                raise TypeError(
                    f"a multi-partition output must be a dict keyed by partition {keys}, got "
                    f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}"
                )
            for key in keys:
                write_json_atomic(self._path(context.asset_key, key), _stored(obj[key]))
            return
        partition = context.asset_partition_key if context.has_asset_partitions else None
        write_json_atomic(self._path(context.asset_key, partition), _stored(obj))

    def load_input(self, context: InputContext) -> Any:
        key = context.asset_key
        if context.has_asset_partitions:
            # A downstream of the folds always receives {partition: value} for those that exist;
            # the consumer names the missing ones instead of failing on the first absent file.
            values = {}
            for partition in context.asset_partition_keys:
                path = self._path(key, partition)
                if path.exists():
                    values[partition] = _loaded(key, json.loads(path.read_text()), path)
            return values
        path = self._path(key, None)
        if not path.exists():
            raise FileNotFoundError(f"asset {key.to_user_string()} has not been materialized yet ({path} is missing)")
        return _loaded(key, json.loads(path.read_text()), path)
