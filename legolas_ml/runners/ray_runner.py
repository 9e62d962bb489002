"""The Ray fold runner: each fold a Ray task that declares its share of a device.

Ray does the scheduling, the device accounting (``CUDA_VISIBLE_DEVICES`` per task), the retries of
folds whose worker or node died and the cancellation; this module only describes the tasks and
waits for them. The encoded dataset and the split go to the object store once (``ray.put``); each
fold task is a pure function of them that returns its files as bytes (``transfer.FoldPayload``),
which the driver verifies and writes where the sequential runner would. Per-epoch records travel
back through a queue actor pinned to the driver's node (``ray_progress.ProgressQueue``) that the
driver drains while it waits, so progress reaches the caller's ``on_epoch`` in its own thread while
folds run; losing that actor loses progress lines, never the run. docs/ray.md has the cluster side:
addresses, token authentication, what a node's death does.

Example:
    >>> runner = RayRunner(gpus_per_fold=0.25)   # doctest: +SKIP
    >>> results = runner.run_folds(data, plan, range(10), config, folds_dir, data_version=v)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import ray
    from ray.exceptions import (
        LocalRayletDiedError,
        AuthenticationError,
        NodeDiedError,
        ObjectLostError,
        OutOfMemoryError,
        OwnerDiedError,
        RayTaskError,
        WorkerCrashedError,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the 'ray' fold runner needs Ray: pip install -e '.[ray]'") from exc

from legolas_ml.data.splits import SplitPlan
from legolas_ml.runners.base import FoldRunner, FoldWorkerLostError, LogCallback, check_fold_indices, worker_name
from legolas_ml.runners.ray_progress import ProgressQueue
from legolas_ml.runners.transfer import FoldPayload, accept_fold_payload, train_fold_payload
from legolas_ml.core.settings import RAY_ADDRESS_FORMS, check_ray_address
from legolas_ml.training.checkpoint import checkpoint_filename
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.cross_validation import EncodedDataset, finished_fold
from legolas_ml.training.modeling import resolve_device
from legolas_ml.training.trainer import EpochCallback, FoldResult

#: Failures of the machinery, not of the fold: Ray retries these up to ``max_retries`` times.
WORKER_LOST = (WorkerCrashedError, NodeDiedError, LocalRayletDiedError, ObjectLostError, OwnerDiedError, OutOfMemoryError)


def _device_tag(config: TrainingConfig) -> str:
    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    device = str(resolve_device(config.device))
    return f"{device} (Ray GPU {','.join(gpus)})" if gpus and device.startswith("cuda") else device


def _fold_task(
    data: EncodedDataset, plan: SplitPlan, fold: int, config: TrainingConfig, data_version: str, progress: ProgressQueue
) -> FoldPayload:
    """One fold on a Ray worker: tell the driver where it runs, train, return the files as bytes.

    ``progress.put`` drops records once the queue is gone, so a lost queue never fails the fold.
    """
    token = uuid.uuid4().hex  # tells this attempt's records from those of an earlier, lost attempt
    worker, device = worker_name(), _device_tag(config)
    progress.put({"kind": "start", "fold": fold, "token": token, "worker": worker, "pid": os.getpid(), "device": device})
    return train_fold_payload(
        data, plan, fold, config, data_version=data_version,
        on_epoch=lambda record: progress.put({"kind": "epoch", "token": token, "record": record}),
        worker=worker, device=device,
    )


fold_task = ray.remote(_fold_task)


class RayRunner(FoldRunner):
    """Trains folds as Ray tasks on an embedded Ray instance or an existing cluster.

    Args:
        address: ``None`` or ``""`` starts an embedded instance (this machine's CPUs and GPUs)
            for the duration of ``run_folds``; ``"auto"`` (the cluster ``ray start`` started on
            this machine), ``"ray://host:port"`` (Ray Client, from anywhere) or ``"host:port"``
            (the head's GCS address, from a node of the cluster) joins a cluster. An already
            initialised Ray (``ray.init`` by the caller) is used as it is.
        gpus_per_fold: GPUs each fold task declares (1, or a fraction in (0, 1) to pack several
            folds on one GPU); ``None``: 1 when the config may use CUDA and the cluster has GPUs.
        cpus_per_fold: CPUs each fold task declares; Ray sets the task's torch threads from it.
        max_retries: retries of a fold whose worker or node died; raising folds are never retried.
        runtime_env: passed to ``ray.init`` when this runner connects.
        poll_s: how often the driver drains progress records while it waits.

    Raises:
        ValueError: naming the setting, its allowed values and what was received (an address
            outside the forms above: ``SettingsError``, naming ``LEGOLAS_RAY_ADDRESS``).
        ConnectionError: (``run_folds``) the cluster at ``address`` did not answer or refused this
            driver; the message names ``RAY_AUTH_MODE`` and the token sources (docs/ray.md).
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        gpus_per_fold: float | None = None,
        cpus_per_fold: float = 1,
        max_retries: int = 2,
        runtime_env: dict[str, Any] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        if gpus_per_fold is not None and not (
            gpus_per_fold == 0 or 0 < gpus_per_fold < 1 or (gpus_per_fold >= 1 and float(gpus_per_fold).is_integer())
        ):
            raise ValueError(f"gpus_per_fold must be None, 0, a fraction in (0, 1) or a whole number, got {gpus_per_fold!r}")
        if not (isinstance(cpus_per_fold, (int, float)) and cpus_per_fold > 0):
            raise ValueError(f"cpus_per_fold must be > 0, got {cpus_per_fold!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.address = check_ray_address(address or "") or None
        self.gpus_per_fold = gpus_per_fold
        self.cpus_per_fold = cpus_per_fold
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        self.poll_s = poll_s

    def run_folds(
        self,
        data: EncodedDataset,
        plan: SplitPlan,
        fold_indices: Sequence[int],
        config: TrainingConfig,
        folds_dir: str | Path,
        *,
        data_version: str,
        on_epoch: EpochCallback | None = None,
        reuse_finished: bool = True,
        log: LogCallback | None = None,
    ) -> dict[int, FoldResult]:
        folds = check_fold_indices(plan, fold_indices)
        config.validate(n_classes=len(data.labels))  # a bad config fails here, before any worker starts
        if config.device.startswith("cuda:") and config.device != "cuda:0":
            raise ValueError(
                f"device must be 'auto', 'cuda' or 'cpu' with the ray runner (Ray gives each fold its GPU), got {config.device!r}"
            )
        say = log or (lambda line: None)
        folds_dir = Path(folds_dir)
        results: dict[int, FoldResult] = {}
        for k in folds:
            done = finished_fold(
                folds_dir / checkpoint_filename(config.text_format, config.model_name, k), data_version, plan.fingerprint(), config
            ) if reuse_finished else None
            if done is not None:
                done.reused = True
                results[k] = done
                say(f"fold {k}: finished earlier with the same data, split and config; checkpoint verified and reused")
        todo = [k for k in folds if k not in results]
        lost: dict[int, str] = {}
        if todo:
            started = self._connect()
            try:
                lost = self._train(data, plan, todo, config, folds_dir, data_version, on_epoch, say, results)
            finally:
                if started:
                    ray.shutdown()
        if lost:
            raise FoldWorkerLostError(
                f"folds {sorted(lost)} lost their worker {self.max_retries + 1} times "
                f"({'; '.join(f'fold {k}: {why}' for k, why in sorted(lost.items()))}); "
                f"folds {sorted(results)} finished and are kept, a rerun trains only the missing ones"
            )
        return {k: results[k] for k in folds}

    def _connect(self) -> bool:
        """Initialise Ray unless the caller already did; True when this runner must shut it down."""
        if ray.is_initialized():
            return False
        # ray.init replaces the SIGTERM handler with sys.exit; the caller's (Dagster turns a run
        # termination into an interrupt of the step) must stay, so it is put back.
        in_main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
        try:
            if self.address:
                try:
                    ray.init(address=self.address, runtime_env=self.runtime_env)
                except (ConnectionError, AuthenticationError) as exc:
                    raise ConnectionError(connect_failure(self.address, os.environ.get("RAY_AUTH_MODE"))) from exc
            else:
                # "local": a fresh instance even if `ray start` runs here; joining one is address="auto".
                ray.init(address="local", include_dashboard=False, runtime_env=self.runtime_env)
        finally:
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        return True

    def resources(self, config: TrainingConfig) -> dict[str, float]:
        """The ``num_gpus`` and ``num_cpus`` each fold task declares for this config."""
        gpus = self.gpus_per_fold
        if gpus is None:
            gpus = 1 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        if gpus and config.device == "cpu":
            raise ValueError(f"gpus_per_fold is {gpus} but the config trains on device 'cpu'; use device 'auto' or 'cuda'")
        return {"num_gpus": gpus, "num_cpus": self.cpus_per_fold}

    def _train(
        self,
        data: EncodedDataset,
        plan: SplitPlan,
        todo: list[int],
        config: TrainingConfig,
        folds_dir: Path,
        data_version: str,
        on_epoch: EpochCallback | None,
        say: LogCallback,
        results: dict[int, FoldResult],
    ) -> dict[int, str]:
        """Train ``todo`` as Ray tasks, adding each verified fold to ``results`` as it lands.

        Returns:
            The folds whose worker died more often than the retry budget, with the last error.
        """
        resources = self.resources(config)
        cluster = ray.cluster_resources()
        say(
            f"ray: {len(todo)} folds as tasks of {resources['num_gpus']} GPU / {resources['num_cpus']} CPU each on a cluster "
            f"of {cluster.get('GPU', 0):g} GPU / {cluster.get('CPU', 0):g} CPU; up to {self.max_retries} retries per fold"
        )
        # On the driver's node: a queue on a node that dies took the whole run with it (issue #27).
        progress = ProgressQueue(ray.get_runtime_context().get_node_id())
        data_ref, plan_ref = ray.put(data), ray.put(plan)  # once, shared by every fold task
        task = fold_task.options(**resources, max_retries=self.max_retries, retry_exceptions=False)
        fold_of = {task.remote(data_ref, plan_ref, k, config, data_version, progress): k for k in todo}
        attempts: dict[str, dict[str, Any]] = {}  # token -> tags of that attempt
        started: dict[int, int] = {}  # fold -> attempts started so far
        lost: dict[int, str] = {}
        pending = list(fold_of)

        def drain() -> None:
            was_lost = progress.lost
            events = progress.drain()
            if progress.lost and not was_lost:
                say(f"ray: progress queue lost ({progress.lost}); folds go on, their progress lines until the end are lost")
            for event in events:
                if event["kind"] == "start":
                    k = event["fold"]
                    attempt = started.get(k, 0)
                    started[k] = attempt + 1
                    attempts[event["token"]] = {
                        "worker": event["worker"], "pid": event["pid"], "device": event["device"], "attempt": attempt
                    }
                    again = f", after the worker of attempt {attempt} was lost" if attempt else ""
                    say(f"fold {k}: attempt {attempt + 1} of {self.max_retries + 1} started on {event['worker']} ({event['device']}){again}")
                elif on_epoch is not None:
                    on_epoch({**event["record"], **attempts[event["token"]]})

        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=self.poll_s)
                drain()  # a fold's last epochs are reported before its result
                for ref in ready:
                    k = fold_of[ref]
                    try:
                        payload = ray.get(ref)
                    except RayTaskError as exc:
                        # The fold itself raised (NaN loss, bad config): deterministic, so not
                        # retried; the run fails at once and the other folds are cancelled.
                        cause = exc.cause if isinstance(exc.cause, Exception) else exc
                        say(f"fold {k}: failed: {cause}")
                        raise cause from exc  # the chained RayTaskError carries the worker's traceback
                    except WORKER_LOST as exc:
                        lost[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        say(f"fold {k}: worker lost, {self.max_retries} retries exhausted ({lost[k]})")
                        continue
                    results[k] = accept_fold_payload(
                        payload, folds_dir, data_version=data_version, split_fingerprint=plan.fingerprint(), config=config
                    )
                    say(f"fold {k}: done on {payload.worker} ({payload.device}), best epoch {results[k].best_epoch}; "
                        f"checkpoint verified and written to {results[k].checkpoint_path}")
        except BaseException:
            # Ctrl-C, a Dagster run termination or a failed fold: stop the remote folds too.
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            progress.kill()
        return lost


def connect_failure(address: str, auth_mode: str | None) -> str:
    """Why ``ray.init(address=...)`` may have failed, and what to check, for the error a user reads.

    Ray 2.60 sends its token only when ``RAY_AUTH_MODE=token`` is in the driver's environment when
    Ray is imported: a cluster started with token authentication (``RAY_AUTH_MODE=token``, or a token
    in ``~/.ray/auth_token`` when ``ray start --head`` ran) refuses a driver without it, and
    ``ray.init`` reports that as "Failed to connect" after ~20 s of retries.

    Args:
        address: the address the runner tried (``LEGOLAS_RAY_ADDRESS``).
        auth_mode: ``RAY_AUTH_MODE`` in this process's environment (``None``: unset).

    Returns:
        One message naming the address, its setting, the allowed forms and the authentication fix.
    """
    mode = "unset" if auth_mode is None else repr(auth_mode)
    auth = (
        "RAY_AUTH_MODE is 'token' here: check that this process sees the cluster's token (RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, the same on every node)"
        if auth_mode == "token"
        else f"RAY_AUTH_MODE is {mode} here: if the cluster was started with token authentication, export "
        "RAY_AUTH_MODE=token (and the token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) in the "
        "environment that starts this process (the Dagster webserver and daemon, or the legolas CLI), as on every node"
    )
    return (
        f"could not join the Ray cluster at LEGOLAS_RAY_ADDRESS={address!r} (forms: unset for an embedded instance, "
        f"{', '.join(map(repr, RAY_ADDRESS_FORMS))}): is the head up and its port reachable from here? {auth}; see docs/ray.md"
    )

