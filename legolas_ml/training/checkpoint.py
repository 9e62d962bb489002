"""Best-epoch checkpoints: safetensors weights plus a validated JSON sidecar, written atomically.

A fold keeps one file: the epoch with the best validation metric. The sidecar records the epoch,
its metrics, the label mapping, the training config, library versions, the SHA-256 of the weights
file and the SHA-256 of its own content. Every load verifies both, so half-written or altered
weights, and a sidecar edited after the fact (rotated class names, another ``max_length``: a model
that loads fine and predicts the wrong classes), are refused with an error that names the file
instead of being served as a model. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from legolas_ml.core.atomic_io import atomic_write

SIDECAR_VERSION = 2  # 2: the sidecar records the SHA-256 of its own content
REQUIRED_SIDECAR_KEYS = (
    "format_version", "sha256", "sidecar_sha256", "epoch", "metrics", "labels", "model_config", "training_config"
)
#: Safetensors' own writer (Rust ``tempfile``) puts ".tmp" and six random characters beside its target.
_SAFETENSORS_TEMP_GLOB = ".tmp??????"


class CheckpointError(RuntimeError):
    """A checkpoint on disk is missing, corrupt, or does not match its sidecar."""


def model_slug(model_name: str) -> str:
    """A file-name-safe short name for a model id or path (``org/name`` -> ``name``)."""
    tail = model_name.rstrip("/").split("/")[-1].split(":")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail)


def checkpoint_filename(text_format: str, model_name: str, fold: int) -> str:
    """``best_model_{format}_{model}_fold{k}.safetensors``."""
    return f"best_model_{text_format}_{model_slug(model_name)}_fold{fold}.safetensors"


def sidecar_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_content_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of a sidecar's content: every key but ``sidecar_sha256``, as canonical JSON.

    Canonical (sorted keys, no whitespace) so the digest depends on the values only, not on how
    the file was indented; computed on the JSON round trip, so what is read back hashes the same.
    """
    content = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
    canonical = json.dumps(json.loads(json.dumps(content, default=_json_default)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> Path:
    """Save weights and sidecar atomically; return the weights path.

    Raises:
        ValueError: if any weight is NaN or infinite (a non-finite model is never written).
        OSError: if the directory is not writable; the message names the path.
    """
    path = Path(path)
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to write checkpoint {path}: weight {name!r} has NaN or inf values")
        tensors[name] = tensor.clone()  # clone breaks shared storage, which safetensors refuses
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        meta = {**sidecar, "format_version": SIDECAR_VERSION, "sha256": _sha256(path), "weights_file": path.name}
        meta["sidecar_sha256"] = sidecar_content_sha256(meta)
        text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
        atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write checkpoint under {path.parent}: {exc.strerror or exc}") from exc
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and verify the sidecar of a weights file (without loading the weights).

    Raises:
        CheckpointError: if the sidecar is missing, not JSON, lacks keys, has another format
            version, or its content no longer matches its own SHA-256. The message names the file.
    """
    meta_path = sidecar_path(path)
    try:
        meta = json.loads(Path(meta_path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint sidecar {meta_path} of {Path(path).name} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint sidecar {meta_path} must hold a JSON object")
    # The version first: an older sidecar lacks this version's keys, and saying so explains why.
    if "format_version" in meta and meta["format_version"] != SIDECAR_VERSION:
        raise CheckpointError(
            f"checkpoint sidecar {meta_path} has format_version {meta['format_version']!r}, expected {SIDECAR_VERSION}; "
            f"retrain this fold"
        )
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint sidecar {meta_path} lacks keys {missing}")
    if sidecar_content_sha256(meta) != meta["sidecar_sha256"]:
        raise CheckpointError(
            f"checkpoint sidecar {meta_path} was modified after it was written: its content (labels, model and "
            f"training config, metrics) does not match its sidecar_sha256; retrain this fold"
        )
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load verified weights and their sidecar.

    Raises:
        CheckpointError: if the weights file is missing, its checksum differs from the sidecar's,
            or the sidecar is invalid. The message names the file.
    """
    path = Path(path)
    meta = read_sidecar(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint weights {path} are missing")
    actual = _sha256(path)
    if actual != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or half-written: sha256 {actual[:12]}... does not match "
            f"the sidecar's {str(meta['sha256'])[:12]}...; retrain this fold"
        )
    return load_file(str(path)), meta


class BestCheckpoint:
    """Keep only the best epoch of one fold on disk, by a validation metric (strictly greater wins).

    Args:
        path: where the weights go; the sidecar goes beside it with a ``.json`` suffix.
        monitor: the key of the validation metrics dict to maximise.

    Example:
        >>> ckpt = BestCheckpoint("out/best_model_text_tiny_fold0.safetensors")  # doctest: +SKIP
        >>> saved, reason = ckpt.update(epoch, metrics, model, sidecar)          # doctest: +SKIP
    """

    def __init__(self, path: str | Path, monitor: str = "balanced_accuracy") -> None:
        self.path = Path(path)
        if self.path.suffix != ".safetensors":
            raise ValueError(f"checkpoint path must end in .safetensors, got {str(self.path)!r}")
        self.monitor = monitor
        # A process killed mid-write leaves its temp file behind (never the checkpoint itself);
        # this fold's writer is the only one (the `gpu` pool serialises folds), so clean them up.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp") if self.path.parent.exists() else ():
            stale.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{sidecar_path(self.path).name}.*.tmp") if self.path.parent.exists() else ():
            stale.unlink(missing_ok=True)
        # safetensors writes its own temp file first (a kill leaves the full-size file behind);
        # its name does not say whose it is, but in a fold directory only checkpoints are written.
        for stale in self.path.parent.glob(_SAFETENSORS_TEMP_GLOB) if self.path.parent.exists() else ():
            stale.unlink(missing_ok=True)
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] | None = None

    def update(self, epoch: int, metrics: dict[str, Any], model: torch.nn.Module, sidecar: dict[str, Any]) -> tuple[bool, str]:
        """Write the model if ``metrics[monitor]`` beats the best so far; return (saved, reason)."""
        if self.monitor not in metrics:
            raise KeyError(f"metric {self.monitor!r} not in validation metrics; available: {sorted(metrics)}")
        score = float(metrics[self.monitor])
        if not math.isfinite(score):
            return False, f"epoch {epoch}: {self.monitor} is {score}, not saved"
        if score <= self.best_score:
            return False, f"epoch {epoch}: {self.monitor} {score:.4f} <= best {self.best_score:.4f} (epoch {self.best_epoch})"
        save_checkpoint(self.path, model.state_dict(), {**sidecar, "epoch": epoch, "metrics": metrics})
        previous = self.best_score
        self.best_score, self.best_epoch, self.best_metrics = score, epoch, metrics
        return True, f"epoch {epoch}: {self.monitor} {score:.4f} > {previous:.4f}, saved {self.path.name}"

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable in a checkpoint sidecar: {type(value).__name__}")
