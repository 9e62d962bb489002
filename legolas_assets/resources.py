"""Dagster resources: the Mongo store, the accelerator, and the training settings.

Every field can be set in run config (Launchpad or ``--config``) and defaults to an environment
variable, so a fresh clone trains on demo data in the embedded store with no configuration.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from legolas_ml import settings
from legolas_ml.lifecycle.artifacts import TenantArtifacts, validate_tenant
from legolas_ml.training.config import DEFAULT_MODEL, TrainingConfig
from legolas_ml.training.modeling import device_description, resolve_device, resolve_precision
from legolas_ml.data.store import open_tenant_store, redact_uri

#: Training presets, picked with LEGOLAS_PRESET. "default" is real use (K=10); "demo" makes the
#: README's main job finish in minutes on a 2-core CPU; "dev" is one train/val split for iterating.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"n_folds": 10, "kfold": True, "epochs": 10, "max_length": 256},
    "demo": {"n_folds": 5, "kfold": True, "epochs": 2, "max_length": 128},
    "dev": {"n_folds": 1, "kfold": False, "epochs": 1, "max_length": 64},
}


def preset_name() -> str:
    name = os.environ.get("LEGOLAS_PRESET", "default")
    if name not in PRESETS:
        raise ValueError(f"LEGOLAS_PRESET must be one of {sorted(PRESETS)}, got {name!r}")
    return name


def preset() -> dict[str, Any]:
    """The active preset; ``LEGOLAS_N_FOLDS`` overrides its K (the fold partitions follow it)."""
    values = dict(PRESETS[preset_name()])
    if os.environ.get("LEGOLAS_N_FOLDS"):
        k = int(os.environ["LEGOLAS_N_FOLDS"])
        if k < 2:
            raise ValueError(f"LEGOLAS_N_FOLDS must be >= 2 (use LEGOLAS_PRESET=dev for a single split), got {k}")
        values.update(n_folds=k, kfold=True)
    return values


class MongoResource(ConfigurableResource):
    """The tenant's classification and review store: MongoDB when ``uri`` is set, embedded otherwise."""

    uri: str = Field(default="", description="MongoDB URI (from LEGOLAS_MONGO_URI); empty = embedded store")
    database: str = Field(default="legolas", description="database name")
    tenant: str = Field(default=settings.DEFAULT_TENANT, description="the tenant whose data is trained on")
    data_dir: str = Field(default="", description="embedded store directory; empty = $LEGOLAS_HOME")
    timeout_s: float = Field(default=5.0, description="server selection timeout: an outage fails fast")

    def open(self):
        """Context manager yielding the tenant's ``TenantStore``; the client is always closed."""
        validate_tenant(self.tenant)
        return open_tenant_store(
            self.uri or None, self.data_dir or settings.data_dir(), self.database, self.tenant, self.timeout_s
        )

    def describe(self) -> str:
        """Where the data comes from, with any password redacted."""
        return f"MongoDB {redact_uri(self.uri)}" if self.uri else f"embedded store {self.data_dir or settings.data_dir()}"


class GPUResource(ConfigurableResource):
    """The accelerator folds train on: ``auto`` picks CUDA when present and falls back to the CPU."""

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: str = Field(default="auto", description="'auto' (bf16 where native), 'fp32', 'bf16' or 'fp16'")

    def resolved(self) -> dict[str, Any]:
        """Device and precision actually used, with the device's name and memory."""
        device = resolve_device(self.device)
        return {**device_description(device), "precision": resolve_precision(self.precision, device)}


class TrainingResource(ConfigurableResource):
    """Training settings and where artifacts go. K-fold layout (K, simple mode) comes from the preset."""

    output_dir: str = Field(default="", description="artifacts root; empty = $LEGOLAS_HOME/output")
    model_name: str = Field(default=DEFAULT_MODEL, description="bundled default, a Hugging Face id or a local path")
    model_init: str = Field(default="pretrained", description="'pretrained' or 'scratch' (architecture from config)")
    model_overrides_json: str = Field(default="{}", description="JSON object of model config overrides")
    epochs: int = Field(default=0, description="0 = the preset's")
    max_length: int = Field(default=0, description="0 = the preset's")
    batch_size: int = 16
    lr: float = 5e-5
    loss: str = Field(default="focal", description="'focal' or 'ce'")
    focal_gamma: float = 2.0
    patience: int = 5
    min_delta: float = 0.001
    seed: int = 42
    dataset_mode: str = Field(default="auto", description="'auto', 'first' or 'retrain' (operator override)")
    max_text_chars: int = Field(default=20_000, description="longer texts are quarantined")
    max_quarantine_share: float = Field(default=0.2, description="check: quarantined share of inputs must stay below")
    reuse_finished_folds: bool = Field(
        default=True, description="reuse a fold that finished with the same data, split and config (checksum verified)"
    )

    def output_root(self) -> str:
        return self.output_dir or str(settings.output_dir())

    def artifacts(self, tenant: str) -> TenantArtifacts:
        return TenantArtifacts(self.output_root(), tenant)

    def config(self, gpu: GPUResource) -> TrainingConfig:
        """The ``TrainingConfig`` of this run, validated."""
        base = preset()
        try:
            overrides = json.loads(self.model_overrides_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model_overrides_json must be a JSON object, got {self.model_overrides_json!r}: {exc}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"model_overrides_json must be a JSON object, got {self.model_overrides_json!r}")
        config = TrainingConfig(
            n_folds=base["n_folds"],
            kfold=base["kfold"],
            epochs=self.epochs or base["epochs"],
            max_length=self.max_length or base["max_length"],
            batch_size=self.batch_size,
            lr=self.lr,
            loss=self.loss,
            focal_gamma=self.focal_gamma,
            patience=self.patience,
            min_delta=self.min_delta,
            seed=self.seed,
            model_name=self.model_name,
            model_init=self.model_init,
            model_overrides=overrides,
            device=gpu.device,
            precision=gpu.precision,
        )
        config.validate()
        return config


def default_resources() -> dict[str, Any]:
    """Resources wired to environment variables, so `dagster dev` and the CLI need no run config."""
    return {
        "mongo": MongoResource(
            uri=EnvVar("LEGOLAS_MONGO_URI") if os.environ.get("LEGOLAS_MONGO_URI") else "",
            database=os.environ.get("LEGOLAS_DATABASE", "legolas"),
            tenant=settings.tenant(),
        ),
        "gpu": GPUResource(
            device=os.environ.get("LEGOLAS_DEVICE", "auto"), precision=os.environ.get("LEGOLAS_PRECISION", "auto")
        ),
        "training": TrainingResource(
            model_name=os.environ.get("LEGOLAS_MODEL", DEFAULT_MODEL),
            model_init=os.environ.get("LEGOLAS_MODEL_INIT", "pretrained"),
            model_overrides_json=os.environ.get("LEGOLAS_MODEL_OVERRIDES", "{}"),
            epochs=int(os.environ.get("LEGOLAS_EPOCHS", "0")),
            max_length=int(os.environ.get("LEGOLAS_MAX_LENGTH", "0")),
            batch_size=int(os.environ.get("LEGOLAS_BATCH_SIZE", "16")),
            lr=float(os.environ.get("LEGOLAS_LR", "5e-5")),
        ),
    }
