"""Warm start: a retraining's fold starts from the champion's fold weights, not from the pretrained model.

Why: a retraining learns from a few hundred corrected labels. Started from the pretrained encoder it
must relearn the whole task from them (and from whatever else the gate keeps), and it comes out
weaker than the champion it should replace; started from the champion, it keeps what the champion
learned and moves only where the new labels disagree with it (issue #28, ``docs/loop_rounds.md``).

Fold ``k`` starts from the champion's fold ``k mod K_champion``. Every tensor of the same name and
shape is copied. The classification head is copied row by row **by class name**: a class the
champion did not know keeps its fresh initialisation, and a class order that differs is mapped.
A checkpoint of another architecture (a different model, other overrides) is refused with the
names of the tensors that do not fit: silently training half a model from scratch is never a warm
start.

The champion's folds saw some of the sessions that the new split puts in validation or test, so a
warm-started run's CV and test numbers are optimistic; the tenant's holdout (never trained on by
any version) is what the promotion rule compares, and it is not affected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from legolas_ml.training.checkpoint import load_checkpoint

#: Names of the classification head's tensors (one row per class) in Hugging Face sequence classifiers.
_HEAD_PREFIXES = ("classifier.", "score.")


def checkpoint_for_fold(init_checkpoints: Sequence[str], fold: int) -> str | None:
    """The checkpoint fold ``fold`` starts from, or ``None`` without warm start.

    Example:
        >>> checkpoint_for_fold(["a", "b", "c"], 4)
        'b'
    """
    if not init_checkpoints:
        return None
    return init_checkpoints[fold % len(init_checkpoints)]


def _is_head(name: str, tensor: torch.Tensor, n_labels: int) -> bool:
    # classifier.weight/bias (BERT), classifier.out_proj.* (RoBERTa), score.* (decoder classifiers)
    return name.startswith(_HEAD_PREFIXES) and tensor.dim() >= 1 and tensor.shape[0] == n_labels


def warm_start(model: torch.nn.Module, checkpoint: str | Path, labels: Sequence[str]) -> dict[str, int | list[str]]:
    """Load a champion fold's weights into ``model`` (built for ``labels``), in place.

    Args:
        model: a freshly built classifier for ``labels``.
        checkpoint: a fold checkpoint (``.safetensors`` with its sidecar) of the champion.
        labels: the new training's classes, the row order of ``model``'s head.

    Returns:
        ``{"copied": tensors copied whole, "head_rows": class rows copied into the head,
        "new_classes": classes the champion did not know}``.

    Raises:
        ValueError: if a tensor of the checkpoint has no counterpart of the same shape in ``model``
            (another architecture), naming up to five of them and the checkpoint.
    """
    state, meta = load_checkpoint(checkpoint)
    old_labels = list(meta.get("labels") or [])
    labels = list(labels)
    target = model.state_dict()
    copied, head_rows, misfits = 0, 0, []
    old_index = {c: i for i, c in enumerate(old_labels)}
    shared = [(new, old_index[c]) for new, c in enumerate(labels) if c in old_index]
    with torch.no_grad():
        for name, tensor in state.items():
            if name not in target:
                misfits.append(name)
                continue
            mine = target[name]
            if _is_head(name, tensor, len(old_labels)) and _is_head(name, mine, len(labels)) and tensor.shape[1:] == mine.shape[1:]:
                for new, old in shared:
                    mine[new].copy_(tensor[old].to(mine.dtype))
                head_rows += len(shared)
            elif mine.shape == tensor.shape:
                mine.copy_(tensor.to(mine.dtype))
                copied += 1
            else:
                misfits.append(f"{name} {tuple(tensor.shape)} vs {tuple(mine.shape)}")
    if misfits:
        raise ValueError(
            f"warm start from {checkpoint}: its weights do not fit this model ({len(misfits)} tensors, e.g. "
            f"{misfits[:5]}); the champion was trained with another model or model_overrides. Train without "
            "warm start (LEGOLAS_WARM_START=0) or with the champion's model."
        )
    model.load_state_dict(target)
    return {"copied": copied, "head_rows": head_rows, "new_classes": [c for c in labels if c not in old_index]}
