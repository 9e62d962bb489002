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
checkpoints, a run's reports) are published through ``legolas_ml.core.storage.ArtifactStore`` under
``LEGOLAS_ARTIFACTS`` (default: this output directory, in place); manifests name files relative
to that root. Datasets, splits and token caches are a run's working files and stay local.

The training key hashes the data version, the split and the training config, so a retraining
never writes into the directory of the ensemble in service: new texts or labels with the same
session ids make a new data version, hence a new key and new directories.
"""

from __future__ import annotations

from pathlib import Path

from legolas_ml.core.identity import validate_tenant
from legolas_ml.core.storage import ArtifactStore, open_store


class TenantArtifacts:
    """Paths of one tenant's artifacts under an output directory, and the store that publishes them.

    Args:
        output_dir: the local working directory (``$LEGOLAS_HOME/output``).
        tenant: the tenant's name.
        store: where the registry and the versions are published; default: ``output_dir`` itself,
            in place. Callers that honour ``LEGOLAS_ARTIFACTS`` pass ``open_store(output_dir,
            settings.artifacts_root())`` (the CLI: ``legolas_ml.cli.lifecycle.registry_for``; Dagster:
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
