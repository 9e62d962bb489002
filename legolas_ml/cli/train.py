"""``legolas train``: one run of a tenant's Dagster training job over a range of its fold partitions.

The run is what ``dagster job execute -m legolas_assets.definitions -j <tenant>__training_job
--tags '{"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "K-1"}'``
starts by hand: every asset of the tenant, its fold partitions in one run. K is the tenant's own
``n_folds``, else the preset's (``legolas_ml.data.tenants.fold_layout``, which the code location's
partitions come from too). ``legolas_ml`` never imports dagster: the Dagster CLI runs as a
subprocess of the same Python, its output streams through, and its exit code is the command's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from legolas_ml.core import settings
from legolas_ml.cli.conventions import CommandError, UsageError
from legolas_ml.data.tenants import Tenant, fold_layout, open_catalogue, training_job_name

#: The code location holding every tenant's job (as in pyproject.toml's ``[tool.dagster]``).
DEFINITIONS_MODULE = "legolas_assets.definitions"
FOLDS_FORMS = "'A-B' (a range, e.g. 0-2), 'A,B,...' (consecutive folds, e.g. 0,1) or one fold 'A'"


@dataclass(frozen=True)
class TrainingRun:
    """One run of a tenant's training job: which folds, and the Dagster command line that starts it."""

    tenant: str
    job_name: str
    first_fold: int
    last_fold: int
    n_partitions: int  # the tenant's fold partitions, 0..n_partitions-1
    command: tuple[str, ...]

    @property
    def tags(self) -> dict[str, str]:
        """The run's partition range tags (what the UI's "launch with partition range" sets)."""
        return partition_range_tags(self.first_fold, self.last_fold)

    def describe(self) -> str:
        every = " (every fold)" if (self.first_fold, self.last_fold) == (0, self.n_partitions - 1) else ""
        return (
            f"tenant {self.tenant!r}: {self.job_name} over fold partitions {self.first_fold}...{self.last_fold} "
            f"of 0...{self.n_partitions - 1}{every}"
        )


def partition_range_tags(first: int, last: int) -> dict[str, str]:
    """The tags of a run over the fold partitions ``first..last`` (both included)."""
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


def parse_folds(spec: str | None, n_partitions: int) -> tuple[int, int]:
    """``--folds`` -> ``(first, last)``, both included; ``None`` means every fold.

    A Dagster run covers one contiguous partition range, so a list must be consecutive folds.

    Args:
        spec: ``"0-2"``, ``"0,1"``, ``"2"`` or ``None``.
        n_partitions: the tenant's fold partitions (K, or 1 for the dev preset's single split).

    Raises:
        UsageError: naming ``--folds``, the allowed forms and range, and what was received.

    Example:
        >>> parse_folds("1-2", 3), parse_folds("0,1", 3), parse_folds(None, 3)
        ((1, 2), (0, 1), (0, 2))
    """
    if spec is None:
        return 0, n_partitions - 1
    allowed = f"--folds must be {FOLDS_FORMS}, folds within 0...{n_partitions - 1} (this tenant's partitions)"
    text = spec.replace(" ", "")
    if re.fullmatch(r"\d+-\d+", text):
        first, last = (int(part) for part in text.split("-"))
        folds = list(range(first, last + 1)) if first <= last else []
    elif re.fullmatch(r"\d+(,\d+)*", text):
        folds = [int(part) for part in text.split(",")]
    else:
        raise UsageError(f"{allowed}, got {spec!r}")
    if not folds:
        raise UsageError(f"{allowed}, got {spec!r}: the range is empty")
    outside = [k for k in folds if k >= n_partitions]
    if outside:
        raise UsageError(f"{allowed}, got {spec!r}: no fold {outside[0]}")
    if folds != list(range(folds[0], folds[0] + len(folds))):
        raise UsageError(f"{allowed}, got {spec!r}: one run trains consecutive folds (run `legolas train` once per range)")
    return folds[0], folds[-1]


