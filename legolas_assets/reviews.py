"""The tenant's human reviews as an observable source asset: how many there are, how many wait.

Observed by the retraining sensor on every tick whose counts changed (and by the UI's "Observe
sources" button), so the asset page answers "how many reviews are waiting for a retraining?".
"""

import warnings
from datetime import datetime, timezone

from dagster import AssetObservation, BetaWarning, DataVersion, ObserveResult, observable_source_asset

from legolas_ml import settings
from legolas_ml.lifecycle.retraining import ReviewBacklog, waited_for

from .resources import LifecycleResource, MongoResource, TrainingResource
from .stages import DATA

REVIEWS_KEY = "human_reviews"

# observable_source_asset is beta in Dagster 1.13 and used on purpose: the "Observe sources" button.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*observable_source_asset.*")


def read_backlog(mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource) -> tuple[ReviewBacklog, list[dict]]:
    """The tenant's review backlog against the model in service, and the waiting reviews (oldest first).

    Raises:
        StoreUnavailableError: the store cannot be reached.
    """
    consumed = lifecycle.registry(training, mongo.tenant).consumed_reviews()
    with mongo.open() as store:
        waiting = store.reviews_after(consumed.as_tuple() if consumed else None)
        total = store.counts()["reviews"]
    return ReviewBacklog.of(total, consumed, waiting), waiting


def backlog_metadata(tenant: str, backlog: ReviewBacklog, now: datetime | None = None) -> dict:
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
        "retrain_threshold": settings.retrain_threshold(),
        "consumed_up_to": str(backlog.consumed) if backlog.consumed else "nothing yet (no decided training)",
        "tenant": tenant,
    }


def backlog_observation(tenant: str, backlog: ReviewBacklog) -> AssetObservation:
    return AssetObservation(asset_key=REVIEWS_KEY, metadata=backlog_metadata(tenant, backlog))


def _data_version(backlog: ReviewBacklog) -> DataVersion:
    # Changes when a review arrives or a training consumes some: what downstream staleness follows.
    return DataVersion(f"{backlog.total}-{backlog.newest_waiting or backlog.consumed or 'none'}")


@observable_source_asset(
    name=REVIEWS_KEY, group_name=DATA,
    description="The tenant's human reviews: total, waiting since the model in service, oldest waiting",
)
def human_reviews(mongo: MongoResource, training: TrainingResource, lifecycle: LifecycleResource) -> ObserveResult:
    backlog, _ = read_backlog(mongo, training, lifecycle)
    return ObserveResult(data_version=_data_version(backlog), metadata=backlog_metadata(mongo.tenant, backlog))
