"""Small synthetic datasets and tiny model configs shared by the tests."""

from __future__ import annotations

import random

import pandas as pd

from legolas_ml.training.config import TrainingConfig

# A 2-layer, hidden-32 BERT built from the bundled model's config: trains in seconds on a CPU.
TINY_OVERRIDES = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}

_WORDS = {
    "billing": ["invoice", "charge", "refund", "payment", "card", "billed"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipped", "package"],
    "account": ["password", "login", "username", "profile", "locked", "email"],
}
_FILLER = ["please", "help", "my", "the", "is", "not", "working", "today", "hello", "thanks", "with", "issue"]


def tiny_config(**changes) -> TrainingConfig:
    values = dict(
        model_init="scratch",
        model_overrides=dict(TINY_OVERRIDES),
        n_folds=3,
        epochs=8,
        batch_size=8,
        lr=5e-3,
        min_delta=1e-4,
        warmup_ratio=0.0,
        max_length=32,
        patience=3,
        precision="fp32",
        device="cpu",
    )
    values.update(changes)
    return TrainingConfig(**values)


def separable_frame(n_per_class: int = 60, classes=("billing", "shipping", "account"), seed: int = 0) -> pd.DataFrame:
    """Texts whose class is given by topic words among neutral filler: learnable, not random."""
    rng = random.Random(seed)
    rows = []
    for label in classes:
        for i in range(n_per_class):
            words = rng.sample(_FILLER, 5) + rng.sample(_WORDS[label], 2)
            rng.shuffle(words)
            rows.append({"session_id": f"{label}-{i:04d}", "text": " ".join(words), "label": label})
    return pd.DataFrame(rows)
