"""Fold runners: the K folds of a run one after another (sequential) or as Ray tasks (ray).

``make_runner(name, ...)`` picks one; both share ``FoldRunner.run_folds``. Importing this package
does not import Ray: only ``make_runner("ray")`` does (``pip install -e '.[ray]'``).
"""

from legolas_ml.runners.base import RUNNERS, FoldRunner, FoldWorkerLostError, make_runner
from legolas_ml.runners.sequential import SequentialRunner

__all__ = ["RUNNERS", "FoldRunner", "FoldWorkerLostError", "SequentialRunner", "make_runner"]
