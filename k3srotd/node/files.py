"""The two places k3srotd keeps key material: backups in state-dir, and the file staged for rotate-ca."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional

from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.store import ensure_private_dir, fsync_dir, write_atomic


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Backups:
    """<state-dir>/backups/<UTC time>-<step>.key, mode 0600, the newest backup-keep kept."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.dir = directory
        self.keep = keep

    def save(self, data: bytes, step: str, now: dt.datetime) -> Path:
        ensure_private_dir(self.dir)
        stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.dir / f"{stamp}-{step}.key"
        write_atomic(path, data, 0o600)
        return path

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.suffix == ".key" and p.is_file())

    def trim(self, protect: Iterable[str]) -> list[Path]:
        """Remove the oldest beyond `keep`, never one a pending step or a rollback still needs."""
        keep = set(protect)
        files = self.files()
        removed = []
        for p in files[: max(0, len(files) - self.keep)]:
            if str(p) not in keep:
                p.unlink()
                removed.append(p)
        return removed


class Staging:
    """<staging-dir>/server/tls/service.key: the file rotate-ca uploads. 0600, folders 0700, ours alone."""

    def __init__(self, staging_dir: str) -> None:
        self.root = Path(staging_dir)
        self.server = self.root / "server"
        self.tls = self.server / "tls"
        self.key = self.tls / "service.key"

    def check(self) -> None:
        """Refuse a staging path that another user could swap or read, or that holds other files."""
        uid = os.geteuid()
        for p in (self.root, self.server, self.tls, self.key):
            if p.is_symlink():
                raise SafetyRefusal(f"{p}: is a symlink; k3srotd writes key material only to a real path it owns")
            if p.exists() and p.stat().st_uid != uid:
                raise SafetyRefusal(
                    f"{p}: is owned by uid {p.stat().st_uid}, not {uid}; remove it or set staging-dir elsewhere"
                )
        if self.tls.is_dir():
            others = sorted(x.name for x in self.tls.iterdir() if x.name != "service.key" and not self._leftover(x))
            if others:
                raise SafetyRefusal(
                    f"{self.tls}: holds {', '.join(others)}; rotate-ca would upload them too. Move them away"
                )

    def _leftover(self, p: Path) -> bool:
        """A temp file of write_atomic that a killed k3srotd left (rotate-ca reads only named files)."""
        return p.name.startswith(f".{self.key.name}.tmp.") and p.is_file() and not p.is_symlink()

    def _remove_leftovers(self) -> None:
        if self.tls.is_dir():
            for p in self.tls.iterdir():
                if self._leftover(p) and p.stat().st_uid == os.geteuid():
                    p.unlink()  # it may hold a half-written key: never leave it behind

    def prepare(self) -> None:
        """Check the staging path and create its folders (0700): before any step begins."""
        self.check()
        self._remove_leftovers()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            ensure_private_dir(self.server)
            ensure_private_dir(self.tls)
        except PermissionError as e:
            raise ConfigError(
                f"{e.filename or self.root}: staging-dir is not writable; fix its permissions or set staging-dir"
            ) from None
        except OSError as e:
            raise ConfigError(
                f"{e.filename or self.root}: cannot create the staging folders ({e.strerror}); set staging-dir"
            ) from None

    def write(self, data: bytes) -> None:
        self.prepare()
        try:
            write_atomic(self.key, data, 0o600)
        except PermissionError as e:
            raise ConfigError(
                f"{e.filename or self.root}: staging-dir is not writable; fix its permissions or set staging-dir"
            ) from None
        except OSError as e:
            raise ConfigError(f"{e.filename or self.root}: cannot write the staging file ({e.strerror})") from None

    def read(self) -> Optional[bytes]:
        try:
            return self.key.read_bytes()
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        """Remove the staged key once K3s has loaded it; and the folders k3srotd made, when empty."""
        self._remove_leftovers()
        try:
            self.key.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        fsync_dir(self.tls)
        for d in (self.tls, self.server):
            try:
                d.rmdir()
            except OSError:
                break
