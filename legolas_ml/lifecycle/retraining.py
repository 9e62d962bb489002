"""When to retrain, and what a retraining sensor tick does. Framework-free.

A review cursor is a review's ``seq``: the number the store gave it when it received it
(``TenantStore.insert_review``), per tenant and increasing. Reviews are counted in the order the
store received them, whatever their ``reviewed_at`` says (older, in the future, or a string).
Reviews are *consumed* when a run that trained on them recorded a decision (promoted or rejected:
``ModelRegistry.consumed_reviews``), not when a run is requested: a failed run is retried with a
bounded backoff (``plan_tick``) and its reviews keep waiting, across failures, daemon restarts and
store outages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from legolas_ml.core.review_cursor import ReviewCursor


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
        age = waited_for(oldest, now) if oldest is not None else None
        future = " (dated in the future)" if oldest is not None and oldest > now else ""
        if n_new and self.max_age is not None and age is not None and age >= self.max_age:
            return True, f"{n_new} new reviews, the oldest waiting {age} >= max age {self.max_age}"
        waited = f", oldest waiting {age}{future}" if n_new and age is not None else ""
        return False, f"{n_new} new reviews, threshold {self.threshold}{waited}"


def waited_for(reviewed_at: datetime, now: datetime) -> timedelta:
    """How long a review has waited, never negative: a review dated after ``now`` (clock skew between
    the reviewing tool and this machine, or test data) has waited 0, not "-402 days". Whole seconds."""
    return max(timedelta(seconds=int((now - reviewed_at).total_seconds())), timedelta(0))


def dated_in_future(reviews: list[dict], now: datetime) -> int:
    """How many of ``reviews`` have a ``reviewed_at`` after ``now`` (both naive UTC)."""
    return sum(1 for review in reviews if isinstance(review.get("reviewed_at"), datetime) and review["reviewed_at"] > now)


def oldest_reviewed(reviews: list[dict]) -> datetime | None:
    """The earliest ``reviewed_at`` among ``reviews`` that have a datetime one (what people read as
    "waiting since"); ``None`` if none has. Reviews are ordered and counted by ``seq``, never by this."""
    return min((r["reviewed_at"] for r in reviews if isinstance(r.get("reviewed_at"), datetime)), default=None)


IN_PROGRESS, SUCCEEDED, FAILED = "in_progress", "succeeded", "failed"


@dataclass(frozen=True)
class ReviewBacklog:
    """The tenant's human reviews as the retraining sees them: how many, and how many wait.

    ``waiting`` counts reviews received after ``consumed`` (the newest review any recorded training
    read, a waiting challenger's included: ``ModelRegistry.trained_reviews``), i.e. reviews no
    training has seen, whatever their ``reviewed_at``; ``not_learned`` counts those the model in
    service never learned (reviews read by rejected candidates or a waiting challenger too).
    ``oldest_waiting`` is the earliest datetime ``reviewed_at`` among the waiting ones, for people
    and the age rule.
    """

    total: int
    waiting: int
    oldest_waiting: datetime | None
    newest_waiting: ReviewCursor | None
    consumed: ReviewCursor | None
    future_dated: int = 0  # waiting reviews dated after the time they were counted: their age counts as 0
    not_learned: int | None = None  # reviews received after the champion's training read (None: not counted)

    @classmethod
    def of(
        cls, total: int, consumed: ReviewCursor | None, waiting: list[dict], now: datetime | None = None, waiting_count: int | None = None,
    ) -> "ReviewBacklog":
        """From the store's review count and the reviews after ``consumed`` in received order, counted at
        ``now`` (naive UTC like the stored review times; default: the current time).

        Args:
            waiting_count: how many reviews wait when ``waiting`` was read with a limit and holds
                only the oldest of them; default ``len(waiting)``.
        """
        count = len(waiting) if waiting_count is None else waiting_count
        if total < count:
            raise ValueError(f"total must count every review, got total {total} < {count} waiting")
        now = now or datetime.now(timezone.utc).replace(tzinfo=None)
        return cls(
            total=total, waiting=count, oldest_waiting=oldest_reviewed(waiting),
            newest_waiting=ReviewCursor.of(waiting[-1]) if waiting else None, consumed=consumed,
            future_dated=dated_in_future(waiting, now),
        )

    def describe(self) -> str:
        """``"300 reviews in total, 12 new since the last training (read up to ...), oldest since ..., 40 not
        yet learned by the model in service"``, then ``"; 3 waiting reviews dated in the future (clock skew?),
        counted as waiting 0s"`` when some are."""
        oldest = f", oldest since {self.oldest_waiting.isoformat(timespec='seconds')} UTC" if self.oldest_waiting else ""
        unlearned = f", {self.not_learned} not yet learned by the model in service" if self.not_learned is not None else ""
        return (
            f"{self.total} reviews in total, {self.waiting} new since the last training "
            f"(read up to {self.consumed or 'nothing yet'}){oldest}{unlearned}{self.future_note()}"
        )

    def future_note(self) -> str:
        """``"; 3 waiting reviews dated in the future (clock skew?), counted as waiting 0s"``, or ``""`` when none is."""
        if not self.future_dated:
            return ""
        return f"; {self.future_dated} waiting reviews dated in the future (clock skew?), counted as waiting 0s"

    def to_dict(self) -> dict:
        """JSON-ready: what the sensor's cursor and the ``human_reviews`` observations show."""
        return {
            "total": self.total,
            "waiting": self.waiting,
            "oldest_waiting": self.oldest_waiting.isoformat(timespec="seconds") if self.oldest_waiting else None,
            "consumed_up_to": str(self.consumed) if self.consumed else None,
            "dated_in_future": self.future_dated,
            "not_learned_by_champion": self.not_learned,
        }


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed retraining is retried: after ``backoff`` doubled per attempt, at most ``max_backoff``,
    and at most ``max_attempts`` runs for the same reviews (then it waits for a new batch: ``plan_tick``).

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


def serialize_sensor_state(pending: PendingRetraining | None, backlog: ReviewBacklog | None = None) -> str:
    """The sensor's cursor: the pending retraining, and (for people reading it) the review backlog
    of the tick, so the effective state shows from the first tick on. Only ``pending`` is read back."""
    state: dict = {"pending": pending.to_dict() if pending else None}
    if backlog is not None:
        state["reviews"] = backlog.to_dict()
    return json.dumps(state)


def backlog_in_state(text: str | None) -> dict | None:
    """The backlog an earlier tick stored in the cursor (``None`` for older cursors or none)."""
    try:
        return json.loads(text).get("reviews") if text else None
    except (ValueError, AttributeError):
        return None


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
    waiting_count: int | None = None,
) -> TickPlan:
    """Decide one tick of the retraining sensor. Reviews count as consumed only when a run that read
    them recorded a decision (``consumed``, from the registry); a run that failed is retried.

    After ``retry.max_attempts`` failed runs of the same reviews the sensor gives up on them (the
    failure is likely deterministic) until a whole new batch arrives: ``policy.threshold`` reviews
    received after the given-up target, or a manual run that records a decision. One new review
    does not start another series, nor does the age rule (an old-dated import would restart it at
    once): either would turn one bad batch into a storm of failed trainings.

    Args:
        tenant: the tenant watched.
        consumed: the newest review a decided training read (``ModelRegistry.consumed_reviews``).
        waiting: the reviews received after ``consumed``, by ``seq`` (dicts with ``seq`` and ``reviewed_at``),
            possibly only the first of them (a read limit).
        pending: the retraining requested earlier and not yet decided, from the sensor's cursor.
        run_status: ``request_id -> (IN_PROGRESS | SUCCEEDED | FAILED, finished_at)`` of its latest run;
            a run that cannot be found counts as failed.
        now: the tick's time (naive UTC, like the stored review times).
        policy: when enough reviews wait.
        retry: how failed runs are retried.
        waiting_count: how many reviews wait when ``waiting`` holds only the first of them; default ``len(waiting)``.
    """
    count = len(waiting) if waiting_count is None else waiting_count
    newest = ReviewCursor.of(waiting[-1]) if waiting else None
    oldest = oldest_reviewed(waiting)
    waits = f"{count} reviews waiting after {consumed or 'the first review'}"
    if oldest is not None:
        waits += f", oldest since {oldest.isoformat(timespec='seconds')} UTC"
    if pending is not None and consumed is not None and consumed >= pending.target:
        pending = None  # its run (or a later one) decided: those reviews are consumed
    if pending is not None:
        status, finished_at = run_status(pending.request_id)
        if status == IN_PROGRESS:
            return TickPlan(None, f"tenant {tenant}: retraining {pending.request_id} (attempt {pending.attempt}) is running; {waits}", pending)
        # A run that succeeded without recording a decision (e.g. a partial selection) is retried like a failure.
        what = "ended without a decision" if status == SUCCEEDED else "failed"
        if pending.attempt >= retry.max_attempts:
            newer = count - sum(1 for review in waiting if ReviewCursor.of(review) <= pending.target)
            if newer < policy.threshold:
                return TickPlan(
                    None,
                    f"tenant {tenant}: gave up after {pending.attempt} runs of the reviews up to {pending.target} ({what}); "
                    f"{newer} reviews since, {policy.threshold - newer} more needed to try again (threshold {policy.threshold}), "
                    f"or a manual run of the tenant's training job; {waits}",
                    pending,
                )
            pending = None  # a whole new batch since it gave up: a new series of attempts below
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
    retrain, reason = policy.decide(count, oldest, now)
    if not retrain or newest is None:
        return TickPlan(None, f"tenant {tenant}: {reason}; read by a training up to {consumed or 'nothing yet'}", None)
    request = PendingRetraining(newest, 1, request_id(tenant, newest, 1))
    return TickPlan(request, f"tenant {tenant}: {reason}; {waits}", request)


