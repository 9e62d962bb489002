"""Retrain the whole chain when reviewers have labelled enough new conversations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from legolas_ml import settings
from legolas_ml.data.store import StoreUnavailableError
from legolas_ml.lifecycle.retraining import (
    FAILED,
    IN_PROGRESS,
    SUCCEEDED,
    RetrainPolicy,
    RetryPolicy,
    backlog_in_state,
    parse_sensor_state,
    plan_tick,
    serialize_sensor_state,
)

from .jobs import training_job
from .resources import LifecycleResource, MongoResource, TrainingResource
from .reviews import backlog_observation, read_backlog
from .stages import n_fold_partitions


def policy_from_env() -> RetrainPolicy:
    hours = settings.retrain_max_age_hours()
    return RetrainPolicy(threshold=settings.retrain_threshold(), max_age=timedelta(hours=hours) if hours > 0 else None)


#: Every retraining run carries the id of the request it answers; the sensor follows it to the run's outcome.
REQUEST_TAG = "legolas/request"


def retraining_tags(tenant: str, reason: str) -> dict[str, str]:
    """One run of every asset over all fold partitions: folds first, then cv_metrics and the ensemble once."""
    return {
        "dagster/asset_partition_range_start": "0",
        "dagster/asset_partition_range_end": str(n_fold_partitions() - 1),
        "legolas/tenant": tenant,  # dagster.yaml allows one run per tenant at a time; others queue
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


@sensor(
    job=training_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Retrains every asset when enough new human reviews arrived (LEGOLAS_RETRAIN_THRESHOLD, default 50); "
    "reviews are consumed only when the run decided on a candidate, failed runs are retried with backoff",
)
def retrain_on_new_reviews(
    context: SensorEvaluationContext, mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource
):
    tenant = mongo.tenant
    pending = parse_sensor_state(context.cursor)
    try:
        backlog, waiting = read_backlog(mongo, training, lifecycle)
    except StoreUnavailableError as exc:
        # The state stays as it is: these reviews will be counted once the store is back.
        consumed = lifecycle.registry(training, tenant).consumed_reviews()
        return SkipReason(f"tenant {tenant}: store unavailable, consumed up to {consumed or 'nothing yet'}: {exc}")
    consumed = backlog.consumed
    # The human_reviews asset shows the counts: observed on the first tick and whenever they change.
    events = [] if backlog_in_state(context.cursor) == backlog.to_dict() else [backlog_observation(tenant, backlog)]
    retry = RetryPolicy(
        backoff=timedelta(seconds=lifecycle.retry_backoff_s),
        max_backoff=timedelta(seconds=lifecycle.retry_max_backoff_s),
        max_attempts=lifecycle.max_attempts,
    )
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    plan = plan_tick(tenant, consumed, waiting, pending, run_status_lookup(context.instance), now, policy_from_env(), retry)
    cursor = serialize_sensor_state(plan.pending, backlog)
    if plan.request is None:
        return SensorResult(skip_reason=f"{plan.reason} | {backlog.describe()}", cursor=cursor, asset_events=events)
    context.log.info(f"{plan.reason}; requesting {plan.request.request_id}")
    tags = {**retraining_tags(tenant, plan.reason), REQUEST_TAG: plan.request.request_id}
    return SensorResult(
        run_requests=[RunRequest(run_key=plan.request.request_id, tags=tags)], cursor=cursor, asset_events=events,
    )
