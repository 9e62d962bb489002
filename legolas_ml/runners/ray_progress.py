"""Progress records from Ray fold tasks to the driver: lines that may be lost, never a failed run.

Fold tasks put their "started" and per-epoch records on a ``ray.util.queue.Queue`` (one actor) that
the driver drains while it waits for the folds' results. The results themselves travel as the tasks'
return values, so the queue carries nothing a run needs to finish: issue #27 saw a run fail with
``ActorUnavailableError`` from ``qsize()`` because Ray had placed the queue's actor on the node
that was then killed (5 of 7 runs), while Ray had already scheduled the fold's retry. So the actor
is pinned to the driver's node (a node the run cannot outlive, short of Ray Client), and a queue
that dies anyway only stops the progress lines: the driver warns once, the workers stop sending.

Example:
    >>> progress = ProgressQueue(ray.get_runtime_context().get_node_id())  # doctest: +SKIP
    >>> progress.put({"kind": "epoch", ...})   # in a fold task; False once the queue is gone  # doctest: +SKIP
    >>> events = progress.drain()              # in the driver; [] once the queue is gone  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

from ray.exceptions import ActorUnschedulableError, RayActorError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

#: How the queue actor's loss shows: RayActorError covers ActorDiedError (its node or process died,
#: or it was killed) and ActorUnavailableError (its node is unreachable, not yet declared dead);
#: ActorUnschedulableError: the pinned node was gone before the actor started.
QUEUE_LOST = (RayActorError, ActorUnschedulableError)


class ProgressLostWarning(RuntimeWarning):
    """The progress queue's actor died: the run goes on, its remaining progress lines are lost."""


class ProgressQueue:
    """A progress queue whose actor lives on ``node_id`` and whose loss is lost lines, not an error.

    The object is pickled into every fold task; each copy keeps its own ``lost`` flag, so a worker
    that found the queue gone stops paying for calls to a dead actor.

    Args:
        node_id: the Ray node that holds the queue's actor (the driver's:
            ``ray.get_runtime_context().get_node_id()``). The placement is strict (``soft=False``):
            Ray never moves the actor to a node that the run may lose.

    Attributes:
        node_id: as given.
        lost: ``None`` while the queue works; once a call failed, why (``"ActorDiedError: ..."``).
    """

    def __init__(self, node_id: str) -> None:
        if not (isinstance(node_id, str) and node_id):
            raise ValueError(f"node_id must be a Ray node id (a non-empty hex string), got {node_id!r}")
        self.node_id = node_id
        self.lost: str | None = None
        self._queue = Queue(
            actor_options={
                "num_cpus": 0,  # bookkeeping only: it must never wait for, or take, a fold's CPU
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            }
        )

    def put(self, event: dict[str, Any]) -> bool:
        """Send one record to the driver (in a fold task).

        Returns:
            True when the queue took it; False when the queue is gone (this record and every later
            one from this worker are dropped; the fold trains on).
        """
        if self.lost is not None:
            return False
        try:
            self._queue.put(event)
        except QUEUE_LOST as exc:
            # The driver sees the same loss in drain() and reports it; a worker has no one to tell.
            self.lost = _reason(exc)
            return False
        return True

    def drain(self) -> list[dict[str, Any]]:
        """Every record waiting in the queue, oldest first (in the driver).

        Returns:
            The records; ``[]`` when none is waiting or the queue is gone.

        Warns:
            ProgressLostWarning: once, on the call that finds the queue gone.
        """
        if self.lost is not None:
            return []
        try:
            n = self._queue.qsize()
            return self._queue.get_nowait_batch(n) if n else []
        except QUEUE_LOST as exc:
            self.lost = _reason(exc)
            warnings.warn(
                f"the progress queue's actor is gone ({self.lost}); folds keep training and their results still "
                "arrive, but their remaining 'started' and per-epoch lines are lost",
                ProgressLostWarning,
                stacklevel=2,
            )
            return []

    def kill(self) -> None:
        """End the queue's actor (the run is over, or a test takes it away)."""
        self._queue.shutdown(force=True)

    @property
    def actor(self) -> Any:
        """The queue's actor handle (to ask Ray where it runs)."""
        return self._queue.actor


def _reason(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"
