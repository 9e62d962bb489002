"""The reviews waiting for a retraining, as the sensor's skip reason, its cursor and human_reviews observations show them."""

import json
from datetime import datetime, timedelta, timezone

from dagster import AssetKey, DagsterInstance, Definitions, define_asset_job

from legolas_assets.resources import LifecycleResource, MongoResource, TrainingResource
from dagster_helpers import DEMO, retrain_on_new_reviews, tenant_state
from legolas_assets.reviews import build_human_reviews

human_reviews = build_human_reviews(DEMO)
from legolas_ml.lifecycle.retraining import RetrainPolicy, ReviewBacklog
from legolas_ml.core.review_cursor import ReviewCursor
from test_sensor import T0, add_reviews, all_reviews, decide, home, skip_message, tick  # noqa: F401 (fixture)


def _observed(result) -> list[dict]:
    return [{k: v.value for k, v in e.metadata.items()} for e in result.asset_events if e.asset_key == DEMO.key("human_reviews")]


def test_the_first_tick_shows_every_review_waiting_and_observes_the_counts(home):
    add_reviews(home, 12)
    result = tick(home)
    assert "12 reviews in total, 12 new since the last training (read up to nothing yet)" in skip_message(result)
    assert json.loads(tenant_state(result.cursor))["reviews"] == {
        "total": 12, "waiting": 12, "oldest_waiting": T0.isoformat(timespec="seconds"), "consumed_up_to": None, "dated_in_future": 0,
        "not_learned_by_champion": 12,
    }
    [observed] = _observed(result)
    assert observed["waiting"] == 12 and observed["total"] == 12 and observed["oldest_waiting"] == f"{T0.isoformat()} UTC"


def test_waiting_counts_only_reviews_after_the_model_in_service(home):
    add_reviews(home, 10)
    decide(home, "v1", all_reviews(home)[3])  # a decided training read the first 4 reviews
    first = tick(home)
    assert "10 reviews in total, 6 new since the last training" in skip_message(first)
    [observed] = _observed(first)
    assert (observed["total"], observed["waiting"]) == (10, 6)
    assert observed["oldest_waiting"] == f"{(T0 + timedelta(seconds=4)).isoformat()} UTC"
    assert observed["consumed_up_to"] == "review #4"  # the 4th received (no longer shown as its reviewed_at/_id)
    # Issue #26 defect 5: the rejected candidate read 4 reviews, but the model in service never learned them.
    assert observed["not_learned_by_champion"] == 10 and "10 not yet learned by the model in service" in skip_message(first)
    # Nothing changed: no new observation; one more review: observed again, with the new count.
    same = tick(home, cursor=first.cursor)
    assert _observed(same) == [] and "6 new since the last training" in skip_message(same)
    add_reviews(home, 1, start=10)
    [after] = _observed(tick(home, cursor=same.cursor))
    assert (after["total"], after["waiting"]) == (11, 7)


def test_the_source_asset_observes_the_same_counts(home):
    add_reviews(home, 8)
    decide(home, "v1", all_reviews(home)[4])
    instance = DagsterInstance.ephemeral()
    resources = {
        "mongo": MongoResource(data_dir=str(home)),
        "training": TrainingResource(output_dir=str(home / "output")),
        "lifecycle": LifecycleResource(),
    }
    job = define_asset_job("observe", selection=[human_reviews])  # what "Observe sources" in the UI runs
    result = Definitions(assets=[human_reviews], jobs=[job], resources=resources).resolve_job_def("observe").execute_in_process(instance=instance)
    assert result.success
    record = instance.fetch_observations(DEMO.key("human_reviews"), limit=1).records[0]
    metadata = {k: v.value for k, v in record.asset_observation.metadata.items()}
    assert (metadata["total"], metadata["waiting"]) == (8, 3)


def test_backlog_refuses_a_total_below_the_waiting_count():
    waiting = [{"reviewed_at": T0, "seq": 1}, {"reviewed_at": T0, "seq": 2}]
    assert ReviewBacklog.of(5, None, waiting).newest_waiting == ReviewCursor(seq=2)
    try:
        ReviewBacklog.of(1, None, waiting)
    except ValueError as exc:
        assert "total 1 < 2 waiting" in str(exc)
    else:
        raise AssertionError("a total below the waiting count must be refused")


def test_reviews_dated_in_the_future_wait_zero_hours_and_are_flagged(home):
    """Clock skew (or test data): a review dated after the tick has waited 0, never "-402 days"."""
    future = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0) + timedelta(days=402)
    add_reviews(home, 2)
    add_reviews(home, 3, at=future, start=2)
    result = tick(home)
    message = skip_message(result)
    assert "3 waiting reviews dated in the future" in message and "waiting -" not in message, message
    assert "5 reviews in total, 5 new" in message
    [observed] = _observed(result)
    assert observed["dated_in_future"] == 3 and "3 waiting reviews dated in the future" in observed["clock_warning"]
    assert observed["oldest_waiting_age_hours"] > 0  # the oldest is T0, in the past: its age is real


def test_a_future_oldest_review_has_waited_zero(home):
    future = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0) + timedelta(days=402)
    add_reviews(home, 4, at=future)
    message = skip_message(tick(home))
    assert "oldest waiting 0:00:00 (dated in the future)" in message and "4 waiting reviews dated in the future" in message
    [observed] = _observed(tick(home))
    assert observed["oldest_waiting_age_hours"] == 0.0 and observed["dated_in_future"] == 4
    # Nor does a future date trigger the age rule: it has not waited at all.
    policy = RetrainPolicy(threshold=50, max_age=timedelta(hours=1))
    assert policy.decide(4, future, future - timedelta(days=402)) == (
        False, "4 new reviews, threshold 50, oldest waiting 0:00:00 (dated in the future)")
    assert ReviewBacklog.of(4, None, [{"reviewed_at": future, "seq": 1}], now=future).future_dated == 0


def test_sensor_observations_keep_the_sources_data_version(home):
    """A sensor tick's observation carries the version the source asset's own observe reports."""
    from dagster._core.definitions.data_version import DATA_VERSION_TAG

    add_reviews(home, 5)
    [event] = [e for e in tick(home).asset_events if e.asset_key == DEMO.key("human_reviews")]
    assert event.tags[DATA_VERSION_TAG] == "5-" + str(ReviewCursor.of(all_reviews(home)[-1]))


def test_the_waiting_count_is_exact_past_the_read_limit(home, monkeypatch):
    import legolas_assets.reviews as reviews

    add_reviews(home, 7)
    monkeypatch.setattr(reviews, "WAITING_READ_LIMIT", 3)  # stands in for 10 000 waiting reviews
    assert "7 new since the last training" in skip_message(tick(home))
    decide(home, "v1", all_reviews(home)[1])  # a training consumed the first two
    assert "5 new since the last training" in skip_message(tick(home))
