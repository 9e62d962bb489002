"""The tenant's evaluation holdout: human-reviewed sessions that no training of the tenant ever uses.

Every candidate and the champion are compared on the same sessions, so their numbers are
comparable across versions (each run's own test split is drawn from its own dataset and is not).
Membership is decided by a hash of ``(tenant, session_id)`` alone:

* **stable**: a session in the holdout stays there for ever, whatever else arrives, so a session
  that was held out can never leak into a later training;
* **growing**: about ``share`` of every new human review lands in it;
* **stratified in expectation**: the hash does not look at the label, so every class is held out
  at the same rate ``share`` (a rare class gets few sessions: its per-class size is reported and
  the promotion rule skips the recall test for classes with too little support).

Sessions in the holdout bucket are removed from training whatever their source: an LLM-labelled
session in the bucket is not evaluated (no human label yet) but is not trained on either, because
a reviewer may label it later and it would then evaluate a model that saw it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

DEFAULT_HOLDOUT_SHARE = 0.2


def validate_share(share: float) -> float:
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        raise ValueError(f"holdout_share must be a number strictly between 0 and 1, got {share!r}")
    return float(share)


def in_holdout(tenant: str, session_id: str, share: float = DEFAULT_HOLDOUT_SHARE) -> bool:
    """Whether the session belongs to the tenant's evaluation holdout (deterministic, label-blind)."""
    digest = hashlib.sha256(f"legolas-holdout\x1f{tenant}\x1f{session_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass
class HoldoutSplit:
    """A gated dataset divided into what may be trained on and the evaluation holdout.

    Attributes:
        training: rows outside the holdout bucket (any source).
        holdout: human-reviewed rows in the bucket: the shared evaluation set.
        excluded_unreviewed: LLM-labelled rows in the bucket: neither trained on nor evaluated.
    """

    training: pd.DataFrame
    holdout: pd.DataFrame
    excluded_unreviewed: int
    share: float
    per_class: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "n": len(self.holdout),
            "per_class": self.per_class,
            "excluded_unreviewed": self.excluded_unreviewed,
            "training_rows": len(self.training),
        }


def split_holdout(dataset: pd.DataFrame, tenant: str, share: float = DEFAULT_HOLDOUT_SHARE) -> HoldoutSplit:
    """Divide the quality gate's dataset (columns session_id, text, label, source) by holdout membership.

    Example:
        >>> split = split_holdout(gate_result.dataset, "acme")      # doctest: +SKIP
        >>> split.training, split.holdout                             # doctest: +SKIP
    """
    share = validate_share(share)
    if dataset.empty:
        return HoldoutSplit(dataset, dataset.iloc[0:0], 0, share)
    bucket = dataset["session_id"].astype(str).map(lambda sid: in_holdout(tenant, sid, share))
    human = dataset["source"] == "human"
    holdout = dataset[bucket & human].reset_index(drop=True)
    return HoldoutSplit(
        training=dataset[~bucket].reset_index(drop=True),
        holdout=holdout,
        excluded_unreviewed=int((bucket & ~human).sum()),
        share=share,
        per_class={str(k): int(v) for k, v in holdout["label"].value_counts().sort_index().items()},
    )
