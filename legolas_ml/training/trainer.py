"""Train one fold: focal loss, rewind early stopping, best-epoch checkpoint, autocast precision.

``train_fold`` is the one training loop of LEGOLAS; K-fold training calls it once per fold and the
quick development mode calls it once on a single train/val split.
"""

from __future__ import annotations

import contextlib
import gc
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import get_linear_schedule_with_warmup

from legolas_ml.training.batching import EncodedTexts, collate, length_grouped_batches
from legolas_ml.training.checkpoint import BestCheckpoint
from legolas_ml.training.dropout import pcg_dropout
from legolas_ml.training.last_layer import cls_only_last_layer
from legolas_ml.training.row_sparse import (
    RowSparseAdamW, RowSparseEmbeddingGrad, row_sparse_embedding_grad, split_table_group,
)
from legolas_ml.training.row_sparse import clip_grad_norm_ as cpu_clip_grad_norm_
from legolas_ml.training.shipped_epoch import RewindAwareCheckpoint
from legolas_ml.training.config import TrainingConfig, legolas_version
from legolas_ml.training.early_stopping import RewindEarlyStopping
from legolas_ml.training.losses import build_loss
from legolas_ml.training.warm_start import checkpoint_for_fold, warm_start
from legolas_ml.core.contracts import FoldResult  # noqa: F401 - the trainer's return type, re-exported here
from legolas_ml.core.metrics import classification_metrics
from legolas_ml.training.modeling import (
    autocast, build_model, device_description, freeze_lower_layers, resolve_device, resolve_precision,
)


class NonFiniteLossError(FloatingPointError):
    """A fold's loss became NaN or infinite; the fold fails and no checkpoint is written from it."""


@dataclass
class FoldData:
    """The encoded texts of one split and their class indices."""

    encoded: EncodedTexts
    targets: np.ndarray  # (n,) int64 class indices into the label list

    def __post_init__(self) -> None:
        if len(self.encoded) != len(self.targets):
            raise ValueError(f"{len(self.encoded)} texts but {len(self.targets)} targets")
        if len(self.targets) == 0:
            raise ValueError("a split must contain at least one text")


