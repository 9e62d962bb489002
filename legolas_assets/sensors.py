"""Retrain the whole chain when reviewers have labelled enough new conversations."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from legolas_ml.lifecycle.retraining import RetrainPolicy, ReviewCursor
from legolas_ml.data.store import StoreUnavailableError

from .jobs import training_job
from .resources import MongoResource, TrainingResource
from .stages import n_fold_partitions


def policy_from_env() -> RetrainPolicy:
    hours = float(os.environ.get("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "24"))
    return RetrainPolicy(
        threshold=int(os.environ.get("LEGOLAS_RETRAIN_THRESHOLD", "50")),
        max_age=timedelta(hours=hours) if hours > 0 else None,
    )


def retraining_tags(tenant: str, reason: str) -> dict[str, str]:
    """One run of every asset over all fold partitions: folds first, then cv_metrics and the ensemble once."""
    return {
        "dagster/asset_partition_range_start": "0",
        "dagster/asset_partition_range_end": str(n_fold_partitions() - 1),
        "legolas/tenant": tenant,  # dagster.yaml allows one run per tenant at a time; others queue
        "legolas/trigger": reason[:200],
    }


@sensor(
    job=training_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Retrains every asset when enough new human reviews arrived (LEGOLAS_RETRAIN_THRESHOLD, default 50)",
)
def retrain_on_new_reviews(context: SensorEvaluationContext, mongo: MongoResource, training: TrainingResource):
    cursor = ReviewCursor.parse(context.cursor)
    if cursor is None:
        # Start after the reviews the current ensemble was trained on, not at the beginning of time.
        manifest = training.artifacts(mongo.tenant).read_manifest()
        cursor = ReviewCursor.parse(manifest.get("reviews_cursor")) if manifest else None
    try:
        with mongo.open() as store:
            new = store.reviews_after(cursor.as_tuple() if cursor else None)
    except StoreUnavailableError as exc:
        # The cursor stays where it is: these reviews will be counted once the store is back.
        return SkipReason(f"store unavailable, cursor kept at {cursor}: {exc}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    retrain, reason = policy_from_env().decide(len(new), new[0]["reviewed_at"] if new else None, now)
    if not retrain:
        return SkipReason(f"tenant {mongo.tenant}: {reason}")
    next_cursor = ReviewCursor.of(new[-1])
    context.log.info(f"tenant {mongo.tenant}: {reason}; requesting retraining, cursor -> {next_cursor}")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"{mongo.tenant}:{next_cursor}", tags=retraining_tags(mongo.tenant, reason))],
        cursor=next_cursor.serialize(),
    )
