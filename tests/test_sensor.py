"""The retraining sensor against the embedded store, evaluated with build_sensor_context."""

from datetime import datetime, timedelta

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from legolas_assets.resources import MongoResource, TrainingResource
from legolas_assets.sensors import retrain_on_new_reviews
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.retraining import RetrainPolicy, ReviewCursor
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


def tick(home, cursor=None, mongo=None):
    context = build_sensor_context(
        cursor=cursor,
        instance=DagsterInstance.ephemeral(),
        resources={
            "mongo": mongo or MongoResource(data_dir=str(home)),
            "training": TrainingResource(output_dir=str(home / "output")),
        },
    )
    return retrain_on_new_reviews(context)


def test_below_threshold_skips_with_the_count(home):
    add_reviews(home, 12)
    result = tick(home)
    assert isinstance(result, SkipReason) and "12 new reviews, threshold 50" in result.skip_message


def test_at_threshold_requests_every_fold_and_moves_the_cursor(home):
    add_reviews(home, 50)
    result = tick(home)
    assert isinstance(result, SensorResult) and len(result.run_requests) == 1
    tags = result.run_requests[0].tags
    assert tags["dagster/asset_partition_range_start"] == "0" and tags["dagster/asset_partition_range_end"] == "2"
    assert tags["legolas/tenant"] == "demo"
    assert ReviewCursor.parse(result.cursor).reviewed_at == T0 + timedelta(seconds=49)
    # Nothing new since: the next tick skips, counting 0.
    assert "0 new reviews" in tick(home, result.cursor).skip_message


def test_equal_timestamps_are_neither_lost_nor_double_counted(home):
    add_reviews(home, 60, at=T0)
    first = tick(home)
    assert isinstance(first, SensorResult)
    add_reviews(home, 7, at=T0, start=100)  # same timestamp as the cursor, inserted later
    second = tick(home, first.cursor)
    assert "7 new reviews" in second.skip_message


def test_reviews_arriving_during_a_run_count_for_the_next_one(home):
    add_reviews(home, 50)
    requested = tick(home)
    add_reviews(home, 50, start=50)  # reviewers keep working while the retraining runs
    again = tick(home, requested.cursor)
    assert isinstance(again, SensorResult)
    assert ReviewCursor.parse(again.cursor) > ReviewCursor.parse(requested.cursor)


def test_unreachable_store_skips_and_keeps_the_cursor(home):
    add_reviews(home, 60)
    cursor = ReviewCursor(T0, "0" * 24).serialize()
    down = MongoResource(uri="mongodb://svc:topsecret@127.0.0.1:9/?directConnection=true", timeout_s=0.5)
    context = build_sensor_context(
        cursor=cursor, instance=DagsterInstance.ephemeral(),
        resources={"mongo": down, "training": TrainingResource(output_dir=str(home / "output"))},
    )
    result = retrain_on_new_reviews(context)
    assert isinstance(result, SkipReason) and "store unavailable" in result.skip_message
    assert "topsecret" not in result.skip_message and "127.0.0.1:9" in result.skip_message
    assert context.cursor == cursor


def test_cursor_never_moves_back(home):
    cursor, seen = None, []
    for batch in range(6):
        if batch % 2:
            add_reviews(home, 30, start=30 * batch)
        else:  # a whole batch sharing one timestamp
            add_reviews(home, 30, at=T0 + timedelta(seconds=30 * batch), start=30 * batch)
        result = tick(home, cursor)
        if isinstance(result, SensorResult):
            assert cursor is None or ReviewCursor.parse(result.cursor) > ReviewCursor.parse(cursor)
            cursor = result.cursor
            seen.append(cursor)
    assert len(seen) == 3  # 180 reviews, threshold 50: triggers at 60, 120, 180


def test_starts_after_the_reviews_of_the_current_model(home):
    add_reviews(home, 80)
    with open_tenant_store(None, home, "legolas", "demo") as store:
        last = store.reviews_after(None)[-1]
    TenantArtifacts(home / "output", "demo").write_manifest({"checkpoints": [], "reviews_cursor": ReviewCursor.of(last).serialize()})
    assert "0 new reviews" in tick(home).skip_message


def test_age_trigger_and_policy_validation():
    policy = RetrainPolicy(threshold=50, max_age=timedelta(hours=2))
    assert policy.decide(3, T0, T0 + timedelta(hours=3))[0]
    assert not policy.decide(3, T0, T0 + timedelta(hours=1))[0]
    assert not policy.decide(0, None, T0)[0]
    with pytest.raises(ValueError, match="threshold"):
        RetrainPolicy(threshold=0)
    with pytest.raises(ValueError, match="unreadable review cursor"):
        ReviewCursor.parse("garbage")
