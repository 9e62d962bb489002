"""Where a tenant's artifacts live on disk.

Layout under ``<output_dir>/<tenant>/``::

    datasets/<data_version>.jsonl           the training rows that passed the gate (holdout removed)
    holdout/<data_version>.jsonl            the evaluation holdout read with that dataset
    splits/<data_version>-<split>.json      test split and folds
    tokens/                                 token-id caches keyed by content (npz, no pickles)
    folds/<training_key>/                   best_model_{format}_{model}_fold{k}.safetensors + sidecars
    ensemble/versions/<training_key>/       a trained ensemble: manifest, confusion matrix, explanations
    ensemble/champion.json, decisions.jsonl the version in service and the decision history (registry.py)

The registry (pointers, decision log), every version's manifest and the trees they name (fold
checkpoints, a run's reports) are published through ``legolas_ml.storage.ArtifactStore`` under
``LEGOLAS_ARTIFACTS`` (default: this output directory, in place); manifests name files relative
to that root. Datasets, splits and token caches are a run's working files and stay local.

The training key hashes the data version, the split and the training config, so a retraining
never writes into the directory of the ensemble in service: new texts or labels with the same
session ids make a new data version, hence a new key and new directories.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from legolas_ml.atomic_io import write_text_atomic
from legolas_ml.storage import ArtifactStore, open_store


_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


#: Names of what lives beside the tenants' directories under the output directory.
RESERVED_TENANT_NAMES = ("asset_values", "logs", "tenants.json")


def validate_tenant(tenant: str) -> str:
    """Tenants name directories: letters, digits, '.', '_' and '-' only (no path traversal), and
    none of the names the output directory keeps for itself (``RESERVED_TENANT_NAMES``)."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant) or ".." in tenant:
        raise ValueError(
            f"tenant must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; got {tenant!r}"
        )
    if tenant in RESERVED_TENANT_NAMES:
        raise ValueError(f"tenant must not be one of {list(RESERVED_TENANT_NAMES)} (folders of the output directory); got {tenant!r}")
    return tenant


def write_dataset(path: Path, rows) -> Path:
    """Write a dataset (a DataFrame or records) as JSON lines, atomically."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return write_text_atomic(path, lines)


def read_dataset(path: str | Path):
    """Read a dataset written by ``write_dataset`` into a DataFrame (every column kept as written)."""
    import pandas as pd

    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return pd.DataFrame.from_records(records, columns=["session_id", "text", "label", "source"])


def training_key(data_version: str, split_fingerprint: str, config: dict[str, Any]) -> str:
    """The id of one training: its data, split and config (16 hex digits). Also the ensemble's version."""
    payload = json.dumps({"data": data_version, "split": split_fingerprint, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class TenantArtifacts:
    """Paths of one tenant's artifacts under an output directory, and the store that publishes them.

    Args:
        output_dir: the local working directory (``$LEGOLAS_HOME/output``).
        tenant: the tenant's name.
        store: where the registry and the versions are published; default: ``output_dir`` itself,
            in place. Callers that honour ``LEGOLAS_ARTIFACTS`` pass ``open_store(output_dir,
            settings.artifacts_root())`` (the CLI: ``lifecycle.commands.registry_for``; Dagster:
            ``TrainingResource.artifacts``).
    """

    def __init__(self, output_dir: str | Path, tenant: str, store: ArtifactStore | None = None) -> None:
        self.tenant = validate_tenant(tenant)
        self.root = Path(output_dir) / tenant
        self.store = store if store is not None else open_store(output_dir)

    def relative(self, path: str | Path) -> str:
        """``path`` (a working file of this tenant) relative to the artifacts root, as manifests name it.

        Raises:
            ValueError: if ``path`` lies outside the output directory, naming both.
        """
        rel = self.store.relative(path)
        if rel is None:
            raise ValueError(f"artifact {path} is outside the output directory {self.store.working_dir}; cannot name it relative to the root")
        return rel

    def dataset_path(self, data_version: str) -> Path:
        return self.root / "datasets" / f"{data_version}.jsonl"

    def holdout_path(self, data_version: str) -> Path:
        return self.root / "holdout" / f"{data_version}.jsonl"

    def splits_path(self, data_version: str, fingerprint: str) -> Path:
        return self.root / "splits" / f"{data_version}-{fingerprint}.json"

    @property
    def logs_dir(self) -> Path:
        return self.root.parent / "logs"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    def folds_dir(self, key: str) -> Path:
        return self.root / "folds" / key
