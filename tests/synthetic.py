"""Small synthetic datasets and tiny model configs shared by the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

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

#: The epochs a tiny from-scratch model gets in the Dagster tests. It can sit for several epochs on
#: its first plateau (one class predicted, balanced accuracy 1/C), and the promotion rule's chance
#: test then rejects it: with few epochs a test passed or failed with any change to the
#: random stream (dropout, init). Measured on the demo tenant (400 conversations, 90 reviews),
#: seeds 0-9 and 42: 2 folds with 4 epochs left a fold at chance in 5 of 11 runs, with 8 in 1
#: of 11, with 12 in none; with 16, none in 44 runs (2 and 3 folds, min_delta 1e-4 and 1e-3).
TINY_EPOCHS = 16

#: TrainingResource settings of the tiny model (in-process Dagster runs).
TINY_TRAINING = dict(
    model_init="scratch",
    model_overrides_json=json.dumps(TINY_OVERRIDES),
    epochs=TINY_EPOCHS,
    lr=5e-3,
    batch_size=8,
    max_length=48,
    min_delta=1e-4,
)


def tiny_env(**changes: str) -> dict[str, str]:
    """The tiny model's settings as ``LEGOLAS_*`` variables, for tests that start the CLI or the daemon.

    ``changes`` overrides or adds variables by name (``LEGOLAS_N_FOLDS="2"``).
    """
    env = {
        "LEGOLAS_MODEL_INIT": TINY_TRAINING["model_init"],
        "LEGOLAS_MODEL_OVERRIDES": TINY_TRAINING["model_overrides_json"],
        "LEGOLAS_EPOCHS": str(TINY_EPOCHS),
        "LEGOLAS_LR": str(TINY_TRAINING["lr"]),
        "LEGOLAS_BATCH_SIZE": str(TINY_TRAINING["batch_size"]),
        "LEGOLAS_MAX_LENGTH": str(TINY_TRAINING["max_length"]),
        "LEGOLAS_PRECISION": "fp32",
    }  # min_delta has no variable: the CLI and the daemon run the default 1e-3
    return {**env, **changes}


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


def untrained_folds(out_dir, labels=("billing", "shipping", "account"), n_folds: int = 2, **changes) -> list[str]:
    """``n_folds`` checkpoints of the tiny model as built (no training), with the sidecar a trained fold has.

    For tests of what consumes checkpoints (the ensemble, the served model): a second, not a training.
    """
    from pathlib import Path

    import torch

    from legolas_ml.training.checkpoint import save_checkpoint
    from legolas_ml.training.modeling import build_model

    config = tiny_config(**changes)
    paths = []
    for fold in range(n_folds):
        model = build_model(config.replace(seed=config.seed + fold), list(labels))  # each fold its own weights
        sidecar = {"epoch": 0, "metrics": {}, "labels": list(labels), "model_config": model.config.to_dict(),
                   "training_config": config.to_dict(), "fold": fold}
        paths.append(str(save_checkpoint(Path(out_dir) / f"best_model_text_tiny_fold{fold}.safetensors", model.state_dict(), sidecar)))
    return paths


def train_a_fold_until_killed(folds_dir: str, ready) -> None:
    """A child process's work in tests that SIGKILL a training: set ``ready``, then train fold 0 for 400 epochs.

    Run from a ``forkserver`` that preloaded this module and the trainer, so each child starts in
    milliseconds instead of importing torch again.
    """
    from legolas_ml.training.cross_validation import encode_dataset, plan_splits, train_plan_fold

    df = separable_frame(20)
    cfg = tiny_config(n_folds=2, epochs=400, patience=400, batch_size=4)
    data, plan = encode_dataset(df, cfg), plan_splits(df, cfg)
    ready.set()
    train_plan_fold(data, plan, 0, cfg, Path(folds_dir), data_version="v1")
