"""One place where a tenant's training configuration is decided, and where each value came from.

Five layers, each replacing the one before it for the fields it sets:

1. ``default``: ``TrainingConfig``'s own field defaults (the only place defaults are written);
2. ``preset``: ``LEGOLAS_PRESET``'s values (``settings.PRESETS``: K, epochs, length, lr, loss, ...);
3. ``environment``: the other ``LEGOLAS_*`` variables (``LEGOLAS_EPOCHS``, ``LEGOLAS_MODEL``, ...);
4. ``run_config``: the fields a run's config sets on the ``training``/``gpu`` resources (Launchpad
   or ``--config-json``), and only those: a run config naming ``patience`` changes nothing else;
5. ``tenant``: the tenant's own settings (``legolas tenants add --n-folds/--model/--settings``).
   The tenant's owner chose them for that tenant; a deployment-wide run config does not undo them.

Why the environment is read here, at run time, and not when the code location loads: a value
copied into a resource default at load time cannot be told apart from a run config value, so a run
config used to reset every environment setting it did not name.

Example:
    >>> resolved = resolve_training({"patience": 100})
    >>> resolved.config.patience, resolved.sources["patience"]
    (100, 'run_config')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from legolas_ml.core import settings
from legolas_ml.data.tenants import TenantSettings
from legolas_ml.training.config import TrainingConfig

#: The layers in the order they apply (a later one wins).
LAYERS = ("default", "preset", "environment", "run_config", "tenant")

#: The TrainingConfig fields each preset sets.
PRESET_FIELDS = ("n_folds", "kfold", "epochs", "max_length", "freeze_layers", "lr", "loss", "focal_gamma")

#: TrainingConfig fields a tenant can set (``TenantSettings`` names them the same).
TENANT_FIELDS = ("n_folds", "model_name", "epochs", "max_length")


def _environment() -> dict[str, Any]:
    """The training fields the ``LEGOLAS_*`` variables set (unset variables are left out)."""
    values: dict[str, Any] = {
        "model_name": settings.model_name() if settings.is_set("LEGOLAS_MODEL") else None,
        "model_init": settings.model_init() if settings.is_set("LEGOLAS_MODEL_INIT") else None,
        "model_overrides": settings.model_overrides() or None,
        "epochs": settings.epochs(),
        "max_length": settings.max_length(),
        "batch_size": settings.batch_size() if settings.is_set("LEGOLAS_BATCH_SIZE") else None,
        "lr": settings.lr(),
        "device": settings.device() if settings.is_set("LEGOLAS_DEVICE") else None,
        "precision": settings.precision() if settings.is_set("LEGOLAS_PRECISION") else None,
    }
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class ResolvedTraining:
    """A tenant's ``TrainingConfig`` and, per field, the layer that set it (``LAYERS``)."""

    config: TrainingConfig
    sources: dict[str, str] = field(default_factory=dict)
    preset: str = "default"

    def to_dict(self) -> dict[str, Any]:
        """What is stored with a version and shown by ``legolas status``: the config and its sources."""
        return {"preset": self.preset, "config": self.config.to_dict(), "sources": dict(self.sources)}


def resolve_training(run_config: Mapping[str, Any] | None = None, tenant: TenantSettings | None = None) -> ResolvedTraining:
    """Merge the five layers (module docstring) into one validated ``TrainingConfig``.

    Args:
        run_config: the ``TrainingConfig`` fields a run's config sets; ``None`` values count as unset.
        tenant: the tenant's own settings; ``None`` for a deployment without tenants of its own.

    Returns:
        The config, validated, with the layer each field came from.

    Raises:
        ValueError: an unknown field in ``run_config`` (named, with the known ones), or an invalid
            value (``TrainingConfig.validate`` lists every problem).
    """
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    given = {name: value for name, value in (run_config or {}).items() if value is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown training field(s) {unknown} in the run config; known fields: {sorted(known)}")
    own = {name: getattr(tenant, name) for name in TENANT_FIELDS if tenant is not None and getattr(tenant, name) is not None}
    if "n_folds" in own:
        own["kfold"] = True  # a tenant's K means K-fold, whatever the preset's mode
    preset = settings.preset()
    layers = (
        ("preset", {name: preset[name] for name in PRESET_FIELDS if name in preset}),
        ("environment", _environment()),
        ("run_config", given),
        ("tenant", own),
    )
    values: dict[str, Any] = {}
    sources = {name: "default" for name in known}
    for layer, fields in layers:
        values.update(fields)
        sources.update({name: layer for name in fields})
    config = TrainingConfig(**values)
    config.validate()
    return ResolvedTraining(config, sources, settings.preset_name())
