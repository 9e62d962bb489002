"""The retraining sensor against the embedded store, evaluated with build_sensor_context."""

import json
import time
from datetime import datetime, timedelta

import pytest

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, SensorResult, SkipReason, build_sensor_context
from dagster._core.utils import make_new_run_id

from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource
from dagster_helpers import retrain_on_new_reviews, tenant_state, training_session
from legolas_assets.sensors import REQUEST_TAG
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.lifecycle.retraining import PendingRetraining, RetrainPolicy, RetryPolicy, parse_sensor_state, plan_tick
from legolas_ml.core.review_cursor import ReviewCursor
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
            # Sessions outside the holdout bucket: their reviews count for the retraining threshold.
            store.insert_review({"session_id": training_session("demo", start + k), "label": "billing", "reviewed_at": ts})


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


def add_run(instance, request_id, status, run_key=None):
    tags = {REQUEST_TAG: request_id, **({"dagster/run_key": run_key} if run_key else {})}
    run = DagsterRun(job_name="training_job", run_id=make_new_run_id(), tags=tags, status=status)
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
    assert pending.attempt == 1 and pending.target == ReviewCursor(seq=50)  # the 50th review received
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


def test_gives_up_after_max_attempts_until_a_new_batch_arrives(home):
    """After giving up, one newer review no longer restarts the series (it used to: a retry storm of
    max_attempts failed trainings per review); a whole new batch (the threshold) does."""
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
    held = tick(home, result.cursor, instance=instance, **state)
    assert "1 reviews since, 49 more needed to try again (threshold 50)" in skip_message(held)
    add_reviews(home, 49, start=201)
    fresh = tick(home, held.cursor, instance=instance, **state)
    assert len(fresh.run_requests) == 1 and parse_sensor_state(tenant_state(fresh.cursor)).attempt == 1


def test_plan_tick_after_giving_up_waits_for_a_whole_new_batch():
    reviews = [{"seq": k, "reviewed_at": T0} for k in range(1, 111)]
    gave_up = PendingRetraining(ReviewCursor(seq=60), 3, "r3")
    failed = lambda request: ("failed", T0)  # noqa: E731
    policy = RetrainPolicy(threshold=50, max_age=timedelta(hours=1))
    for newer in (1, 49, 0):
        plan = plan_tick("demo", None, reviews[: 60 + newer], gave_up, failed, T0 + timedelta(days=2), policy, RetryPolicy())
        assert plan.request is None and plan.pending == gave_up, newer  # nor does the age rule restart it
        assert f"{newer} reviews since, {50 - newer} more needed to try again" in plan.reason
    plan = plan_tick("demo", None, reviews, gave_up, failed, T0, policy, RetryPolicy())
    assert plan.request.attempt == 1 and plan.request.target == ReviewCursor(seq=110)
    # Past the read limit the true count decides: 60 read, 110 waiting.
    assert plan_tick("demo", None, reviews[:60], gave_up, failed, T0, policy, RetryPolicy(), waiting_count=110).request is not None


def test_reviews_count_in_the_order_the_store_received_them(home):
    """A review log imported after a training with older dates, a review dated in the future, one
    dated by a string: each waits until a training reads it, and none hides the reviews after it."""
    add_reviews(home, 10)
    decide(home, "v1", all_reviews(home)[-1])
    assert "0 new reviews" in skip_message(tick(home))
    add_reviews(home, 2, at=T0 - timedelta(days=30), start=10)
    add_reviews(home, 1, at=datetime.now() + timedelta(days=400), start=12)
    with open_tenant_store(None, home, "legolas", "demo") as store:
        store.insert_review({"session_id": training_session("demo", 13), "label": "billing", "reviewed_at": "2026-05-02T09:00:00"})
    assert "4 new reviews" in skip_message(tick(home))
    decide(home, "v2", all_reviews(home)[-1])  # a training read them all, the future-dated one included
    assert "0 new reviews" in skip_message(tick(home))
    add_reviews(home, 1, start=14)  # dated before the future-dated review: counted all the same
    assert "1 new reviews" in skip_message(tick(home))


