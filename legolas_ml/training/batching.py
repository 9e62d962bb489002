"""Tokenise once, batch by length, pad per batch.

Padding every text to ``max_length`` wastes most of the compute on short conversations. Texts are
tokenised once per dataset version (and cached on disk by content hash, so the K fold processes
do not repeat it), batched with neighbours of similar length, and padded only to the longest text
of each batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from legolas_ml.core.atomic_io import atomic_write


@dataclass
class EncodedTexts:
    """Token ids of a set of texts, as one flat array plus offsets (cheap to slice and to store)."""

    flat: np.ndarray  # (total_tokens,) int32
    offsets: np.ndarray  # (n_texts + 1,) int64; text i is flat[offsets[i]:offsets[i+1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def take(self, indices: Sequence[int]) -> "EncodedTexts":
        seqs = [self.sequence(i) for i in indices]
        return EncodedTexts.from_sequences(seqs)

    @classmethod
    def from_sequences(cls, seqs: Sequence[Sequence[int]]) -> "EncodedTexts":
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)
        return cls(flat=flat, offsets=offsets)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, truncation_side: str = "right") -> EncodedTexts:
    """Tokenise with special tokens and truncation, without padding."""
    tokenizer.truncation_side = truncation_side
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
    return EncodedTexts.from_sequences(ids)


def cache_key(texts: Sequence[str], tokenizer_name: str, max_length: int, truncation_side: str) -> str:
    digest = hashlib.sha256(f"{tokenizer_name}|{max_length}|{truncation_side}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def encode_cached(
    tokenizer, tokenizer_name: str, texts: Sequence[str], max_length: int, truncation_side: str, cache_dir: Path | None
) -> EncodedTexts:
    """``encode_texts`` with an on-disk cache keyed by the texts and tokenizer settings.

    The cache is plain ``.npz`` loaded with ``allow_pickle=False``; a damaged cache file is ignored
    and rewritten rather than trusted.
    """
    if cache_dir is None:
        return encode_texts(tokenizer, texts, max_length, truncation_side)
    path = Path(cache_dir) / f"tokens_{cache_key(texts, tokenizer_name, max_length, truncation_side)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                encoded = EncodedTexts(flat=data["flat"], offsets=data["offsets"])
            if len(encoded) == len(texts):
                return encoded
        except (OSError, ValueError, KeyError):
            pass
    encoded = encode_texts(tokenizer, texts, max_length, truncation_side)
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a name
            np.savez(handle, flat=encoded.flat, offsets=encoded.offsets)

    atomic_write(path, save)
    return encoded


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, generator: np.random.Generator | None = None, mega_factor: int = 50
) -> list[np.ndarray]:
    """Batches of similar-length texts, in random order.

    With a generator: shuffle, cut into mega-batches of ``mega_factor * batch_size``, sort each by
    length and cut into batches, then shuffle the batches (the scheme of HF's length-grouped
    sampler: randomness across epochs, little padding within a batch). Without one: sort all texts
    by length (deterministic, for evaluation).
    """
    n = len(lengths)
    if generator is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = generator.permutation(n)
    mega = mega_factor * batch_size
    batches = []
    for start in range(0, n, mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    generator.shuffle(batches)
    return batches


def collate(encoded: EncodedTexts, indices: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the selected texts to the longest among them."""
    lengths = encoded.lengths[indices]
    width = int(lengths.max())
    input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)  # (batch, width)
    attention = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        seq = encoded.sequence(i)
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention)}
