"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Write to a temp file in the same directory, fsync, then ``os.replace`` over the target (atomic on
POSIX within one filesystem). A crash leaves at most a hidden ``.<name>.*.tmp`` file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# mkstemp creates 0600 files and the rename keeps that mode; artifacts should get the permissions
# of any other file the user writes (shared machines: teammates read reports and checkpoints).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, and rename it over ``path``.

    Raises:
        OSError: if the directory cannot be created or written; the message names the directory.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write under {path.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: after a power loss a file written later (a log line fsynced after a
    pointer switch) must not survive while the rename it followed is lost."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles (Windows): the rename is as durable as they make it
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
