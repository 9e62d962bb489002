"""Fold runners: the K folds of a run one after another (sequential) or as Ray tasks (ray).

``make_runner(name, ...)`` picks one; both share ``FoldRunner.run_folds``. Importing this package
does not import Ray: only ``make_runner("ray")`` does (``pip install -e '.[ray]'``). The factory
lives here, above the runners it builds, so ``base`` never imports its own subclasses.
"""

from __future__ import annotations

from typing import Any

from legolas_ml.core.choices import RUNNERS
from legolas_ml.runners.base import FoldRunner, FoldWorkerLostError
from legolas_ml.runners.sequential import SequentialRunner

__all__ = ["RUNNERS", "FoldRunner", "FoldWorkerLostError", "SequentialRunner", "make_runner"]



def make_runner(
    name: str = "sequential",
    *,
    address: str | None = None,
    gpus_per_fold: float | None = None,
    cpus_per_fold: float = 1,
    max_retries: int = 2,
    runtime_env: dict[str, Any] | None = None,
) -> FoldRunner:
    """The fold runner called ``name``.

    Args:
        name: ``"sequential"`` (one fold after another, in this process), ``"ray"`` (one Ray task
            per fold) or ``"auto"`` (Ray when ``address`` is given, or when more than one CUDA
            device is visible and Ray is installed; sequential otherwise).
        address: Ray only. ``None`` or ``""`` starts an embedded Ray instance that sees this
            machine's CPUs and GPUs; ``"auto"`` joins the cluster started here with ``ray start``;
            ``"ray://head:10001"`` connects to a remote cluster (KubeRay, ``ray start --head``).
        gpus_per_fold: Ray only. The GPUs each fold task declares: 1, or a fraction to pack several
            small folds on one large GPU (0.25: four folds per GPU). ``None``: 1 when the config
            may use CUDA and the cluster has GPUs, else 0.
        cpus_per_fold: Ray only. The CPUs each fold task declares (its torch thread count).
        max_retries: Ray only. How often a fold is retried when its worker or node dies; a fold
            that raises (NaN loss, bad config) is never retried.
        runtime_env: Ray only. Passed to ``ray.init`` (e.g. ``{"env_vars": {...}}``).

    Raises:
        ValueError: an unknown name or an out-of-range setting.
        ImportError: ``"ray"`` without Ray installed (``pip install -e '.[ray]'``).
    """
    if name not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {name!r}")
    if name == "auto":
        name = "ray" if address or (_ray_installed() and _cuda_device_count() > 1) else "sequential"
    if name == "sequential":
        return SequentialRunner()
    from legolas_ml.runners.ray_runner import RayRunner

    return RayRunner(
        address=address or None,
        gpus_per_fold=gpus_per_fold,
        cpus_per_fold=cpus_per_fold,
        max_retries=max_retries,
        runtime_env=runtime_env,
    )


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