EpochCallback = Callable[[dict[str, Any]], None]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decaying biases and normalisation weights only shrinks them towards 0 for no regularisation gain.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: torch.nn.Module, config: TrainingConfig, device: torch.device, table: RowSparseEmbeddingGrad | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, fused into one kernel per step on CPU and CUDA.

    The fused kernel does the same update as the default per-parameter loop (to float rounding)
    and saves most of its time: MiniLM steps +7% faster on a 2-core AVX2 CPU over 16 mid-length
    batches (bench/train_levers.py), +2% over a whole epoch of ~83-token texts (docs/speed.md).
    With ``table`` (CPU training, ``row_sparse_embedding_grad``), the word-embedding table steps
    only the rows that ever had a gradient: the same update, bit for bit (``RowSparseAdamW``).
    """
    groups = _param_groups(model, config.weight_decay)
    if table is not None:
        return RowSparseAdamW(split_table_group(groups, table.weight), table, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type in ("cpu", "cuda"))


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data: FoldData,
    loss_fn: torch.nn.Module,
    device: torch.device,
    precision: str,
    batch_size: int,
    pad_id: int,
) -> tuple[float, np.ndarray]:
    """Mean loss and softmax probabilities ``(n, n_classes)`` in the original order."""
    model.eval()
    n = len(data.targets)
    probs = None
    loss_sum = torch.zeros((), device=device)
    targets = torch.from_numpy(data.targets)
    for idx in length_grouped_batches(data.encoded.lengths, batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(data.encoded, idx, pad_id).items()}
        with autocast(device, precision):
            logits = model(**batch).logits
        logits = logits.float()  # (batch, n_classes)
        loss_sum += loss_fn(logits, targets[idx].to(device)) * len(idx)
        if probs is None:
            probs = torch.empty((n, logits.shape[-1]), dtype=torch.float32, device=device)
        probs[torch.from_numpy(idx).to(device)] = torch.softmax(logits, dim=-1)
    return loss_sum.item() / n, probs.cpu().numpy()


def train_fold(
    config: TrainingConfig,
    labels: Sequence[str],
    train: FoldData,
    val: FoldData,
    checkpoint_path: str | Path,
    *,
    fold: int = 0,
    pad_id: int = 0,
    sidecar: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    model: torch.nn.Module | None = None,
) -> FoldResult:
    """Train one fold and keep its best epoch on disk.

    Args:
        config: the training config (validated here).
        labels: class names; targets index into this list.
        train: encoded training texts and targets.
        val: encoded validation texts and targets.
        checkpoint_path: the ``.safetensors`` file of this fold's best epoch.
        fold: the fold index, for messages and the sidecar.
        pad_id: the tokenizer's padding id.
        sidecar: extra JSON fields for the checkpoint sidecar (dataset hash, split fingerprint...).
        on_epoch: called after every epoch with that epoch's record (progress reporting).
        model: an already-built model (tests, fault injection); by default built from ``config``.

    Returns:
        A ``FoldResult`` with the shipped/trigger/rewind epochs, the history and throughput.

    Raises:
        NonFiniteLossError: if the training or validation loss becomes NaN/inf; names fold and epoch.
    """
    labels = list(labels)
    config.validate(n_classes=len(labels))
    started = time.perf_counter()
    timings = {"train": 0.0, "evaluate": 0.0, "checkpoint": 0.0}
    torch.manual_seed(config.seed + fold)
    rng = np.random.default_rng(config.seed + fold)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    warm = None
    if model is None:
        model = build_model(config, labels)
        start_from = checkpoint_for_fold(config.init_checkpoints, fold)
        if start_from is not None:
            warm = {"from": start_from, **warm_start(model, start_from, labels)}
    model.to(device)
    frozen = freeze_lower_layers(model, config.freeze_layers)
    class_counts = np.bincount(train.targets, minlength=len(labels))
    loss_fn = build_loss(config.loss, np.maximum(class_counts, 1), config.focal_alpha, config.focal_gamma).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(train.targets) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    stopper = RewindEarlyStopping(config.patience, config.min_delta, config.overfit_ratio)
    # The shipped epoch: best balanced accuracy among the epochs the rewind can still return to.
    checkpoint = RewindAwareCheckpoint(BestCheckpoint(checkpoint_path, monitor=config.best_metric), delay=config.patience)
    base_sidecar = {
        **(sidecar or {}),
        "fold": fold,
        "labels": labels,
        "model_config": model.config.to_dict(),
        "training_config": config.to_dict(),
        "precision": precision,
        "warm_start": warm,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "legolas": legolas_version()},
    }
    train_targets = torch.from_numpy(train.targets)
    history: list[dict[str, Any]] = []
    samples_seen = 0
    # Exact speed-ups, undone when the loop ends or fails (docs/speed.md): the last layer runs at
    # [CLS] only (the logits read nothing else); on CPU dropout masks come from PCG64 rather than
    # ATen's serial bernoulli_, seeded by (seed, fold) so every fold draws its own masks, and the
    # word-embedding table's gradient, clipping and AdamW step touch only the rows that need it.
    with contextlib.ExitStack() as fast_paths:
        fast_paths.enter_context(cls_only_last_layer(model))
        clip_grad_norm_, table = torch.nn.utils.clip_grad_norm_, None
        if device.type == "cpu":
            fast_paths.enter_context(pcg_dropout(model, seed=(config.seed, fold)))
            table = fast_paths.enter_context(row_sparse_embedding_grad(model))
            clip_grad_norm_ = table.clip_grad_norm_ if table is not None else cpu_clip_grad_norm_
        optimizer = build_optimizer(model, config, device, table=table)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
        for epoch in range(config.epochs):
            # --- forward / backward / step ---
            tick = time.perf_counter()
            model.train()
            for module in frozen:
                module.eval()  # fixed feature extractors: no dropout
            loss_sum = torch.zeros((), device=device)  # accumulated on device: no host sync per step
            for idx in length_grouped_batches(train.encoded.lengths, config.batch_size, rng):
                batch = {k: v.to(device, non_blocking=True) for k, v in collate(train.encoded, idx, pad_id).items()}
                with autocast(device, precision):
                    logits = model(**batch).logits
                loss = loss_fn(logits.float(), train_targets[idx].to(device))
                loss.backward()
                if config.max_grad_norm > 0:
                    clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach() * len(idx)
            train_loss = loss_sum.item() / len(train.targets)
            samples_seen += len(train.targets)
            timings["train"] += time.perf_counter() - tick
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(f"fold {fold}: training loss became {train_loss} at epoch {epoch}; no checkpoint written from it")

            # --- evaluate and checkpoint ---
            tick = time.perf_counter()
            val_loss, probs = evaluate(model, val, loss_fn, device, precision, config.eval_batch_size, pad_id)
            y_pred = probs.argmax(axis=1)
            metrics = classification_metrics(
                [labels[i] for i in val.targets], [labels[i] for i in y_pred], classes=labels
            )
            metrics["loss"] = val_loss
            timings["evaluate"] += time.perf_counter() - tick
            if not math.isfinite(val_loss):
                stopper.step(epoch, val_loss, train_loss)
                raise NonFiniteLossError(f"fold {fold}: validation loss became {val_loss} at epoch {epoch}; {stopper.stop_reason}")
            tick = time.perf_counter()
            checkpoint_reason = checkpoint.update(epoch, metrics, model, base_sidecar)
            timings["checkpoint"] += time.perf_counter() - tick

            # --- termination ---
            stop = stopper.step(epoch, val_loss, train_loss)
            record = {
                "fold": fold,
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_balanced_accuracy": metrics["balanced_accuracy"],
                "val_accuracy": metrics["accuracy"],
                "val_f1_macro": metrics["f1_macro"],
                "checkpoint": checkpoint_reason,
                "lr": scheduler.get_last_lr()[0],
                "elapsed_s": time.perf_counter() - started,
                "stopping": bool(stop),  # the fold's last epoch: early stopping triggered here
            }
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if stop:
                break

    checkpoint.finish(stopped=stopper.should_stop)
    duration = time.perf_counter() - started
    result = FoldResult(
        fold=fold,
        checkpoint_path=str(checkpoint.best.path),
        best_epoch=checkpoint.shipped_epoch,
        best_metrics=checkpoint.best.best_metrics,
        trigger_epoch=stopper.trigger_epoch,
        rewind_epoch=stopper.rewind_epoch,
        stop_reason=stopper.stop_reason or f"ran all {config.epochs} epochs",
        epochs_run=len(history),
        history=history,
        duration_s=duration,
        train_samples_per_s=samples_seen / max(timings["train"], 1e-9),
        n_train=len(train.targets),
        n_val=len(val.targets),
        device=device_description(device)["name"] if device.type == "cuda" else "cpu",
        precision=precision,
        peak_memory_mb=peak_memory_mb(device),
        timings_s=timings,
        warm_start=warm,
        held_copies_peak=checkpoint.held_peak,
    )
    # Free the model, optimizer and held epochs before returning: K folds run back to back.
    del model, optimizer, scheduler, stopper, loss_fn
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if result.best_epoch is None:
        raise RuntimeError(f"fold {fold}: no epoch produced a finite {config.best_metric}; nothing was saved")
    return result
