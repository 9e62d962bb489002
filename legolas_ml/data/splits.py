"""Stratified held-out test set and stratified K folds, expressed as ``session_id`` lists.

Splits are lists of session ids (not row positions) so that they can be stored, audited and
compared across runs. The input is sorted by ``session_id`` first, which makes a split depend only
on the data and the seed, never on the order in which the store returned the documents.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sklearn.model_selection import StratifiedKFold, train_test_split


@dataclass(frozen=True)
class Fold:
    """One fold: the sessions it trains on and the sessions it validates on."""

    index: int
    train_ids: list[str]
    val_ids: list[str]


@dataclass(frozen=True)
class SplitPlan:
    """A held-out test set plus the folds over the remaining training pool."""

    test_ids: list[str]
    folds: list[Fold]
    seed: int
    kfold: bool

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def fingerprint(self) -> str:
        """A content hash of the assignment: two plans with the same hash split identically."""
        payload = json.dumps(
            {"test": self.test_ids, "folds": [[f.train_ids, f.val_ids] for f in self.folds]},
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, values: dict) -> "SplitPlan":
        folds = [Fold(**f) for f in values["folds"]]
        plan = cls(test_ids=list(values["test_ids"]), folds=folds, seed=values["seed"], kfold=values["kfold"])
        if "fingerprint" in values and values["fingerprint"] != plan.fingerprint():
            raise ValueError("split plan fingerprint does not match its content: the file was altered")
        return plan

    @classmethod
    def load(cls, path) -> "SplitPlan":
        """The plan written at ``path`` (``stratified_splits``' file), its fingerprint verified."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


def make_splits(
    session_ids: Sequence[str],
    labels: Sequence[str],
    *,
    test_size: float = 0.2,
    n_folds: int = 10,
    seed: int = 42,
    kfold: bool = True,
    val_size: float = 0.2,
) -> SplitPlan:
    """Split sessions into a stratified test set and stratified folds (or one train/val split).

    Args:
        session_ids: one unique id per labelled session.
        labels: the class of each session, aligned with ``session_ids``.
        test_size: share of sessions held out for the final test, stratified by class.
        n_folds: K of ``StratifiedKFold`` over the rest (K-fold mode).
        seed: random state of both splitters.
        kfold: ``False`` for a single stratified train/val split (quick development runs).
        val_size: validation share of the training pool when ``kfold=False``.

    Returns:
        A ``SplitPlan`` whose folds partition the non-test sessions.

    Raises:
        ValueError: on duplicate ids, mismatched lengths, fewer than 2 classes, or a class too
            small to appear in the test set and in every fold (the message names the class).
    """
    if len(session_ids) != len(labels):
        raise ValueError(f"session_ids and labels differ in length: {len(session_ids)} vs {len(labels)}")
    duplicates = [sid for sid, n in Counter(session_ids).items() if n > 1]
    if duplicates:
        raise ValueError(f"session_ids must be unique; duplicated: {duplicates[:5]}")
    pairs = sorted(zip(map(str, session_ids), labels))
    ids = [p[0] for p in pairs]
    ys = [p[1] for p in pairs]
    counts = Counter(ys)
    if len(counts) < 2:
        raise ValueError(f"need at least 2 classes to split, got {dict(counts)}")
    too_small = {c: n for c, n in counts.items() if n < 2}
    if too_small:
        raise ValueError(f"every class needs at least 2 sessions for a stratified test split; too small: {too_small}")

    train_pool, test_ids, pool_labels, _ = train_test_split(
        ids, ys, test_size=test_size, stratify=ys, random_state=seed
    )
    if kfold:
        pool_counts = Counter(pool_labels)
        short = {c: n for c, n in sorted(pool_counts.items()) if n < n_folds}
        if short:
            detail = ", ".join(f"{c!r} has {n}" for c, n in short.items())
            raise ValueError(
                f"n_folds={n_folds} needs at least {n_folds} sessions of every class after the test split; "
                f"{detail} (lower n_folds or label more sessions)"
            )
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = [
            Fold(index=k, train_ids=sorted(train_pool[i] for i in tr), val_ids=sorted(train_pool[i] for i in va))
            for k, (tr, va) in enumerate(splitter.split(train_pool, pool_labels))
        ]
    else:
        train_ids, val_ids = train_test_split(
            train_pool, test_size=val_size, stratify=pool_labels, random_state=seed
        )
        folds = [Fold(index=0, train_ids=sorted(train_ids), val_ids=sorted(val_ids))]
    return SplitPlan(test_ids=sorted(test_ids), folds=folds, seed=seed, kfold=kfold)


def class_proportions(ids: Sequence[str], label_of: dict[str, str], classes: Sequence[str]) -> dict[str, float]:
    """Share of each class among ``ids`` (0 for a class that is absent)."""
    counts = Counter(label_of[i] for i in ids)
    n = max(len(ids), 1)
    return {c: counts.get(c, 0) / n for c in classes}
