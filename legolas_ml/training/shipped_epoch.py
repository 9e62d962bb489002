"""Which epoch a fold ships: the best one that rewind early stopping would have kept.

The design notes ask for two things that pull apart: rewind early stopping (stop at trigger epoch
``T`` and go back to epoch ``R = T - patience``) and "the best model by balanced accuracy, one file
per fold". Shipping the best balanced-accuracy epoch over *all* epochs ignores the rewind (the
epochs after ``R`` are the ones early stopping judged to be over-trained); shipping epoch ``R``
ignores balanced accuracy. LEGOLAS ships **the best balanced-accuracy epoch among the epochs up to
the rewind point**: what training would have kept had it stopped there. Without a stop every epoch
is eligible.

An epoch becomes eligible once no stop can rewind before it: after epoch ``e + delay`` (with
``delay = patience``) or at the end of a run that did not stop. Until then its weights wait in a
temporary safetensors file beside the checkpoint (never in memory: the old ring buffer kept
``patience + 1`` CPU copies, 6 x 1.3 GB for BERT-large), and only epochs that could still win are
held at all (scores strictly increasing above the best on disk). Leftovers of a killed run are
removed when the next run of the fold starts.
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from legolas_ml.training.checkpoint import BestCheckpoint


class RewindAwareCheckpoint:
    """Offer each epoch to a ``BestCheckpoint`` only once early stopping can no longer rewind past it.

    Args:
        best: the fold's best-epoch checkpoint (decides by its ``monitor`` metric, strictly greater wins).
        delay: epochs an epoch waits before it is eligible: the early-stopping patience, >= 0.

    Attributes:
        held_peak: the most epochs held at once (as temporary files, not in memory).

    Example:
        >>> ship = RewindAwareCheckpoint(BestCheckpoint(path), delay=config.patience)  # doctest: +SKIP
        >>> ship.update(epoch, metrics, model, sidecar)                                # each epoch
        >>> ship.finish(stopped=stopper.should_stop)                                   # at the end
    """

    def __init__(self, best: BestCheckpoint, delay: int) -> None:
        if not isinstance(delay, int) or delay < 0:
            raise ValueError(f"delay must be an integer >= 0 (the early-stopping patience), got {delay!r}")
        self.best = best
        self.delay = delay
        self.held_peak = 0
        # (epoch, score, metrics, weights file, sidecar), increasing in epoch and strictly in score.
        self._held: list[tuple[int, float, dict[str, Any], Path, dict[str, Any]]] = []
        for stale in best.path.parent.glob(self._held_name("*")) if best.path.parent.exists() else ():
            stale.unlink(missing_ok=True)

    def _held_name(self, epoch) -> str:
        return f".{self.best.path.stem}.held-epoch{epoch}.safetensors"

    @property
    def shipped_epoch(self) -> int | None:
        return self.best.best_epoch

    def _release_until(self, last_eligible: int) -> list[str]:
        reasons = []
        while self._held and self._held[0][0] <= last_eligible:
            epoch, _, metrics, path, sidecar = self._held.pop(0)
            saved, reason = self.best.update(epoch, metrics, _StateHolder(load_file(str(path))), sidecar)
            path.unlink(missing_ok=True)
            reasons.append(reason)
        return reasons

    def _drop_held(self) -> None:
        for *_, path, _ in self._held:
            path.unlink(missing_ok=True)
        self._held.clear()

    def update(self, epoch: int, metrics: dict[str, Any], model: torch.nn.Module, sidecar: dict[str, Any]) -> str:
        """Record the epoch just evaluated; return what happened to it and to earlier held epochs."""
        reasons = self._release_until(epoch - self.delay)
        score = float(metrics.get(self.best.monitor, float("nan")))
        bar = max([self.best.best_score] + [s for _, s, *_ in self._held])
        if self.delay == 0:
            reasons.append(self.best.update(epoch, metrics, model, sidecar)[1])
        elif score > bar:
            path = self.best.path.parent / self._held_name(epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            # contiguous clones: safetensors refuses shared storage (tied embeddings)
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}, str(path))
            self._held.append((epoch, score, metrics, path, sidecar))
            self.held_peak = max(self.held_peak, len(self._held))
            reasons.append(f"epoch {epoch}: {self.best.monitor} {score:.4f} held until epoch {epoch + self.delay} (rewind window)")
        else:
            reasons.append(f"epoch {epoch}: {self.best.monitor} {score:.4f} cannot beat {bar:.4f}, not kept")
        return "; ".join(reasons)

    def finish(self, stopped: bool) -> int | None:
        """End of training: after a stop the held epochs lie past the rewind point and are dropped;
        otherwise every held epoch is eligible. Returns the shipped epoch."""
        if stopped:
            self._drop_held()
        else:
            self._release_until(float("inf"))
        return self.shipped_epoch


class _StateHolder:
    """The one method ``BestCheckpoint.update`` calls on a model, over a saved state dict."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
