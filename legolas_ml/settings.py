"""Where LEGOLAS keeps its files, and the environment variables that move them.

``LEGOLAS_HOME`` (default ``./var`` under the working directory) holds the embedded store
(``store/``), the artifacts (``output/<tenant>/``), the training logs (``output/logs/``) and the
project-local Dagster home (``dagster/``). The webserver, the daemon and the CLI all start in the
project root, so they all resolve the same directory.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TENANT = "demo"


def home_dir() -> Path:
    return Path(os.environ.get("LEGOLAS_HOME", "var")).resolve()


def data_dir() -> Path:
    """The embedded store's directory (used only when no ``LEGOLAS_MONGO_URI`` is set)."""
    return home_dir()


def output_dir() -> Path:
    return home_dir() / "output"


def mongo_uri() -> str | None:
    return os.environ.get("LEGOLAS_MONGO_URI") or None


def database_name() -> str:
    return os.environ.get("LEGOLAS_DATABASE", "legolas")


def tenant() -> str:
    return os.environ.get("LEGOLAS_TENANT", DEFAULT_TENANT)
