"""When to retrain, and what a retraining sensor tick does. Framework-free.

A review cursor is ``(reviewed_at, str(_id))``, compared on both fields, so reviews sharing a
timestamp are neither lost nor counted twice. Reviews are *consumed* when a run that trained on
them recorded a decision (promoted or rejected: ``ModelRegistry.consumed_reviews``), not when a
run is requested: a failed run is retried with a bounded backoff (``plan_tick``) and its reviews
keep waiting, across failures, daemon restarts and store outages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, order=True)
class ReviewCursor:
    reviewed_at: datetime
    review_id: str

    def serialize(self) -> str:
        return json.dumps({"reviewed_at": self.reviewed_at.isoformat(), "id": self.review_id})

    @classmethod
    def parse(cls, text: str | None) -> "ReviewCursor | None":
        """The cursor stored by ``serialize``; ``None`` for an empty cursor.

        Raises:
            ValueError: if the text is not a cursor (a corrupted cursor must not silently restart at 0).
        """
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(datetime.fromisoformat(data["reviewed_at"]), str(data["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable review cursor {text!r}: {exc}") from None

    @classmethod
    def of(cls, review: dict) -> "ReviewCursor":
        return cls(review["reviewed_at"], str(review["_id"]))

    def as_tuple(self) -> tuple[datetime, str]:
        return (self.reviewed_at, self.review_id)

    def __str__(self) -> str:
        return f"{self.reviewed_at.isoformat()}/{self.review_id}"


@dataclass(frozen=True)
class RetrainPolicy:
    """Retrain when ``threshold`` new reviews arrived, or the oldest waiting one is older than ``max_age``.

    Args:
        threshold: new reviews that trigger a retraining, >= 1.
        max_age: ``None`` (off) or how long a review may wait for a retraining.
    """

    threshold: int = 50
    max_age: timedelta | None = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold}")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError(f"max_age must be None or positive, got {self.max_age}")

    def decide(self, n_new: int, oldest: datetime | None, now: datetime) -> tuple[bool, str]:
        """(retrain?, the reason in words, with the counts)."""
        if n_new >= self.threshold:
            return True, f"{n_new} new reviews >= threshold {self.threshold}"
        if n_new and self.max_age is not None and oldest is not None and now - oldest >= self.max_age:
            return True, f"{n_new} new reviews, the oldest waiting {now - oldest} >= max age {self.max_age}"
        waited = f", oldest waiting {now - oldest}" if n_new and oldest is not None else ""
        return False, f"{n_new} new reviews, threshold {self.threshold}{waited}"


IN_PROGRESS, SUCCEEDED, FAILED = "in_progress", "succeeded", "failed"


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed retraining is retried: after ``backoff`` doubled per attempt, at most ``max_backoff``,
    and at most ``max_attempts`` runs for the same reviews (then it waits for newer reviews).

    Args:
        backoff: wait after the first failure, > 0.
        max_backoff: the longest wait, >= backoff.
        max_attempts: runs of the same reviews, >= 1.
    """

    backoff: timedelta = timedelta(minutes=1)
    max_backoff: timedelta = timedelta(hours=1)
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.backoff <= timedelta(0) or self.max_backoff < self.backoff:
            raise ValueError(f"backoff must be > 0 and max_backoff >= backoff, got {self.backoff} and {self.max_backoff}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")

    def wait_after(self, attempt: int) -> timedelta:
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


@dataclass(frozen=True)
class PendingRetraining:
    """A requested retraining whose decision has not been recorded yet."""

    target: ReviewCursor  # the newest waiting review when it was requested
    attempt: int
    request_id: str  # the run's `legolas/request` tag

    def to_dict(self) -> dict:
        return {"target": self.target.serialize(), "attempt": self.attempt, "request_id": self.request_id}

    @classmethod
    def from_dict(cls, data: dict) -> "PendingRetraining":
        return cls(ReviewCursor.parse(data["target"]), int(data["attempt"]), str(data["request_id"]))


def request_id(tenant: str, target: ReviewCursor, attempt: int) -> str:
    digest = hashlib.sha256(f"{tenant}\x1f{target}\x1f{attempt}".encode()).hexdigest()[:12]
    return f"{tenant}-{digest}-{attempt}"


