"""The K fold models as one classifier: the mean of their softmax probabilities.

``p(c | x) = (1/K) * sum_k softmax(f_k(x))_c``; each row sums to 1 (``check_probabilities``).
Models stay resident when they fit in the memory budget and are otherwise loaded one at a time,
so inference memory is bounded by one model plus one batch.

**Shared frozen trunk.** Folds trained with ``freeze_layers = N`` (the demo preset) all carry the
same pretrained embeddings and lowest N layers. Verified equal tensor by tensor, that trunk runs
once per batch (fold 0's) and the other folds run only their upper layers on its output: the
same arithmetic on the same inputs, so the same probabilities, for ``(N + K(L - N)) / (K L)`` of
the cost (5 MiniLM folds with 5 of 6 layers frozen, the demo preset: 1/3, measured 2.97x faster
by bench/ensemble_inference.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from legolas_ml.training.batching import EncodedTexts, collate, encode_texts, length_grouped_batches
from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint, read_sidecar
from legolas_ml.training.last_layer import cls_only_last_layer
from legolas_ml.training.modeling import (
    _encoder_layers, autocast, load_tokenizer, model_from_state, resolve_device, resolve_precision,
)

#: The precision of every reported number (test metrics, the holdout comparison, IG). Folds may
#: train in bf16; evaluating in one precision keeps the evaluated mistakes and the explained ones equal.
EVAL_PRECISION = "fp32"


class _Given(torch.nn.Module):
    """Stands for the frozen embeddings: returns the shared trunk's output for this batch."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


