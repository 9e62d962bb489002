"""One writer at a time on the embedded store: an exclusive lock file that readers never touch.

litemongo checks a unique index inside the writing process (insert, then look for a second copy,
then roll back), so two processes writing the same review can both keep it, or both drop it, and a
process that opens the store in between sees the transient copy. MongoDB enforces its indexes on the
server; the embedded store needs its writers serialised, which this lock does.

The lock is an ``flock`` on ``<store>/writer.lock``: the kernel releases it when the holder exits,
even on SIGKILL, so a crashed writer never leaves the store locked. Within one process the lock is
re-entrant per thread (a command that opens the store twice does not wait for itself), while other
threads and processes wait.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "writer.lock"
DEFAULT_WAIT_S = 600.0
_POLL_S = 0.05

log = logging.getLogger("legolas.store")

# Per lock file: the thread lock that orders this process's writers, and the open descriptor
# holding the flock with how many nested acquisitions share it.
_REGISTRY_LOCK = threading.Lock()
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, list] = {}  # path -> [file descriptor, depth]


class StoreBusyError(TimeoutError):
    """Another writer held the embedded store for longer than the caller agreed to wait."""


class StoreWriterLock:
    """The exclusive writer lock of one embedded store directory.

    Args:
        store_dir: the embedded store's directory (the one holding the database folders).
        wait_s: how long ``acquire`` waits for another writer before raising ``StoreBusyError``.

    Example:
        >>> lock = StoreWriterLock(tmp_path / "store")  # doctest: +SKIP
        >>> with lock:  # doctest: +SKIP
        ...     insert_the_reviews()
    """

    def __init__(self, store_dir: str | Path, wait_s: float = DEFAULT_WAIT_S) -> None:
        if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or not wait_s >= 0:
            raise ValueError(f"wait_s must be a number of seconds >= 0, got {wait_s!r}")
        self.path = Path(store_dir).absolute() / LOCK_FILE
        self.wait_s = float(wait_s)

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (``"unknown"`` if it cannot be read)."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> None:
        """Wait for the lock (at most ``wait_s``), logging once who is being waited for.

        Raises:
            StoreBusyError: if another writer still holds it after ``wait_s`` seconds (names the holder).
            OSError: if the lock file cannot be created (an unwritable store directory).
        """
        key = str(self.path)
        with _REGISTRY_LOCK:
            thread_lock = _THREAD_LOCKS.setdefault(key, threading.RLock())
        deadline = time.monotonic() + self.wait_s
        if not thread_lock.acquire(blocking=False):
            log.warning("embedded store %s: waiting up to %gs for another writer thread", self.path.parent, self.wait_s)
            if not thread_lock.acquire(timeout=self.wait_s):
                raise self._busy()
        try:
            held = _HELD.get(key)
            if held is not None:  # this thread already holds the flock: nest
                held[1] += 1
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._flock(fd, deadline)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = [fd, 1]
            self._write_holder(fd)
        except BaseException:
            thread_lock.release()
            raise

    def release(self) -> None:
        """Give one acquisition back; the lock file is unlocked when the outermost one is released."""
        key = str(self.path)
        held = _HELD.get(key)
        assert held is not None, f"release() of {self.path} without a matching acquire()"
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
        _THREAD_LOCKS[key].release()

    def __enter__(self) -> "StoreWriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _flock(self, fd: int, deadline: float) -> None:
        """Take the flock, polling until ``deadline`` so a waiter can give up with a clear error."""
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise self._busy()
            if not announced:
                log.warning(
                    "embedded store %s is being written by %s; waiting up to %gs for it to finish",
                    self.path.parent, self.holder(), self.wait_s,
                )
                announced = True
            time.sleep(_POLL_S)

    def _write_holder(self, fd: int) -> None:
        """Record who holds the lock, so a waiting writer can say what it waits for."""
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "python"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command}) since {since}\n".encode("utf-8", "replace"), 0)

    def _busy(self) -> StoreBusyError:
        return StoreBusyError(
            f"the embedded store {self.path.parent} is held by another writer ({self.holder()}) and "
            f"was not released within {self.wait_s:g}s; only one writer may write at a time: wait for it "
            f"to finish, then run the command again"
        )
