"""Training configuration: one dataclass that travels with every saved model.

Every field has a typed default and a comment saying what it controls. ``validate()`` collects
every problem at once so a user fixes a bad config in one round trip, not one error per run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from legolas_ml.core.choices import DEFAULT_MODEL, LOSSES, MODEL_INITS, PRECISIONS

BEST_METRICS = ("balanced_accuracy", "accuracy", "f1_macro")

def legolas_version() -> str:
    """The installed LEGOLAS version (recorded in every checkpoint sidecar)."""
    try:
        return importlib.metadata.version("legolas")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"




@dataclass
class TrainingConfig:
    """Everything that decides how a fold is trained.

    Example:
        >>> cfg = TrainingConfig(n_folds=5, epochs=3)
        >>> cfg.validate(n_classes=2)
    """

    # --- data split ---
    n_folds: int = 10  # K of stratified K-fold; ignored when kfold=False
    kfold: bool = True  # False: one stratified train/val split, for quick development runs
    val_size: float = 0.2  # share of the training pool used for validation when kfold=False
    test_size: float = 0.2  # stratified held-out test share, never seen by any fold
    seed: int = 42  # drives torch, the splitters and batch order

    # --- loss ---
    loss: str = "focal"  # "focal" (Lin et al. 2017) or "ce" (cross-entropy with balanced class weights)
    focal_alpha: list[float] | None = None  # per-class weights; None: 0.75 on the minority of 2 classes, inverse frequency otherwise
    focal_gamma: float = 2.0  # focusing parameter; 0 with uniform alpha is plain cross-entropy

    # --- early stopping and best checkpoint ---
    patience: int = 5  # epochs without val-loss improvement before stopping
    min_delta: float = 0.001  # val-loss decrease that counts as an improvement
    overfit_ratio: float | None = None  # stop when val_loss/train_loss stays above this for `patience` epochs
    best_metric: str = "balanced_accuracy"  # validation metric that picks the epoch kept on disk

    # --- optimisation ---
    epochs: int = 10  # maximum epochs per fold
    batch_size: int = 16
    eval_batch_size: int = 64  # inference needs no gradients, so larger batches fit
    lr: float = 5e-5
    weight_decay: float = 0.01  # AdamW decay, never applied to biases and LayerNorm weights
    warmup_ratio: float = 0.1  # share of optimizer steps spent in linear warmup
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    # Embeddings and the lowest N transformer layers stay as pretrained (no gradients, no dropout):
    # the demo preset's speed lever (backward stops at layer N). 0 trains every layer (real use).
    freeze_layers: int = 0
    max_length: int = 256  # tokens per text after truncation
    truncation_side: str = "right"  # which end of a long text is cut

    # --- model and hardware ---
    model_name: str = DEFAULT_MODEL  # bundled default, a Hugging Face id, or a local path
    model_init: str = "pretrained"  # "scratch" builds the architecture from config only (tests, ablations)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # config fields replaced before building, e.g. num_hidden_layers
    # Warm start: fold k starts from init_checkpoints[k % len] (the champion's fold checkpoints, see
    # legolas_ml/training/warm_start.py) instead of model_init's weights. Empty: no warm start.
    init_checkpoints: list[str] = field(default_factory=list)
    text_format: str = "text"  # name of the input format, part of checkpoint file names
    precision: str = "auto"  # "auto" picks bf16 where the device supports it
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"

    def validate(self, n_classes: int | None = None) -> None:
        """Check every field; raise one ``ValueError`` listing every problem found.

        Args:
            n_classes: number of classes in the data, when known; enables the alpha-length check.

        Raises:
            ValueError: if any field is out of range.
        """
        problems: list[str] = []

        def bad(name: str, allowed: str, value: Any) -> None:
            problems.append(f"{name} must be {allowed}, got {value!r}")

        if self.kfold and (not isinstance(self.n_folds, int) or self.n_folds < 2):
            bad("n_folds", "an integer >= 2 in K-fold mode", self.n_folds)
        if not self.kfold and not 0 < self.val_size < 1:
            bad("val_size", "in (0, 1) when kfold=False", self.val_size)
        if not 0 < self.test_size < 1:
            bad("test_size", "in (0, 1)", self.test_size)
        if self.loss not in LOSSES:
            bad("loss", f"one of {LOSSES}", self.loss)
        if self.focal_gamma is None or self.focal_gamma < 0:
            bad("focal_gamma", ">= 0", self.focal_gamma)
        if self.focal_alpha is not None:
            if any(a is None or a < 0 for a in self.focal_alpha):
                bad("focal_alpha", "a list of non-negative weights", self.focal_alpha)
            if n_classes is not None and len(self.focal_alpha) != n_classes:
                problems.append(
                    f"focal_alpha must have one weight per class ({n_classes} classes), "
                    f"got {len(self.focal_alpha)} weights: {self.focal_alpha!r}"
                )
        if not isinstance(self.patience, int) or self.patience < 1:
            bad("patience", "an integer >= 1", self.patience)
        if self.min_delta < 0:
            bad("min_delta", ">= 0", self.min_delta)
        if self.overfit_ratio is not None and self.overfit_ratio <= 0:
            bad("overfit_ratio", "None or > 0", self.overfit_ratio)
        if self.best_metric not in BEST_METRICS:
            bad("best_metric", f"one of {BEST_METRICS}", self.best_metric)
        if not isinstance(self.freeze_layers, int) or isinstance(self.freeze_layers, bool) or self.freeze_layers < 0:
            bad("freeze_layers", "an integer >= 0 (0 trains every layer)", self.freeze_layers)
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                bad(name, "an integer >= 1", value)
        if self.lr <= 0:
            bad("lr", "> 0", self.lr)
        if self.weight_decay < 0:
            bad("weight_decay", ">= 0", self.weight_decay)
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "in [0, 1)", self.warmup_ratio)
        if self.max_grad_norm < 0:
            bad("max_grad_norm", ">= 0 (0 disables clipping)", self.max_grad_norm)
        if self.truncation_side not in ("right", "left"):
            bad("truncation_side", "'right' or 'left'", self.truncation_side)
        if self.model_init not in MODEL_INITS:
            bad("model_init", f"one of {MODEL_INITS}", self.model_init)
        if self.precision not in PRECISIONS:
            bad("precision", f"one of {PRECISIONS}", self.precision)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'", self.device)
        if not isinstance(self.init_checkpoints, (list, tuple)) or not all(isinstance(p, str) and p for p in self.init_checkpoints):
            bad("init_checkpoints", "a list of checkpoint paths (empty: no warm start)", self.init_checkpoints)
        if not self.text_format or not self.text_format.replace("-", "").replace("_", "").isalnum():
            bad("text_format", "a non-empty name of letters, digits, '-' or '_'", self.text_format)
        if problems:
            raise ValueError("Invalid TrainingConfig:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        """Build a config from a dict, rejecting unknown keys by name (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)
