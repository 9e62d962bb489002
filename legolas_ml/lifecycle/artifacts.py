"""Where a tenant's artifacts live on disk, and whether the tenant already has a trained ensemble.

Layout under ``<output_dir>/<tenant>/``::

    tokens/                         token-id caches keyed by content (npz, no pickles)
    folds/<split_fingerprint>/      best_model_{format}_{model}_fold{k}.safetensors + .json sidecars
    ensemble/ensemble.json          the manifest of the current ensemble (its folds and checksums)
    explainability/                 the HTML/JSON/PNG report of the current ensemble

Fold checkpoints are grouped by split fingerprint, so a retraining never overwrites the files of
the ensemble that is currently serving; the manifest switches atomically once the new one is done.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from legolas_ml.atomic_io import write_json_atomic, write_text_atomic


_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_tenant(tenant: str) -> str:
    """Tenants name directories: letters, digits, '.', '_' and '-' only (no path traversal)."""
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant) or ".." in tenant:
        raise ValueError(
            f"tenant must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; got {tenant!r}"
        )
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


class TenantArtifacts:
    """Paths of one tenant's artifacts under an output directory."""

    def __init__(self, output_dir: str | Path, tenant: str) -> None:
        self.tenant = validate_tenant(tenant)
        self.root = Path(output_dir) / tenant

    def dataset_path(self, data_version: str) -> Path:
        return self.root / "datasets" / f"{data_version}.jsonl"

    def splits_path(self, fingerprint: str) -> Path:
        return self.root / "splits" / f"{fingerprint}.json"

    @property
    def logs_dir(self) -> Path:
        return self.root.parent / "logs"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "tokens"

    def folds_dir(self, split_fingerprint: str) -> Path:
        return self.root / "folds" / split_fingerprint

    @property
    def ensemble_manifest(self) -> Path:
        return self.root / "ensemble" / "ensemble.json"

    @property
    def explainability_dir(self) -> Path:
        return self.root / "explainability"

    def read_manifest(self) -> dict[str, Any] | None:
        """The current ensemble manifest, or ``None`` if the tenant has never finished a training."""
        from legolas_ml.training.checkpoint import CheckpointError  # lazily: the CLI reads manifests without importing torch

        if not self.ensemble_manifest.exists():
            return None
        try:
            manifest = json.loads(self.ensemble_manifest.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"ensemble manifest {self.ensemble_manifest} is unreadable: {exc}") from exc
        if not isinstance(manifest, dict) or "checkpoints" not in manifest:
            raise CheckpointError(f"ensemble manifest {self.ensemble_manifest} lacks 'checkpoints'")
        return manifest

    def has_model(self) -> bool:
        """True when a finished ensemble exists whose fold files are all present.

        This is what decides first training vs retraining: the artifacts, not log sizes.
        """
        from legolas_ml.training.checkpoint import CheckpointError, read_sidecar

        manifest = self.read_manifest()
        if manifest is None:
            return False
        try:
            for path in manifest["checkpoints"]:
                read_sidecar(path)
        except CheckpointError:
            return False
        return all(Path(p).exists() for p in manifest["checkpoints"])

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        write_json_atomic(self.ensemble_manifest, manifest)
        return self.ensemble_manifest