class _Passthrough(torch.nn.Module):
    """Stands for a frozen layer whose output is already in the trunk's."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextlib.contextmanager
def _trunk_given(model: torch.nn.Module, n_layers: int, hidden: torch.Tensor):
    """Run ``model`` from layer ``n_layers`` on ``hidden`` (its embeddings and lower layers stubbed)."""
    base, layers = model.base_model, _encoder_layers(model)
    embeddings, lower = base.embeddings, list(layers[:n_layers])
    base.embeddings = _Given(hidden)
    for i in range(n_layers):
        layers[i] = _Passthrough()
    try:
        yield
    finally:
        base.embeddings = embeddings
        for i, layer in enumerate(lower):
            layers[i] = layer


def _trunk_state(model: torch.nn.Module, n_layers: int) -> list[torch.Tensor]:
    modules = [model.base_model.embeddings, *_encoder_layers(model)[:n_layers]]
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on the device (CUDA) or the host's MemAvailable (CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**31


class FoldEnsemble:
    """Average the softmax outputs of K fold checkpoints.

    Args:
        checkpoint_paths: the folds' ``.safetensors`` files (each verified against its sidecar).
        device: ``"auto"``, ``"cpu"`` or ``"cuda:N"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        resident: keep all K models in memory between calls; ``None`` decides from their size
            (resident when the weights take less than half of the available memory). When not
            resident, models are loaded one at a time for every call.
        tokenizer: a saved tokenizer directory to use instead of the folds' ``model_name``; a served
            model carries its own (``scoring/pyfunc.py``), as the training machine's path may not exist.

    Raises:
        CheckpointError: if a file is corrupt, or the folds disagree on labels, tokenizer or max length.
    """

    def __init__(
        self,
        checkpoint_paths: Sequence[str | Path],
        device: str = "auto",
        precision: str = "auto",
        resident: bool | None = None,
        tokenizer: str | Path | None = None,
    ) -> None:
        if not checkpoint_paths:
            raise ValueError("an ensemble needs at least one fold checkpoint, got none")
        self.paths = [Path(p) for p in checkpoint_paths]
        self.sidecars = [read_sidecar(p) for p in self.paths]
        first = self.sidecars[0]
        for path, meta in zip(self.paths[1:], self.sidecars[1:]):
            if meta["labels"] != first["labels"]:
                raise CheckpointError(f"{path} has labels {meta['labels']!r}, but {self.paths[0]} has {first['labels']!r}")
            for key in ("model_name", "max_length", "truncation_side"):
                if meta["training_config"][key] != first["training_config"][key]:
                    raise CheckpointError(
                        f"{path} was trained with {key}={meta['training_config'][key]!r}, "
                        f"but {self.paths[0]} with {first['training_config'][key]!r}"
                    )
        self.labels: list[str] = list(first["labels"])
        self.model_name: str = first["training_config"]["model_name"]
        self.max_length: int = first["training_config"]["max_length"]
        self.truncation_side: str = first["training_config"]["truncation_side"]
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.tokenizer = load_tokenizer(str(tokenizer) if tokenizer is not None else self.model_name)
        weight_bytes = sum(p.stat().st_size for p in self.paths)
        if resident is None:
            resident = weight_bytes < available_memory_bytes(self.device) // 2
        self.resident = resident
        self._resident: dict[int, torch.nn.Module] = {}
        frozen = {meta["training_config"].get("freeze_layers", 0) for meta in self.sidecars}
        #: Frozen layers every fold shares by its config; confirmed on the weights before use.
        self.shared_trunk_layers: int = frozen.pop() if len(frozen) == 1 and len(self.paths) > 1 else 0
        self._trunk_checked: bool | None = None  # the resident folds' trunks are equal (None: not yet looked)
        #: Run each fold's last layer at [CLS] only when scoring (training/last_layer.py): the same
        #: probabilities for fewer matmuls; False runs every position (benchmarks compare both).
        self.cls_only = True

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, k: int) -> torch.nn.Module:
        state, meta = load_checkpoint(self.paths[k])
        return model_from_state(meta["model_config"], state).to(self.device)

    def models(self) -> Iterator[torch.nn.Module]:
        """Yield each fold model once; only one is alive at a time unless the ensemble is resident."""
        for k in range(len(self.paths)):
            if k in self._resident:
                yield self._resident[k]
                continue
            model = self._load(k)
            if self.resident:
                self._resident[k] = model
            yield model
            del model

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """Tokenise exactly as in training (same max length and truncation side)."""
        return encode_texts(self.tokenizer, texts, self.max_length, self.truncation_side)

    # no_grad, not inference_mode: models loaded here stay resident, and the explainer needs
    # gradients through them later (inference-mode parameters cannot be differentiated).
    @torch.no_grad()
    def predict_proba_encoded(self, encoded: EncodedTexts, batch_size: int = 64) -> np.ndarray:
        """Mean softmax probabilities ``(n, n_classes)`` for already-encoded texts."""
        n = len(encoded)
        total = torch.zeros((n, len(self.labels)), dtype=torch.float32)
        batches = length_grouped_batches(encoded.lengths, batch_size)
        pad_id = self.tokenizer.pad_token_id or 0
        # Scoring reads only the logits: every fold's last layer runs at [CLS] only (last_layer.py).
        if self.shared_trunk_layers and self.resident:
            models = list(self.models())
            if self._trunk_is_shared(models):
                with contextlib.ExitStack() as stack:
                    for model in models:
                        stack.enter_context(self._last_layer(model))
                    self._predict_shared_trunk(models, encoded, batches, pad_id, total)
                return (total / len(self.paths)).numpy()
        for model in self.models():
            with self._last_layer(model):
                for idx in batches:
                    batch = {k: v.to(self.device) for k, v in collate(encoded, idx, pad_id).items()}
                    with autocast(self.device, self.precision):
                        logits = model(**batch).logits
                    total[torch.from_numpy(idx)] += torch.softmax(logits.float(), dim=-1).cpu()  # (batch, n_classes)
        return (total / len(self.paths)).numpy()

    def _last_layer(self, model: torch.nn.Module):
        return cls_only_last_layer(model) if self.cls_only else contextlib.nullcontext(False)

    def _trunk_is_shared(self, models: list[torch.nn.Module]) -> bool:
        if self._trunk_checked is None:
            n = self.shared_trunk_layers
            first = _trunk_state(models[0], n)
            self._trunk_checked = all(
                len(state) == len(first) and all(torch.equal(a, b) for a, b in zip(first, state))
                for state in (_trunk_state(m, n) for m in models[1:])
            )
        return self._trunk_checked

    def _predict_shared_trunk(self, models, encoded, batches, pad_id, total) -> None:
        n_layers = self.shared_trunk_layers
        captured: list[torch.Tensor] = []
        hook = _encoder_layers(models[0])[n_layers - 1].register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            for idx in batches:
                batch = {k: v.to(self.device) for k, v in collate(encoded, idx, pad_id).items()}
                rows = torch.from_numpy(idx)
                captured.clear()
                with autocast(self.device, self.precision):
                    logits = [models[0](**batch).logits]
                    hidden = captured[0]  # (batch, width, hidden): the output of the last frozen layer
                    for model in models[1:]:
                        with _trunk_given(model, n_layers, hidden):
                            logits.append(model(**batch).logits)
                for fold_logits in logits:
                    total[rows] += torch.softmax(fold_logits.float(), dim=-1).cpu()  # (batch, n_classes)
        finally:
            hook.remove()

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean softmax probabilities of the K folds, shape ``(len(texts), n_classes)``."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.predict_proba_encoded(self.encode(texts), batch_size)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        probs = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]


def check_probabilities(probs: np.ndarray, atol: float = 1e-4) -> None:
    """Sanity check: every row is a probability distribution."""
    if probs.size and not np.allclose(probs.sum(axis=1), 1.0, atol=atol):
        worst = float(np.abs(probs.sum(axis=1) - 1).max())
        raise AssertionError(f"ensemble probabilities do not sum to 1 (worst row off by {worst:.2e})")