def dagster_command(job_name: str, first: int, last: int, python: str = sys.executable) -> tuple[str, ...]:
    """The ``dagster job execute`` command line of one run of ``job_name`` over folds ``first..last``.

    ``python -m dagster`` (rather than a ``dagster`` found on ``PATH``) runs the Dagster of the
    environment ``legolas`` itself runs in.
    """
    return (
        python, "-m", "dagster", "job", "execute", "-m", DEFINITIONS_MODULE, "-j", job_name,
        "--tags", json.dumps(partition_range_tags(first, last)),
    )


def plan_training_run(tenant: Tenant, preset: dict[str, Any], folds: str | None, python: str = sys.executable) -> TrainingRun:
    """The run ``legolas train --tenant T [--folds F]`` starts: a pure function of the tenant and the preset.

    Args:
        tenant: the tenant as the catalogue found it (its settings decide K).
        preset: the deployment's preset (``settings.preset()``).
        folds: the ``--folds`` value, ``None`` for every fold.
        python: the interpreter that runs Dagster.

    Raises:
        UsageError: if ``folds`` is malformed or outside the tenant's partitions.
    """
    n_partitions = fold_layout(tenant.settings, preset)["n_partitions"]
    first, last = parse_folds(folds, n_partitions)
    job_name = training_job_name(tenant.name)
    return TrainingRun(tenant.name, job_name, first, last, n_partitions, dagster_command(job_name, first, last, python))


def run_environment(environ: dict[str, str]) -> dict[str, str]:
    """The run's environment: ``environ`` with ``DAGSTER_HOME`` set, so the run is recorded where the UI reads.

    Unset, it is ``$LEGOLAS_HOME/dagster`` as in the Makefile (created if missing); without one
    Dagster would run on a throwaway instance that the UI and the sensor never see.
    """
    env = dict(environ)
    if not env.get("DAGSTER_HOME"):
        home = settings.home_dir() / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        env["DAGSTER_HOME"] = str(home)
    return env


def cmd_train(args) -> int:
    """Run the tenant's training job; stream its output; exit with its code."""
    from legolas_ml.cli.tenants import unknown_tenant

    with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
        found = catalogue.discover()
    refusal = unknown_tenant(args.tenant, found)
    if refusal is not None:
        raise refusal
    tenant = next(t for t in found.tenants if t.name == args.tenant)
    run = plan_training_run(tenant, settings.preset(), args.folds, python=sys.executable)
    if args.dry_run:
        print(shlex.join(run.command))
        return 0
    if importlib.util.find_spec("dagster") is None:
        raise CommandError(f"legolas train runs Dagster, which is not installed for {sys.executable}: pip install -e .")
    env = run_environment(dict(os.environ))
    print(f"legolas: {run.describe()}; DAGSTER_HOME={env['DAGSTER_HOME']}", file=sys.stderr)
    print(f"legolas: {shlex.join(run.command)}", file=sys.stderr)
    sys.stdout.flush()
    process = subprocess.Popen(run.command, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached Dagster too (same process group): wait for it to end its run cleanly.
        code = process.wait()
    # A run killed by a signal: the shell's convention, 128 + the signal.
    return code if code >= 0 else 128 - code


def add_command(sub) -> argparse.ArgumentParser:
    """Register ``legolas train`` on the ``legolas`` parser (which adds ``--tenant``, as to its other commands)."""
    train = sub.add_parser(
        "train", help="run the tenant's Dagster training job over its fold partitions (0...K-1, or --folds)",
        description="Runs `dagster job execute` of <tenant>__training_job with the partition range of the tenant's "
        "folds, streams its output and exits with its code.",
    )
    train.add_argument("--folds", default=None, help=f"which fold partitions: {FOLDS_FORMS}; default: every fold")
    train.add_argument("--dry-run", action="store_true", help="print the Dagster command line and exit")
    train.set_defaults(func=cmd_train)
    return train
