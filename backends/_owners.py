"""Knowing for sure, on one machine, that the engine holding a claim has died.

Each engine that claims work from a directory holds an exclusive ``flock`` on
``owners/<owner>.lock`` for as long as it lives.  The kernel drops the lock
when the process dies, however it dies (kill -9 included), so another engine
that can take the lock knows the owner is gone and may recover its claims at
once instead of waiting for their leases to run out.  An owner with no lock
file (another machine, or an older engine) is never judged dead: its claims
wait for their leases as usual.

The lock files are private (0600) in a private folder (0700).  Errors are
``OSError``; the backend reports them as ``BackendError``.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import stat
import threading
from pathlib import Path

__all__ = ["OwnerLocks"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class OwnerLocks:
    """The owner lock files of one data directory (thread-safe)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def _path(self, owner: str) -> Path:
        return self.directory / f"{_UNSAFE.sub('_', owner)}.lock"

    def holds(self, owner: str) -> bool:
        """True if this process holds ``owner``'s lock."""
        return owner in self._held

    def hold(self, owner: str) -> None:
        """Take (and keep) the lock of an owner of this process; idempotent."""
        with self._lock:
            if owner in self._held:
                return
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path(owner), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:  # an old file, or an odd umask
                    os.fchmod(fd, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._held[owner] = fd

    def is_dead(self, owner: str) -> bool:
        """True only if ``owner`` ran on this machine and its process has ended."""
        with self._lock:
            if owner in self._held or not owner.startswith(self._host + ":"):
                return False
        path = self._path(owner)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: alive
        finally:
            os.close(fd)  # closing drops a lock we may have taken
        return True

    def forget(self, owner: str) -> None:
        """Remove the lock file of an owner found dead (its claims are recovered)."""
        try:
            self._path(owner).unlink()
        except FileNotFoundError:
            pass

    def release_all(self) -> None:
        """Drop every lock this process holds and remove their files."""
        with self._lock:
            held, self._held = self._held, {}
        for owner, fd in held.items():
            self.forget(owner)
            os.close(fd)
