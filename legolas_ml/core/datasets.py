"""A dataset as the stages pass it: JSON lines on disk, and its content hash (the data version)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from legolas_ml.core.atomic_io import write_text_atomic


def write_dataset(path: Path, rows) -> Path:
    """Write a dataset (a DataFrame or records) as JSON lines, atomically."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return write_text_atomic(path, lines)


def read_dataset(path: str | Path):
    """Read a dataset written by ``write_dataset`` into a DataFrame (every column kept as written)."""
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return pd.DataFrame.from_records(records, columns=["session_id", "text", "label", "source"])


def content_hash(dataset: pd.DataFrame) -> str:
    """Hash of the (session_id, text, label) rows in any order: the dataset's data version downstream.

    The source column is left out: the same sessions with the same labels train the same model.
    """
    missing = [c for c in ("session_id", "text", "label") if c not in dataset.columns]
    if missing:
        raise ValueError(f"dataset lacks columns {missing}; has {list(dataset.columns)}")
    digest = hashlib.sha256()
    rows = zip(dataset["session_id"].astype(str), dataset["text"].astype(str), dataset["label"].astype(str))
    for row in sorted(rows):
        digest.update("\x1f".join(row).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]
