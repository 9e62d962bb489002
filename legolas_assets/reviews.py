"""Each tenant's human reviews as an observable source asset: how many there are, how many wait.

Observed by the retraining sensor on every tick whose counts changed (and by the UI's "Observe
sources" button), so the asset page answers "how many reviews are waiting for a retraining?".
"""

import warnings
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from dagster import AssetObservation, BetaWarning, DataVersion, ObserveResult, observable_source_asset
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from legolas_ml.core import settings
from legolas_ml.lifecycle.retraining import RetrainPolicy, ReviewBacklog, waited_for
from legolas_ml.core.review_cursor import ReviewCursor

from .resources import LifecycleResource, MongoResource, TrainingResource
from .stages import DATA
from .tenancy import TenantPlan

REVIEWS_KEY = "human_reviews"
#: Waiting reviews read per tick (the first received); beyond it they are counted, not read.
WAITING_READ_LIMIT = 10_000

# observable_source_asset is beta in Dagster 1.13 and used on purpose: the "Observe sources" button.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*observable_source_asset.*")


def read_backlog(
    mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource, tenant: str
) -> tuple[ReviewBacklog, list[dict]]:
    """The tenant's review backlog, and the reviews no training has read yet (in received order).

    Raises:
        StoreUnavailableError: the store cannot be reached.
    """
    registry = lifecycle.registry(training, tenant)
    trained, learned = registry.trained_reviews(), registry.champion_reviews()
    with mongo.open(tenant) as store:
        trained = sequence_cursor(store, trained)
        after = trained.as_tuple() if trained else None
        waiting = store.reviews_after(after, limit=WAITING_READ_LIMIT)
        # Past the read limit only the oldest are held; the UI and the sensor show the true count.
        count = store.count_reviews_after(after) if len(waiting) >= WAITING_READ_LIMIT else None
        total = store.counts()["reviews"]
        learned = sequence_cursor(store, learned)
        not_learned = store.count_reviews_after(learned.as_tuple()) if learned else total
    backlog = ReviewBacklog.of(total, trained, waiting, waiting_count=count)
    return replace(backlog, not_learned=not_learned), waiting


def sequence_cursor(store, cursor: ReviewCursor | None) -> ReviewCursor | None:
    """A cursor an older release wrote (``reviewed_at``, ``_id``) as the ``seq`` cursor it stands for;
    ``None`` when it covers no review. This release's cursors are returned unchanged."""
    if cursor is None or not cursor.legacy:
        return cursor
    seq = store.resolve_cursor(cursor.as_tuple())
    return ReviewCursor(seq=seq) if seq else None


def backlog_metadata(tenant: "TenantPlan", backlog: ReviewBacklog, now: datetime | None = None) -> dict:
    """The observation's metadata: the counts first, then what they are measured against."""
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    age_h = waited_for(backlog.oldest_waiting, now).total_seconds() / 3600 if backlog.oldest_waiting else 0.0
    return {
        "waiting": backlog.waiting,
        "total": backlog.total,
        "oldest_waiting": f"{backlog.oldest_waiting.isoformat(timespec='seconds')} UTC" if backlog.oldest_waiting else "none waiting",
        "oldest_waiting_age_hours": round(age_h, 2),
        # Reviews dated after now (clock skew, test data) wait 0 hours instead of a negative age; flagged here.
        "dated_in_future": backlog.future_dated,
        **({"clock_warning": backlog.future_note().removeprefix("; ")} if backlog.future_dated else {}),
        "retrain_threshold": retrain_policy(tenant).threshold,
        "consumed_up_to": str(backlog.consumed) if backlog.consumed else "nothing yet (no recorded training)",
        # Read by a rejected candidate or a waiting challenger is not learned: the champion never saw them.
        "not_learned_by_champion": backlog.not_learned if backlog.not_learned is not None else "not counted",
        "tenant": tenant.name,
    }


def backlog_observation(tenant: "TenantPlan", backlog: ReviewBacklog) -> AssetObservation:
    # With its data version: Dagster reads a source's version from its latest observation of any
    # kind, so a sensor observation without one would reset it to "INITIAL" on every tick.
    return AssetObservation(
        asset_key=tenant.key(REVIEWS_KEY), metadata=backlog_metadata(tenant, backlog),
        tags={DATA_VERSION_TAG: _data_version(backlog).value},
    )


def _data_version(backlog: ReviewBacklog) -> DataVersion:
    # Changes when a review arrives or a training consumes some: what downstream staleness follows.
    return DataVersion(f"{backlog.total}-{backlog.newest_waiting or backlog.consumed or 'none'}")


def build_human_reviews(tenant: TenantPlan):
    """``<tenant>/human_reviews``: the tenant's reviews as an observable source asset."""

    @observable_source_asset(
        key=tenant.key(REVIEWS_KEY), group_name=tenant.prefix, tags={"stage": DATA},
        description=f"Tenant {tenant.name}'s human reviews: total, new since the last training, not yet learned by the model in service, oldest waiting",
    )
    def human_reviews(mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource) -> ObserveResult:
        backlog, _ = read_backlog(mongo, training, lifecycle, tenant.name)
        return ObserveResult(data_version=_data_version(backlog), metadata=backlog_metadata(tenant, backlog))

    return human_reviews


def retrain_policy(tenant: TenantPlan) -> RetrainPolicy:
    """When the tenant retrains: its own threshold and age where it sets them, else LEGOLAS_RETRAIN_*."""
    own = tenant.settings
    threshold = own.retrain_threshold or settings.retrain_threshold()
    hours = own.retrain_max_age_hours if own.retrain_max_age_hours is not None else settings.retrain_max_age_hours()
    return RetrainPolicy(threshold=threshold, max_age=timedelta(hours=hours) if hours > 0 else None)
