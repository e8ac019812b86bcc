"""One daemon per store: an exclusive OS file lock beside the store file.

``<store>.lock`` (beside the real file, symlinks resolved) is locked with ``flock`` by the
daemon that writes the store, for as long as it runs, and holds that daemon's pid. The kernel
releases the lock when the process ends, however it ends, so a crashed daemon never leaves a
stale lock behind. Readers (``serve``, the API, Datasette) take no lock: SQLite's WAL lets them
read beside the one writer.

The lock file itself is left in place when the daemon stops: removing it would let a daemon
starting at that moment lock a file nobody else can see any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from connect.errors import StoreUnusable


def lock_path(store_path: str) -> str:
    """Where the lock of ``store_path`` lives."""
    return os.path.realpath(store_path) + ".lock"


def holder_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, when it has written one."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None


class StoreLock:
    """The held lock of one store; :meth:`release` (or the end of the process) lets it go."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, store_path: str) -> StoreLock:
        """Lock ``store_path`` for this process, or raise :class:`StoreUnusable` in one line
        naming the store and (where known) the pid of the daemon that holds it."""
        path = lock_path(store_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreUnusable(
                f"store {store_path!r}: cannot create its lock file {path!r} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(fd)
            os.close(fd)
            holder = f"pid {pid}" if pid is not None else "pid unknown"
            raise StoreUnusable(
                f"store {store_path!r}: in use by another daemon ({holder}); one daemon per store: "
                "stop it, or name another --store-path / CONNECT_STORE_PATH"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreUnusable(
                f"store {store_path!r}: cannot lock {path!r} ({exc.strerror or exc})"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for people; the lock works without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid of a process that no longer holds it
        os.close(fd)  # closing the only descriptor releases the flock


__all__ = ["StoreLock", "holder_pid", "lock_path"]
