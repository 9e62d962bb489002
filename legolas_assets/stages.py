"""Names and layout shared by the asset modules: groups, fold partitions, backfill policy."""

import warnings

from dagster import BackfillPolicy, BetaWarning, StaticPartitionsDefinition

from .configuration import reported_in_one_line
from .resources import preset

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
#: `dagster asset materialize --select '*' --partition-range 0...K-1` run the whole chain at once.
SINGLE_RUN = BackfillPolicy.single_run()


def n_fold_partitions() -> int:
    """K, or 1 in the dev preset; an invalid LEGOLAS_PRESET / LEGOLAS_N_FOLDS is a one-line error."""
    with reported_in_one_line():
        values = preset()
    return values["n_folds"] if values["kfold"] else 1


#: One partition per fold, "0".."K-1"; K comes from LEGOLAS_PRESET / LEGOLAS_N_FOLDS at load time.
fold_partitions = StaticPartitionsDefinition([str(k) for k in range(n_fold_partitions())])
