"""Out-of-fold probabilities: each training session scored by the one fold model that never trained on it.

In K-fold training every session of the training pool sits in exactly one fold's validation set,
so fold k's model on fold k's validation sessions gives probabilities as honest as on unseen data,
for every session the ensemble was trained on (the ensemble's own probabilities on them are
optimistic: K-1 of its K members learned their labels). Sessions outside the folds (the test
split, the holdout, documents that were never training data) use the whole ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from legolas_ml.data.splits import SplitPlan
from legolas_ml.evaluation.ensemble import FoldEnsemble
from legolas_ml.training.checkpoint import CheckpointError, read_sidecar


def validation_fold_of(plan: SplitPlan) -> dict[str, int]:
    """``session_id -> k`` for the fold whose validation set holds the session.

    Raises:
        ValueError: if a session is in two validation sets (not a K-fold plan).
    """
    fold_of: dict[str, int] = {}
    for fold in plan.folds:
        for sid in fold.val_ids:
            if sid in fold_of:
                raise ValueError(f"session {sid!r} is in the validation sets of folds {fold_of[sid]} and {fold.index}")
            fold_of[sid] = fold.index
    return fold_of


def out_of_fold_probabilities(
    checkpoints: Sequence[str | Path],
    plan: SplitPlan,
    texts: Mapping[str, str],
    labels: Sequence[str],
    device: str = "auto",
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Probabilities ``(n_classes,)`` per session of ``texts`` that a fold validated, from that fold's model.

    Args:
        checkpoints: the folds' checkpoints; ``checkpoints[k]`` must be fold ``k`` (checked in its sidecar).
        plan: the split the folds were trained on.
        texts: ``session_id -> text`` of the sessions wanted; sessions no fold validated are skipped.
        labels: the ensemble's classes, the column order of the result.

    Raises:
        CheckpointError: if a checkpoint is another fold's, or has other classes than ``labels``.
    """
    if len(checkpoints) != plan.n_folds:
        raise ValueError(f"the plan has {plan.n_folds} folds but {len(checkpoints)} checkpoints were given")
    fold_of = validation_fold_of(plan)
    wanted: dict[int, list[str]] = {}
    for sid in texts:
        if sid in fold_of:
            wanted.setdefault(fold_of[sid], []).append(sid)
    out: dict[str, np.ndarray] = {}
    for k, ids in sorted(wanted.items()):
        meta = read_sidecar(checkpoints[k])
        if meta.get("fold") is not None and meta["fold"] != k:
            raise CheckpointError(f"{checkpoints[k]} is fold {meta['fold']}, expected fold {k}")
        if list(meta["labels"]) != list(labels):
            raise CheckpointError(f"{checkpoints[k]} has classes {meta['labels']}, the ensemble has {list(labels)}")
        model = FoldEnsemble([checkpoints[k]], device=device, precision=precision, resident=False)
        probs = model.predict_proba([texts[sid] for sid in ids])  # (len(ids), n_classes)
        out.update(zip(ids, probs))
    return out
