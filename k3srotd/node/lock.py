"""One k3srotd at a time per K3s: non-blocking fcntl locks that die with their holder.

Two locks: on the K3s data dir itself (a held directory descriptor), so that any two configs aimed at one K3s
exclude each other whatever their state-dir; and on <state-dir>/lock, which also records the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Optional

from k3srotd.errors import LockHeld
from k3srotd.node.store import NO_ROOM, ensure_private_dir

WHAT_TO_DO = "wait for it to finish, or stop it (systemctl stop k3srotd) for a manual step"


class Lock:
    def __init__(self, path: Path, k3s_data_dir: Optional[str] = None) -> None:
        self.path = path
        self.k3s_data_dir = k3s_data_dir
        self._fd: Optional[int] = None
        self._dir_fd: Optional[int] = None

    def _lock_data_dir(self) -> None:
        if not self.k3s_data_dir:
            return
        real = os.path.realpath(self.k3s_data_dir)  # one K3s, however the configs spell its path
        try:
            fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no K3s here: the server-node check refuses
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(
                f"{real}: another k3srotd (perhaps with another config or state-dir) is working on this K3s; "
                + WHAT_TO_DO
            ) from None
        self._dir_fd = fd

    def acquire(self) -> None:
        self._lock_data_dir()
        try:
            ensure_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except BaseException:
            self.release()
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            self.release()
            raise LockHeld(f"{self.path}: another k3srotd (pid {holder[:20]}) is working; " + WHAT_TO_DO) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # the pid only tells a second k3srotd who holds the lock; a full disk must not stop us
            if e.errno not in NO_ROOM:
                self.release()
                raise

    def release(self) -> None:
        for name in ("_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing drops the flock
                setattr(self, name, None)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self, et: Optional[type[BaseException]], ev: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.release()