def parse_tenant_states(text: str | None, legacy_tenant: str) -> dict[str, str]:
    """The multi-tenant sensor's cursor: each tenant's own state (``serialize_sensor_state`` text).

    Tenants come and go between ticks; each keeps its own entry, so adding or removing one never
    moves another's. A cursor written before tenants were first-class (one tenant's state at the
    top level) becomes ``legacy_tenant``'s entry. Names that are not valid tenants are dropped.

    Raises:
        ValueError: if the text is not a cursor LEGOLAS wrote.
    """
    from legolas_ml.core.identity import validate_tenant

    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"unreadable retraining sensor cursor {text!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"unreadable retraining sensor cursor {text!r}: not a JSON object")
    if "tenants" not in data:
        return {legacy_tenant: text}
    if not isinstance(data["tenants"] or {}, dict):
        raise ValueError(f"unreadable retraining sensor cursor {text!r}: 'tenants' is not an object")
    states = {}
    for tenant, state in (data["tenants"] or {}).items():
        try:
            validate_tenant(tenant)
        except ValueError:
            continue
        if isinstance(state, dict):  # anything else holds no state: the tenant starts afresh
            states[tenant] = json.dumps(state)
    return states


def serialize_tenant_states(states: dict[str, str]) -> str:
    """The multi-tenant cursor: ``{"tenants": {tenant: state}}``, tenants sorted."""
    return json.dumps({"tenants": {tenant: json.loads(states[tenant]) for tenant in sorted(states)}})


