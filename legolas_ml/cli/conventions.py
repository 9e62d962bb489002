"""What every ``legolas`` subcommand keeps to: its exit codes, the errors that choose them, ``--json``.

Scripts and CI tell two failures apart by the code alone, the way argparse and most Unix tools do:

* ``0``: done.
* ``1`` (``EXIT_RUNTIME``): the command was right but could not be carried out now: the store is
  down, busy or damaged, a file is missing, there is no earlier champion to roll back to, the
  Dagster run failed. Fixing the world (or waiting) makes the same command succeed.
* ``2`` (``EXIT_USAGE``): the command itself is wrong: argparse's own code for a bad option, and
  this project's for a value outside the allowed ones (an unknown tenant, listed with the known
  ones as argparse lists its choices; a fold out of range; an invalid ``LEGOLAS_*`` setting or
  tenant setting). Fixing the command line (or the environment it runs in) is the way forward.

By the project's style bad user input raises ``ValueError``, so an unclassified ``ValueError``
is a usage error; code that meets a *runtime* condition reported as ``ValueError`` by a library
layer (``ModelRegistry.rollback``) re-raises it as ``CommandError``.

``--json`` makes a command print one JSON document on standard output and nothing else there
(messages go to standard error), so ``legolas status --json | jq`` always parses.

Example:
    >>> exit_code_for(CommandError("tenant 'demo': v1 is the first champion"))
    1
    >>> exit_code_for(UsageError("--folds must be ..."))
    2
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2  # argparse exits with 2 on its own errors: the project's usage errors agree


class CommandError(RuntimeError):
    """A runtime condition that ends a command with exit code 1; its message is shown as is."""


class UsageError(ValueError):
    """A command line no state of the world makes valid: exit code 2; the message names the option,
    the allowed values and what was received."""


def exit_code_for(error: BaseException) -> int:
    """The exit code a failed command ends with: usage (2) or runtime (1).

    Args:
        error: the exception that ended the command. ``UsageError`` and any other ``ValueError``
            (bad input, by the project's style) are usage errors; everything else (``CommandError``,
            the store errors, ``OSError``, ``ChampionUnavailableError``) is a runtime condition.

    Returns:
        ``EXIT_USAGE`` or ``EXIT_RUNTIME``.
    """
    return EXIT_USAGE if isinstance(error, ValueError) else EXIT_RUNTIME


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: the command's result as one JSON document on standard output."""
    parser.add_argument("--json", action="store_true", help="print one JSON document on standard output (messages go to standard error)")


def print_json(document: dict) -> int:
    """Print ``document`` as the one JSON document of standard output; return ``EXIT_OK``.

    Values JSON has no type for (datetimes, paths) are written as their ``str()``.
    """
    json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return EXIT_OK
