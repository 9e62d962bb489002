"""The K fold models as one classifier: the mean of their softmax probabilities.

``p(c | x) = (1/K) * sum_k softmax(f_k(x))_c``; each row sums to 1 (``check_probabilities``).
Models stay resident when they fit in the memory budget and are otherwise loaded one at a time,
so inference memory is bounded by one model plus one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from legolas_ml.training.batching import EncodedTexts, collate, encode_texts, length_grouped_batches
from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint, read_sidecar
from legolas_ml.training.modeling import autocast, load_tokenizer, model_from_state, resolve_device, resolve_precision

#: The precision of every reported number (test metrics, the holdout comparison, IG). Folds may
#: train in bf16; evaluating in one precision keeps the evaluated mistakes and the explained ones equal.
EVAL_PRECISION = "fp32"


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

    Raises:
        CheckpointError: if a file is corrupt, or the folds disagree on labels, tokenizer or max length.
    """

    def __init__(
        self,
        checkpoint_paths: Sequence[str | Path],
        device: str = "auto",
        precision: str = "auto",
        resident: bool | None = None,
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
        self.tokenizer = load_tokenizer(self.model_name)
        weight_bytes = sum(p.stat().st_size for p in self.paths)
        if resident is None:
            resident = weight_bytes < available_memory_bytes(self.device) // 2
        self.resident = resident
        self._resident: dict[int, torch.nn.Module] = {}

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
        for model in self.models():
            for idx in batches:
                batch = {k: v.to(self.device) for k, v in collate(encoded, idx, pad_id).items()}
                with autocast(self.device, self.precision):
                    logits = model(**batch).logits
                total[torch.from_numpy(idx)] += torch.softmax(logits.float(), dim=-1).cpu()  # (batch, n_classes)
        return (total / len(self.paths)).numpy()

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
