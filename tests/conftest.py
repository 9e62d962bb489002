import os
import secrets
import sys
import tempfile
from pathlib import Path

# Tests never reach a model hub: the bundled tokenizer and config are local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

# Ray 2.60 runs a new local cluster with token authentication and reads RAY_AUTH_MODE once, when it
# is imported: set here, before any test module imports Ray, every Ray process of the suite (embedded
# instances, the `ray start` nodes of test_ray_cluster.py, which inherit this environment) runs the
# same mode with one token of this run, not whatever ~/.ray/auth_token holds. docs/ray.md.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

# The fold partitions are defined at import time from the preset: tests use K=3 folds.
os.environ.setdefault("LEGOLAS_N_FOLDS", "3")

# Importing legolas_assets.definitions discovers the tenants in $LEGOLAS_HOME's store: never the
# developer's own var/ (tests that need a home set their own). One home per process: xdist workers
# inherit the controller's environment, and two workers opening one embedded store at collection
# time can meet its SQLite lock ("database is locked").
if "LEGOLAS_HOME" not in os.environ or os.environ.get("LEGOLAS_TESTS_OWN_HOME"):
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ["LEGOLAS_HOME"] = tempfile.mkdtemp(prefix=f"legolas-tests-{_worker}-")
    os.environ["LEGOLAS_TESTS_OWN_HOME"] = "1"

# Under pytest-xdist (`make test`: 2 workers) each worker and every subprocess it starts runs torch
# on one thread: two workers of 2 OpenMP threads each on 2 cores spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")


#: The modules that take longest (docs/tests.md), started first. `make test` runs
#: `--dist loadscope --no-loadscope-reorder`: each of the 2 workers takes the next module in this
#: order, so the long ones run beside each other and the many short ones fill in at the end.
#: xdist's own order (most tests first) left the two one-test daemon modules for last, on one worker.
LONGEST_FIRST = (
    "test_dagster_chain", "test_daemon_live_tenants", "test_runners", "test_tenants", "test_daemon", "test_reliability",
    "test_ray_cluster", "test_recovery", "test_artifact_storage", "test_mlflow_serving", "test_speed_paths", "test_ui_metadata",
    "test_settings", "test_sensor", "test_review_loop",
)


def pytest_collection_modifyitems(items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    # A stable sort: tests keep their order within a module, and the other modules theirs.
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
