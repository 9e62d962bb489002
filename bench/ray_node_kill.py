"""Kill a Ray node mid-fold, N times: how many runs of the ray runner still finish (issue #27).

Usage (from the project root; tiny models, ~30 s a trial on 2 cores):

    PYTHONPATH=. .venv/bin/python bench/ray_node_kill.py [--trials 5]

Each trial starts a fresh two-node cluster on 127.0.0.1 (tests/two_node_ray.py: a head and a second
node of 1 CPU each, token authentication, its own ports and temp dir), trains folds 0 and 1 of a
tiny model with ``RayRunner(address="127.0.0.1:<port>", max_retries=2)`` and SIGKILLs the second
node's raylet when a fold on that node reports its first epoch. It prints, per trial, whether the
run finished with both checkpoints verified, where Ray had put the progress queue's actor (head or
second node) and the error of a failed run; then the count. The runner is whichever ``legolas_ml``
is first on PYTHONPATH, so the same script measures a checkout before and after a change:

    PYTHONPATH=/path/to/old/checkout .venv/bin/python bench/ray_node_kill.py --trials 5

Not a test: tests/test_ray_cluster.py runs one such trial and asserts on it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported: it reads the mode once
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # the nodes started here inherit it
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ray  # noqa: E402
from ray._private import state as ray_state  # noqa: E402  (the GCS actor table, no dashboard)

from legolas_ml.runners.ray_runner import RayRunner  # noqa: E402
from legolas_ml.training.cross_validation import encode_dataset, finished_fold, plan_splits  # noqa: E402
from synthetic import separable_frame, tiny_config  # noqa: E402
from two_node_ray import SECOND_NODE, parent, two_nodes  # noqa: E402


def trial(data, plan, config) -> dict:
    """One cluster, one run, one node killed: what happened."""
    seen: dict = {}
    with two_nodes() as nodes:

        def on_epoch(record):
            if "killed" in seen or parent(record["pid"]) != nodes.second_raylet:
                return
            second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and SECOND_NODE in n["Resources"])
            queues = [a["Address"]["NodeID"] for a in ray_state.actors().values()
                      if a["ActorClassName"].endswith("_QueueActor") and a["State"] == "ALIVE"]
            seen["queue_on"] = ",".join("second" if q == second else "head" for q in queues) or "?"
            os.kill(nodes.second_raylet, signal.SIGKILL)
            seen["killed"] = record["fold"]

        start = time.monotonic()
        with tempfile.TemporaryDirectory() as folds_dir:
            try:
                results = RayRunner(address=nodes.address, max_retries=2, poll_s=0.05).run_folds(
                    data, plan, [0, 1], config, folds_dir, data_version="v", on_epoch=on_epoch
                )
                verified = all(
                    finished_fold(Path(folds_dir) / Path(r.checkpoint_path).name, "v", plan.fingerprint(), config) is not None
                    for r in results.values()
                )
                seen["outcome"] = "finished, 2 checkpoints verified" if verified and len(results) == 2 else "finished, NOT verified"
            except Exception as exc:  # the measurement: any failure of the run is the result
                seen["outcome"] = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            finally:
                if ray.is_initialized():
                    ray.shutdown()
        seen["seconds"] = time.monotonic() - start
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    df = separable_frame(40)
    config = tiny_config(epochs=6, patience=6)
    data, plan = encode_dataset(df, config), plan_splits(df, config)
    import legolas_ml

    print(f"legolas_ml from {Path(legolas_ml.__file__).parent}, ray {ray.__version__}, {args.trials} trials")
    finished = 0
    for i in range(args.trials):
        seen = trial(data, plan, config)
        finished += seen["outcome"].startswith("finished, 2")
        print(f"trial {i + 1}: node killed during fold {seen.get('killed', '-')}, progress queue on {seen.get('queue_on', '-')}: "
              f"{seen['outcome']} ({seen['seconds']:.0f} s)", flush=True)
    print(f"{finished} of {args.trials} runs finished with every checkpoint verified")


if __name__ == "__main__":
    main()
