"""Durable files in state-dir: atomic writes, private folders, and state.json's store."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

from k3srotd.core.model import State
from k3srotd.errors import ConfigError


def ensure_private_dir(path: Path) -> None:
    """Create a 0700 directory; tighten an existing one that is group- or world-accessible."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write temp + fsync + rename + fsync(dir): the file is either the old or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not leave half a key file behind
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Loads and saves the state file of a state dir."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.notes: list[str] = []  # what load() had to repair, for the caller to log

    def load(self, now: dt.datetime) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot be read ({e.strerror}); check state-dir") from None
        try:
            return State.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            # Keep the damaged file for a human, start again from the live key file.
            aside = self.path.with_name(f"state.json.corrupt-{now.strftime('%Y%m%dT%H%M%SZ')}")
            os.replace(self.path, aside)
            self.notes.append(
                f"{self.path}: was corrupt ({type(e).__name__}); kept it as {aside} and rebuilt the state "
                "from the live key file"
            )
            return State()

    def save(self, state: State) -> None:
        ensure_private_dir(self.dir)
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(self.path, data)
