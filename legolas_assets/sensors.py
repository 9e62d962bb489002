"""Retrain a tenant's chain when its reviewers have labelled enough new conversations.

One sensor watches every tenant of the code location. Each tenant has its own entry in the cursor
(its pending request and backlog), its own threshold (the tenant's settings, else
``LEGOLAS_RETRAIN_THRESHOLD``) and its own job, so new reviews of tenant A launch A's chain only.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from legolas_ml.core import settings
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.lifecycle.retraining import FAILED, IN_PROGRESS, SUCCEEDED, RetryPolicy, backlog_in_state, parse_sensor_state, parse_tenant_states, plan_tick, serialize_sensor_state, serialize_tenant_states
from legolas_ml.core.review_cursor import ReviewCursor

from dagster._core.storage.tags import RUN_KEY_TAG

from legolas_ml.lifecycle.holdout import in_holdout
from legolas_ml.lifecycle.decision import next_look

from .lifecycle import challenger_job
from .resources import LifecycleResource, MongoResource, TrainingResource
from .reviews import backlog_observation, read_backlog, retrain_policy, sequence_cursor
from .tenancy import TenantPlan

#: Every retraining run carries the id of the request it answers; the sensor follows it to the run's outcome.
REQUEST_TAG = "legolas/request"
TENANT_TAG = "legolas/tenant"


def retraining_tags(tenant: TenantPlan, reason: str) -> dict[str, str]:
    """One run of every asset of the tenant over all its fold partitions: folds first, then the rest once."""
    return {
        **tenant.range_tags(),
        TENANT_TAG: tenant.name,  # dagster.yaml allows one run per tenant at a time; others queue
        "legolas/trigger": reason[:200],
    }


_STATUS = {
    DagsterRunStatus.SUCCESS: SUCCEEDED,
    DagsterRunStatus.FAILURE: FAILED,
    DagsterRunStatus.CANCELED: FAILED,
}


def run_status_lookup(instance):
    """``request_id -> (status, finished_at)`` of the latest run tagged with it; not found = failed."""

    def lookup(request: str) -> tuple[str, datetime | None]:
        records = instance.get_run_records(filters=RunsFilter(tags={REQUEST_TAG: request}), limit=1)
        if not records:
            return FAILED, None
        record = records[0]
        status = _STATUS.get(record.dagster_run.status, IN_PROGRESS)
        finished = record.end_time or (record.update_timestamp.timestamp() if record.update_timestamp else None)
        at = datetime.fromtimestamp(finished, timezone.utc).replace(tzinfo=None) if finished else None
        return status, at

    return lookup


def tick_tenant(context, tenant: TenantPlan, state: str | None, mongo, training, lifecycle, now: datetime):
    """One tenant's part of a tick: ``(run request or None, new state, reason, observations)``.

    Whatever goes wrong for one tenant (its store unreachable, busy or damaged, its cursor entry or
    registry unreadable) is that tenant's skip line, with its state kept; the other tenants tick on.
    """
    try:
        return _tick_tenant(context, tenant, state, mongo, training, lifecycle, now)
    except StoreUnavailableError as exc:
        # The state stays as it is: these reviews will be counted once the store is back.
        return None, state, f"tenant {tenant.name}: store unavailable, its state kept: {exc}", []
    except Exception as exc:  # noqa: BLE001 - one tenant's failure must not stop every other tenant's retraining
        context.log.warning(f"tenant {tenant.name}: tick failed: {type(exc).__name__}: {exc}")
        return None, state, f"tenant {tenant.name}: tick failed ({type(exc).__name__}: {exc}), its state kept", []


def _tick_tenant(context, tenant: TenantPlan, state: str | None, mongo, training, lifecycle, now: datetime):
    pending = parse_sensor_state(state)
    backlog, waiting = read_backlog(mongo, training, lifecycle, tenant.name)
    if pending is not None and pending.target.legacy:  # requested by an older release: its target as a seq
        with mongo.open(tenant.name) as store:
            pending = replace(pending, target=sequence_cursor(store, pending.target) or ReviewCursor(seq=0))
    # The human_reviews asset shows the counts: observed on the first tick and whenever they change.
    events = [] if backlog_in_state(state) == backlog.to_dict() else [backlog_observation(tenant, backlog)]
    retry = RetryPolicy(
        backoff=timedelta(seconds=lifecycle.retry_backoff_s),
        max_backoff=timedelta(seconds=lifecycle.retry_max_backoff_s),
        max_attempts=lifecycle.max_attempts,
    )
    # Reviews that land in the holdout never change what a retraining trains on: they count for the
    # challenger's next look, not for the retraining threshold.
    share = lifecycle.holdout_share
    for_training = [r for r in waiting if not in_holdout(tenant.name, str(r["session_id"]), share)]
    for_holdout = [r for r in waiting if in_holdout(tenant.name, str(r["session_id"]), share)]
    # A look at the waiting challenger first: seconds, no training, and it may promote it before a
    # retraining replaces it. The retraining, if due too, is requested on a later tick (state kept).
    look = challenger_look(tenant, lifecycle, training, for_holdout)
    if look is not None and _requested_before(context.instance, look[0].run_key):
        look = None  # that look ran (or failed) already: a run key is requested once, then the retraining goes on
    if look is not None:
        request, reason = look
        context.log.info(f"{reason}; requesting {request.run_key} (challenger_job)")
        return request, serialize_sensor_state(pending, backlog), reason, events
    plan = plan_tick(
        tenant.name, backlog.consumed, for_training, pending, run_status_lookup(context.instance), now, retrain_policy(tenant), retry,
        waiting_count=None if len(waiting) == backlog.waiting else backlog.waiting,
    )
    new_state = serialize_sensor_state(plan.pending, backlog)
    holdout_note = f"; {len(for_holdout)} of them landed in the holdout" if for_holdout else ""
    if plan.request is None:
        return None, new_state, f"{plan.reason}{holdout_note} | {backlog.describe()}", events
    context.log.info(f"{plan.reason}; requesting {plan.request.request_id} ({tenant.job_name})")
    tags = {**retraining_tags(tenant, plan.reason), REQUEST_TAG: plan.request.request_id}
    return RunRequest(run_key=plan.request.request_id, job_name=tenant.job_name, tags=tags), new_state, plan.reason, events


def _requested_before(instance, run_key: str) -> bool:
    return bool(instance.get_run_records(filters=RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1))


def challenger_look(tenant: TenantPlan, lifecycle, training, for_holdout: list[dict]) -> tuple[RunRequest, str] | None:
    """A run of ``challenger_job`` when the tenant's waiting challenger is due another look: enough
    sessions landed in the holdout since its last one (``LookSchedule``); else ``None``.

    Sessions are counted as the job compares them (distinct, in the holdout at the smallest share of
    the compared versions); the run key names the challenger and the look, so one look is requested
    once: a look that finds too few sessions, or fails, is not requested again for every new review.
    """
    registry = lifecycle.registry(training, tenant.name)
    waiting = registry.challenger()
    if waiting is None:
        return None
    champion = registry.champion_version()
    shares = [lifecycle.holdout_share] + [
        share for share in ((registry.manifest(v).get("holdout") or {}).get("share") for v in (waiting["version"], champion) if v)
        if isinstance(share, (int, float))
    ]
    last = ReviewCursor.parse(waiting["record"].get("holdout_reviews_cursor"))
    new = {
        str(r["session_id"]) for r in for_holdout
        if (last is None or last.legacy or ReviewCursor.of(r) > last) and in_holdout(tenant.name, str(r["session_id"]), min(shares))
    }
    n = int(waiting.get("holdout_n") or 0)
    due = next_look(waiting, lifecycle.policy())
    if not new or n + len(new) < due:
        return None
    reason = (f"tenant {tenant.name}: challenger {waiting['version']} is due another look: {len(new)} sessions landed in the "
              f"holdout since its last look at {n} (next look at {due})")
    request = RunRequest(
        run_key=f"{tenant.name}-challenger-{waiting['version']}-look-at-{due}",
        job_name=challenger_job.name,
        run_config={"ops": {"look_at_challenger_op": {"config": {"tenant": tenant.name}}}},
        tags={TENANT_TAG: tenant.name, "legolas/trigger": reason[:200]},
    )
    return request, reason


def build_retrain_sensor(tenants: list[TenantPlan], jobs: list) -> SensorDefinition:
    """``retrain_on_new_reviews``: one sensor over every tenant, targeting each tenant's own job."""

    @sensor(
        name="retrain_on_new_reviews",
        jobs=[*jobs, challenger_job],
        minimum_interval_seconds=settings.sensor_interval_s(),
        default_status=DefaultSensorStatus.RUNNING,
        description="Retrains a tenant's chain when enough of its new human reviews arrived (tenant setting "
        "retrain_threshold, else LEGOLAS_RETRAIN_THRESHOLD, default 50); reviews are consumed only when the run "
        "decided on a candidate, failed runs are retried with backoff; one cursor entry per tenant",
    )
    def retrain_on_new_reviews(
        context: SensorEvaluationContext, mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource
    ):
        states = parse_tenant_states(context.cursor, legacy_tenant=settings.tenant())
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        requests, reasons, events = [], [], []
        for tenant in tenants:
            request, state, reason, observed = tick_tenant(context, tenant, states.get(tenant.name), mongo, training, lifecycle, now)
            if state is not None:
                states[tenant.name] = state
            events += observed
            if request is not None:
                requests.append(request)
            else:
                reasons.append(reason)
        # Tenants no longer in the code location keep their entry: brought back, they resume where they were.
        cursor = serialize_tenant_states(states) if states else None
        if not requests:
            return SensorResult(skip_reason="\n".join(reasons), cursor=cursor, asset_events=events)
        return SensorResult(run_requests=requests, cursor=cursor, asset_events=events)

    return retrain_on_new_reviews