def warm_start_checkpoints(
    champion: dict | None, model_name: str, model_overrides: dict, enabled: bool = True, *, data_version: str | None = None,
    split_fingerprint: str | None = None,
) -> tuple[list[str], str]:
    """The champion's fold checkpoints a retraining starts from (``TrainingConfig.init_checkpoints``), and why.

    A retraining starts from the champion when warm start is enabled, a champion exists, every one of
    its fold checkpoints is on disk, and it was trained with the same model and model overrides (the
    weights would not fit another architecture). Otherwise it starts cold, and the reason says why.

    Args:
        champion: the champion's manifest (``checkpoints``), or ``None`` on a first training.
        model_name: the model this training uses.
        model_overrides: this training's model config overrides.
        enabled: the ``warm_start`` setting.
        data_version, split_fingerprint: this training's; when both are the champion's, the training
            *is* the champion's (same key, its folds reused: the decision keeps the champion), so it
            does not start from it.

    Example:
        >>> warm_start_checkpoints(None, "m", {})
        ([], 'no champion: a first training starts from the pretrained model')
    """
    from pathlib import Path

    from legolas_ml.training.checkpoint import read_sidecar

    if champion is None:
        return [], "no champion: a first training starts from the pretrained model"
    version = champion.get("version", "?")
    if not enabled:
        return [], f"warm start is off (LEGOLAS_WARM_START=0): starts from the pretrained model, not champion {version}"
    if data_version is not None and (data_version, split_fingerprint) == (champion.get("data_version"), champion.get("split_fingerprint")):
        return [], f"the data and split are champion {version}'s: its training, not a warm start from it"
    paths = [str(p) for p in champion.get("checkpoints") or []]
    missing = [p for p in paths if not Path(p).exists()]
    if not paths or missing:
        return [], f"champion {version} has missing fold checkpoints {missing[:3]}: starts from the pretrained model"
    try:
        trained = read_sidecar(paths[0]).get("training_config") or {}
    except (OSError, ValueError, RuntimeError) as exc:  # CheckpointError is a RuntimeError
        return [], f"champion {version}'s fold sidecar is unreadable ({exc}): starts from the pretrained model"
    if trained.get("model_name") != model_name or (trained.get("model_overrides") or {}) != (model_overrides or {}):
        return [], (
            f"champion {version} was trained with model {trained.get('model_name')!r} overrides {trained.get('model_overrides')!r}, "
            f"this training uses {model_name!r} {model_overrides!r}: starts from the pretrained model"
        )
    return paths, f"warm start: fold k starts from champion {version}'s fold k mod {len(paths)}"