def parse_sensor_state(text: str | None) -> PendingRetraining | None:
    """The sensor's cursor: the pending retraining, if any. Older cursors (a bare review cursor) hold none.

    Raises:
        ValueError: if the text is not a cursor LEGOLAS wrote.
    """
    if not text:
        return None
    try:
        data = json.loads(text)
        if "reviewed_at" in data:  # the pre-registry cursor: what is consumed now comes from the registry
            return None
        return PendingRetraining.from_dict(data["pending"]) if data.get("pending") else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable retraining sensor cursor {text!r}: {exc}") from None


def serialize_sensor_state(pending: PendingRetraining | None) -> str:
    return json.dumps({"pending": pending.to_dict() if pending else None})


@dataclass(frozen=True)
class TickPlan:
    """What one sensor tick does: request a run (with its id and attempt) or skip, and why."""

    request: PendingRetraining | None
    reason: str
    pending: PendingRetraining | None  # the state to store as the sensor's cursor


def plan_tick(
    tenant: str,
    consumed: ReviewCursor | None,
    waiting: list[dict],
    pending: PendingRetraining | None,
    run_status: Callable[[str], tuple[str, datetime | None]],
    now: datetime,
    policy: RetrainPolicy,
    retry: RetryPolicy,
) -> TickPlan:
    """Decide one tick of the retraining sensor. Reviews count as consumed only when a run that read
    them recorded a decision (``consumed``, from the registry); a run that failed is retried.

    Args:
        tenant: the tenant watched.
        consumed: the newest review a decided training read (``ModelRegistry.consumed_reviews``).
        waiting: the reviews after ``consumed``, oldest first (dicts with ``reviewed_at`` and ``_id``).
        pending: the retraining requested earlier and not yet decided, from the sensor's cursor.
        run_status: ``request_id -> (IN_PROGRESS | SUCCEEDED | FAILED, finished_at)`` of its latest run;
            a run that cannot be found counts as failed.
        now: the tick's time (naive UTC, like the stored review times).
        policy: when enough reviews wait.
        retry: how failed runs are retried.
    """
    newest = ReviewCursor.of(waiting[-1]) if waiting else None
    waits = f"{len(waiting)} reviews waiting after {consumed or 'the first review'}"
    if waiting:
        waits += f", oldest since {waiting[0]['reviewed_at'].isoformat(timespec='seconds')}"
    if pending is not None and consumed is not None and consumed >= pending.target:
        pending = None  # its run (or a later one) decided: those reviews are consumed
    if pending is not None:
        status, finished_at = run_status(pending.request_id)
        if status == IN_PROGRESS:
            return TickPlan(None, f"tenant {tenant}: retraining {pending.request_id} (attempt {pending.attempt}) is running; {waits}", pending)
        # A run that succeeded without recording a decision (e.g. a partial selection) is retried like a failure.
        what = "ended without a decision" if status == SUCCEEDED else "failed"
        if newest is not None and newest > pending.target and pending.attempt >= retry.max_attempts:
            pending = None  # newer reviews arrived since it gave up: start afresh below
        elif pending.attempt >= retry.max_attempts:
            return TickPlan(
                None,
                f"tenant {tenant}: gave up after {pending.attempt} runs of the reviews up to {pending.target} ({what}); "
                f"waiting for newer reviews or a manual run of training_job; {waits}",
                pending,
            )
        else:
            due = (finished_at or now) + retry.wait_after(pending.attempt)
            if now < due:
                return TickPlan(
                    None,
                    f"tenant {tenant}: retraining {pending.request_id} {what} (attempt {pending.attempt}/{retry.max_attempts}); "
                    f"retry in {due - now} (backoff {retry.wait_after(pending.attempt)}); {waits}",
                    pending,
                )
            target = max(newest, pending.target) if newest is not None else pending.target
            attempt = pending.attempt + 1
            request = PendingRetraining(target, attempt, request_id(tenant, target, attempt))
            return TickPlan(request, f"tenant {tenant}: retrying after run {pending.request_id} {what} (attempt {attempt}/{retry.max_attempts}); {waits}", request)
    retrain, reason = policy.decide(len(waiting), waiting[0]["reviewed_at"] if waiting else None, now)
    if not retrain or newest is None:
        return TickPlan(None, f"tenant {tenant}: {reason}; consumed up to {consumed or 'nothing yet'}", None)
    request = PendingRetraining(newest, 1, request_id(tenant, newest, 1))
    return TickPlan(request, f"tenant {tenant}: {reason}; {waits}", request)
