"""Names shared by the asset modules: the stages (an asset tag), the backfill policy."""

import warnings

from dagster import BackfillPolicy, BetaWarning

DATA = "data"
TRAINING = "training"
EVALUATION = "evaluation"
EXPLAINABILITY = "explainability"
LIFECYCLE = "lifecycle"
REVIEW_LOOP = "review_loop"

# backfill_policy and Output(data_version=) are beta in Dagster 1.13 and used on purpose:
# single-run partition ranges, and the dataset content hash as data version.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*(backfill_policy|data_version).*")

#: Every asset runs a partition range in one run: this is what lets
#: `dagster asset materialize --select 'group:insurance' --partition-range 0...K-1` run a tenant's whole chain at once
#: (its group is the tenant's key name, the default tenant's included).
SINGLE_RUN = BackfillPolicy.single_run()


def placement(tenant, stage: str) -> dict:
    """Where an asset of ``tenant`` sits in the UI: the tenant's group, tagged with its stage.

    The group is the tenant (one lineage box per tenant in the asset graph); the stage tag lets the
    catalog filter one stage across tenants (``tag:stage=training``).
    """
    return {"group_name": tenant.prefix, "tags": {"stage": stage}}
