"""The retraining sensor against the embedded store, evaluated with build_sensor_context."""

from datetime import datetime, timedelta

import pytest
import time

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, SensorResult, SkipReason, build_sensor_context
from dagster._core.utils import make_new_run_id

from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource
from dagster_helpers import retrain_on_new_reviews, tenant_state
from legolas_assets.sensors import REQUEST_TAG
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.lifecycle.retraining import (
    PendingRetraining,
    RetrainPolicy,
    RetryPolicy,
    ReviewCursor,
    parse_sensor_state,
    plan_tick,
)
from legolas_ml.data.store import open_tenant_store

T0 = datetime(2026, 5, 1, 9, 0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "50")
    monkeypatch.setenv("LEGOLAS_RETRAIN_MAX_AGE_HOURS", "0")  # age trigger off unless a test turns it on
    return tmp_path


def add_reviews(home, n, at=None, start=0, step=timedelta(seconds=1)):
    with open_tenant_store(None, home, "legolas", "demo") as store:
        for k in range(n):
            ts = at if at is not None else T0 + step * (start + k)
            store.insert_review({"session_id": f"s{start + k}", "label": "billing", "reviewed_at": ts})


def tick(home, cursor=None, mongo=None, instance=None, **lifecycle):
    context = build_sensor_context(
        cursor=cursor,
        instance=instance or DagsterInstance.ephemeral(),
        resources={
            "mongo": mongo or MongoResource(data_dir=str(home)),
            "training": TrainingResource(output_dir=str(home / "output")),
            "lifecycle": LifecycleResource(**lifecycle),
        },
    )
    return retrain_on_new_reviews(context)


def skip_message(result) -> str:
    if isinstance(result, SkipReason):
        return result.skip_message
    assert isinstance(result, SensorResult) and not result.run_requests, f"expected a skip, got {result}"
    return result.skip_reason.skip_message


def registry(home) -> ModelRegistry:
    return ModelRegistry(TenantArtifacts(home / "output", "demo"))


def decide(home, version, up_to_review):
    """What a run's promotion step records: the reviews its training read are consumed."""
    reg = registry(home)
    reg.write_candidate({"version": version, "checkpoints": ["unused"], "reviews_cursor": ReviewCursor.of(up_to_review).serialize()})
    reg.reject(version, actor="test", reason="test decision")


def all_reviews(home):
    with open_tenant_store(None, home, "legolas", "demo") as store:
        return store.reviews_after(None)


def add_run(instance, request_id, status):
    run = DagsterRun(job_name="training_job", run_id=make_new_run_id(), tags={REQUEST_TAG: request_id}, status=status)
    instance.add_run(run)
    return run


def test_below_threshold_skips_with_the_count(home):
    add_reviews(home, 12)
    assert "12 new reviews, threshold 50" in skip_message(tick(home))


def test_at_threshold_requests_every_fold_and_waits_for_the_decision(home):
    add_reviews(home, 50)
    result = tick(home)
    assert isinstance(result, SensorResult) and len(result.run_requests) == 1
    tags = result.run_requests[0].tags
    assert tags["dagster/asset_partition_range_start"] == "0" and tags["dagster/asset_partition_range_end"] == "2"
    assert tags["legolas/tenant"] == "demo"
    pending = parse_sensor_state(tenant_state(result.cursor))
    assert pending.attempt == 1 and pending.target.reviewed_at == T0 + timedelta(seconds=49)
    assert tags[REQUEST_TAG] == pending.request_id == result.run_requests[0].run_key
    # Requested is not consumed: while the run is going, the reviews still wait and nothing is requested twice.
    instance = DagsterInstance.ephemeral()
    add_run(instance, pending.request_id, DagsterRunStatus.STARTED)
    message = skip_message(tick(home, result.cursor, instance=instance))
    assert "is running" in message and "50 reviews waiting" in message
    # The run decided (promoted or rejected): its reviews are consumed, nothing waits.
    decide(home, "v1", all_reviews(home)[-1])
    assert "0 new reviews" in skip_message(tick(home, result.cursor, instance=instance))