def test_cursors_of_an_older_release_still_count_what_waits(home, monkeypatch):
    """A store, a decision and a sensor cursor written before sequence numbers: the reviews after the
    old ``(reviewed_at, id)`` cursor wait, and so does a review received later with an older date."""
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "10")
    with open_tenant_store(None, home, "legolas", "demo") as store:
        store.start_writing()
        store.reviews.insert_many([
            {"tenant": "demo", "session_id": training_session("demo", k), "label": "billing", "reviewed_at": T0 + timedelta(seconds=k)} for k in reversed(range(60))
        ])
        stored = {doc["session_id"]: doc for doc in store.reviews.find({"tenant": "demo"})}
    old_cursor = lambda sid: ReviewCursor(stored[sid]["reviewed_at"], str(stored[sid]["_id"]))  # noqa: E731
    reg = registry(home)
    reg.write_candidate({"version": "v1", "checkpoints": ["unused"], "reviews_cursor": old_cursor(training_session("demo", 39)).serialize()})
    reg.reject("v1", actor="test", reason="decided by an older release")
    assert set(json.loads(reg.history()[-1]["reviews_cursor"])) == {"reviewed_at", "id"}
    # Its sensor had requested a run of the reviews up to s59, still running: not requested twice.
    instance = DagsterInstance.ephemeral()
    add_run(instance, "old-request", DagsterRunStatus.STARTED)
    old_state = json.dumps({"tenants": {"demo": {"pending": PendingRetraining(old_cursor(training_session("demo", 59)), 1, "old-request").to_dict()}}})
    message = skip_message(tick(home, old_state, instance=instance))
    assert "old-request (attempt 1) is running; 20 reviews waiting after review #40" in message
    add_reviews(home, 1, at=T0 - timedelta(days=1), start=100)  # received after the upgrade, dated before the old cursor
    assert "21 new reviews >= threshold 10" in tick(home).run_requests[0].tags["legolas/trigger"]
    decide(home, "v2", all_reviews(home)[-1])
    assert "0 new reviews" in skip_message(tick(home))


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
    reviews = [{"reviewed_at": T0 + timedelta(seconds=k), "seq": k + 1} for k in range(60)]
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


def _holdout_session(k: int) -> str:
    from legolas_ml.lifecycle.holdout import in_holdout

    return [f"h{i}" for i in range(5000) if in_holdout("demo", f"h{i}")][k]


def test_holdout_reviews_feed_the_challenger_not_the_retraining(home, monkeypatch):
    """Issue #26: reviews landing in the holdout never change what a retraining trains on (the same version,
    no decision, a retry loop); they count for the waiting challenger's next look, which the sensor requests."""
    monkeypatch.setenv("LEGOLAS_RETRAIN_THRESHOLD", "5")
    with open_tenant_store(None, home, "legolas", "demo") as store:
        for k in range(8):
            store.insert_review({"session_id": _holdout_session(k), "label": "billing", "reviewed_at": T0})
    message = skip_message(tick(home))
    assert "0 new reviews, threshold 5" in message and "8 of them landed in the holdout" in message
    # A challenger waits, last looked at on 30 sessions: due again at 38 (25% more).
    reg = registry(home)
    reg.write_candidate({"version": "champ", "checkpoints": ["unused"]})
    reg._commit_champion({"id": "x", "action": "promoted", "version": "champ", "at": "2026-01-01T00:00:00Z"}, ["champ"])
    reg.write_candidate({"version": "chal", "checkpoints": ["unused"], "reviews_cursor": ReviewCursor(seq=1).serialize()})
    reg.wait_as_challenger("chal", actor="test", reason="undecided", holdout_n=30, holdout_reviews_cursor=ReviewCursor(seq=2).serialize())
    assert "0 new reviews" in skip_message(tick(home))  # 6 new holdout reviews: 36 < 38
    with open_tenant_store(None, home, "legolas", "demo") as store:
        for k in range(8, 10):
            store.insert_review({"session_id": _holdout_session(k), "label": "billing", "reviewed_at": T0})
    [request] = tick(home).run_requests
    assert request.job_name == "challenger_job" and request.tags["legolas/tenant"] == "demo"
    assert request.run_config == {"ops": {"look_at_challenger_op": {"config": {"tenant": "demo"}}}}
    assert "challenger chal is due another look: 8 sessions landed in the holdout" in request.tags["legolas/trigger"]
    # That look was requested once: ticks after it (the look ran, or failed) go on to the retraining rule.
    instance = DagsterInstance.ephemeral()
    add_run(instance, "look", DagsterRunStatus.FAILURE, run_key=request.run_key)
    assert "0 new reviews" in skip_message(tick(home, instance=instance))
