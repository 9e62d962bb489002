"""Configuration errors of the Dagster layer: one line that names the setting, not a loader traceback.

Settings read while Dagster loads the definitions (K and the fold partitions, the resources'
defaults) fail inside Dagster's module loader, whose traceback is some 80 lines long with the
message at the very end. ``ConfigurationError`` is also a ``click.ClickException``: the
``dagster`` CLI prints it as the one line ``Error: LEGOLAS_N_FOLDS must be ...`` and exits 1,
and the UI shows the same message as the code location's load error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from legolas_ml.core.settings import SettingsError


class ConfigurationError(SettingsError, click.ClickException):
    """A setting (environment variable or run config) is invalid; the message names it."""

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)


@contextlib.contextmanager
def reported_in_one_line() -> Iterator[None]:
    """Re-raise a ``SettingsError`` as a ``ConfigurationError``, without the chained traceback."""
    try:
        yield
    except ConfigurationError:
        raise
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from None