def test_a_failed_run_is_retried_with_backoff_and_nothing_is_lost(home):
    add_reviews(home, 60)
    instance = DagsterInstance.ephemeral()
    first = tick(home, instance=instance)
    pending = parse_sensor_state(tenant_state(first.cursor))
    add_run(instance, pending.request_id, DagsterRunStatus.FAILURE)
    waiting = tick(home, first.cursor, instance=instance, retry_backoff_s=3600)
    assert "failed (attempt 1/3)" in skip_message(waiting) and "retry in" in skip_message(waiting)
    assert "60 reviews waiting" in skip_message(waiting)
    add_reviews(home, 5, start=60)  # reviewers keep working meanwhile
    time.sleep(1.1)  # past a 1 s backoff
    retried = tick(home, waiting.cursor, instance=instance, retry_backoff_s=1, retry_max_backoff_s=1)
    assert len(retried.run_requests) == 1
    second = parse_sensor_state(tenant_state(retried.cursor))
    assert second.attempt == 2 and second.request_id != pending.request_id
    assert second.target == ReviewCursor.of(all_reviews(home)[-1])  # the retry trains on the 5 newer ones too
    # The retry decides on every review it read: all 65 consumed once, none counted again.
    add_run(instance, second.request_id, DagsterRunStatus.SUCCESS)
    decide(home, "v1", all_reviews(home)[-1])
    assert "0 new reviews" in skip_message(tick(home, retried.cursor, instance=instance))
    add_reviews(home, 3, start=100)
    assert "3 new reviews" in skip_message(tick(home, retried.cursor, instance=instance))


def test_gives_up_after_max_attempts_until_newer_reviews_arrive(home):
    add_reviews(home, 60)
    instance = DagsterInstance.ephemeral()
    state = LifecycleResource(retry_backoff_s=1, retry_max_backoff_s=1, max_attempts=2).model_dump()
    result = tick(home, instance=instance, **state)
    for _ in range(2):
        add_run(instance, parse_sensor_state(tenant_state(result.cursor)).request_id, DagsterRunStatus.FAILURE)
        time.sleep(1.05)
        nxt = tick(home, result.cursor, instance=instance, **state)
        result = nxt if nxt.run_requests or "gave up" in skip_message(nxt) else result
    assert "gave up after 2 runs" in skip_message(result)
    add_reviews(home, 1, start=200)
    fresh = tick(home, result.cursor, instance=instance, **state)
    assert len(fresh.run_requests) == 1 and parse_sensor_state(tenant_state(fresh.cursor)).attempt == 1


def test_equal_timestamps_are_neither_lost_nor_double_counted(home):
    add_reviews(home, 60, at=T0)
    decide(home, "v1", all_reviews(home)[-1])
    add_reviews(home, 7, at=T0, start=100)  # same timestamp as the consumed cursor, inserted later
    assert "7 new reviews" in skip_message(tick(home))


def test_unreachable_store_skips_and_keeps_the_state(home):
    add_reviews(home, 60)
    cursor = tick(home).cursor
    down = MongoResource(uri="mongodb://svc:topsecret@127.0.0.1:9/?directConnection=true", timeout_s=0.5)
    context = build_sensor_context(
        cursor=cursor, instance=DagsterInstance.ephemeral(),
        resources={"mongo": down, "training": TrainingResource(output_dir=str(home / "output")), "lifecycle": LifecycleResource()},
    )
    result = retrain_on_new_reviews(context)
    message = skip_message(result)
    assert "store unavailable" in message and "topsecret" not in message and "127.0.0.1:9" in message
    assert tenant_state(result.cursor) == tenant_state(cursor)  # the tenant's state stays as it was


def test_starts_after_the_reviews_of_the_last_decision(home):
    add_reviews(home, 80)
    decide(home, "v1", all_reviews(home)[-1])
    assert "0 new reviews" in skip_message(tick(home))


def test_plan_tick_never_requests_a_decided_target_again():
    reviews = [{"reviewed_at": T0 + timedelta(seconds=k), "_id": f"{k:04d}"} for k in range(60)]
    target = ReviewCursor.of(reviews[-1])
    pending = PendingRetraining(target, 1, "r1")
    never_called = lambda request: pytest.fail("the run status is not needed once the target is decided")  # noqa: E731
    plan = plan_tick("demo", target, [], pending, never_called, T0, RetrainPolicy(), RetryPolicy())
    assert plan.request is None and plan.pending is None and "0 new reviews" in plan.reason


def test_age_trigger_and_policy_validation():
    policy = RetrainPolicy(threshold=50, max_age=timedelta(hours=2))
    assert policy.decide(3, T0, T0 + timedelta(hours=3))[0]
    assert not policy.decide(3, T0, T0 + timedelta(hours=1))[0]
    assert not policy.decide(0, None, T0)[0]
    with pytest.raises(ValueError, match="threshold"):
        RetrainPolicy(threshold=0)
    with pytest.raises(ValueError, match="unreadable review cursor"):
        ReviewCursor.parse("garbage")
