"""Novelty: how far a conversation is from every example the ensemble was trained on.

Definition. Each text is embedded by fold 0's fine-tuned encoder: the mean of the last hidden
layer over its tokens (padding excluded), L2-normalised. A document's *novelty* is
``1 - max_j cos(e, t_j)``, the cosine distance to its nearest training example ``t_j``.

Threshold. The same distance is measured for every training example against the *other*
training examples (leave-one-out nearest neighbour); a document is novel when its distance is
above the ``quantile`` (default 0.99) of those: farther from the training data than 99% of the
training data is from itself. The threshold therefore adapts to the tenant's data and model, and
is reported with every audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from legolas_ml.training.batching import collate, encode_texts, length_grouped_batches
from legolas_ml.training.checkpoint import load_checkpoint
from legolas_ml.training.modeling import load_tokenizer, model_from_state, resolve_device

_CHUNK = 2048  # query rows per similarity block: bounds memory at CHUNK x n_reference floats


@torch.no_grad()
def embed_texts(checkpoint: str | Path, texts: Sequence[str], device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised last-layer embeddings ``(n, hidden)`` from one fold checkpoint (fp32)."""
    state, meta = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model = model_from_state(meta["model_config"], state).to(torch_device)
    config = meta["training_config"]
    tokenizer = load_tokenizer(config["model_name"])
    encoded = encode_texts(tokenizer, list(texts), config["max_length"], config["truncation_side"])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    pad_id = tokenizer.pad_token_id or 0
    for idx in length_grouped_batches(encoded.lengths, batch_size):
        batch = {k: v.to(torch_device) for k, v in collate(encoded, idx, pad_id).items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()  # (batch, seq, hidden)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (batch, hidden)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out


def nearest_distance(queries: np.ndarray, references: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Cosine distance ``(n_queries,)`` from each (normalised) query to its nearest reference.

    Args:
        exclude_self: ``queries`` are ``references`` (same rows): each row's own match is ignored.
    """
    if len(references) == 0:
        return np.ones(len(queries), dtype=np.float32)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _CHUNK):
        sims = queries[start : start + _CHUNK] @ references.T  # (chunk, n_reference)
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        out[start : start + _CHUNK] = 1.0 - sims.max(axis=1)
    return np.clip(out, 0.0, 2.0)


@dataclass(frozen=True)
class NoveltyModel:
    """Training embeddings and the distance above which a document is novel."""

    training: np.ndarray  # (n_train, hidden), normalised
    threshold: float
    quantile: float

    @classmethod
    def fit(cls, training: np.ndarray, quantile: float = 0.99) -> "NoveltyModel":
        """The threshold is the ``quantile`` of the training examples' leave-one-out nearest distances.

        Raises:
            ValueError: if ``quantile`` is not in (0, 1], or there are fewer than 2 training examples.
        """
        if not 0 < quantile <= 1:
            raise ValueError(f"novelty quantile must be in (0, 1], got {quantile}")
        if len(training) < 2:
            raise ValueError(f"novelty needs at least 2 training examples, got {len(training)}")
        loo = nearest_distance(training, training, exclude_self=True)
        return cls(training=training, threshold=float(np.quantile(loo, quantile)), quantile=quantile)

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        return nearest_distance(embeddings, self.training)
