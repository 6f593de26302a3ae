"""The two places k3srotd keeps key material: backups in state-dir, and the file staged for rotate-ca."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.store import ensure_private_dir, fsync_dir, read_regular, write_atomic

if TYPE_CHECKING:
    from k3srotd.node.k3s import K3s


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
        """Regular files only: a link in backups/ is nothing k3srotd made, and is neither read nor removed."""
        if self.dir.is_symlink() or not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.suffix == ".key" and stat.S_ISREG(os.lstat(p).st_mode))

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

    def read(self, path: str, want_sha256: Optional[str] = None) -> bytes:
        """A backup named by the state: only a regular file directly inside backups/ (no link), and, when the
        state recorded it, with the same sha256 as when it was taken. SafetyRefusal otherwise."""
        p = Path(path)
        if p.parent != self.dir or p.name in ("", ".", "..") or not p.name.endswith(".key"):
            raise SafetyRefusal(f"{path}: is not a backup in {self.dir}; the state names another file. Check it")
        if os.path.realpath(self.dir) != os.path.abspath(self.dir):
            raise SafetyRefusal(f"{self.dir}: is reached through a symlink; k3srotd reads backups only in place")
        data = read_regular(p, follow=False)
        if want_sha256 is not None and sha256(data) != want_sha256:
            raise SafetyRefusal(
                f"{path}: changed since k3srotd wrote it (sha256 differs); it is not uploaded. Check who wrote it"
            )
        return data

    def drop_gone_keys(self, live_kids: Iterable[str], protect: Iterable[str]) -> list[Path]:
        """After a committed, verified step: remove backups that hold a private key no longer in the live file
        (a pruned key), except `protect` (the backup a rollback of this step needs; it goes after the next)."""
        from k3srotd.core import keys

        live, keep, removed = set(live_kids), set(protect), []
        for p in self.files():
            if str(p) in keep:
                continue
            try:
                kf = keys.parse(read_regular(p, follow=False), str(p))
            except (OSError, SafetyRefusal):
                continue  # not ours to judge: trim() ages it out
            if any(b.is_private and b.kid not in live for b in kf.blocks):
                p.unlink()
                removed.append(p)
        if removed:
            fsync_dir(self.dir)
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
        from k3srotd.node.ownership import require_path

        require_path(str(self.key), "staging-dir")
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
            return read_regular(self.key, follow=False)
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


def resync_datastore(staging: Staging, k3s: K3s) -> Callable[[], None]:
    """For a corrupt state: make the datastore hold the live file again (rotate-ca, no restart), so that the
    state can be rebuilt from the live file. Refused (exit 3) when a staged file is left from a step, or when K3s
    cannot take the upload: then nobody knows what the datastore holds, and a human must look."""

    def resync() -> None:
        from k3srotd.core import keys

        if os.path.lexists(staging.key):
            raise SafetyRefusal(
                f"{staging.key}: is left from an interrupted step while the state is corrupt; rotate-ca may have "
                f"uploaded it. Copy {k3s.live_path} over it, run `{' '.join(k3s.rotate_ca_argv())}`, remove it, "
                "then run k3srotd again"
            )
        live = k3s.live_bytes()
        keys.parse(live, str(k3s.live_path))
        if k3s.server_process() is None:
            raise SafetyRefusal(
                "the state is corrupt and K3s is not running, so the datastore cannot be put back to the live key "
                "file; start K3s, then run k3srotd again"
            )
        staging.write(live)
        try:
            res = k3s.rotate_ca()
        finally:
            staging.remove()
        if not res.ok:
            raise SafetyRefusal(
                f"the state is corrupt and `k3s certificate rotate-ca` of the live key file failed ({res.tail()}); "
                "run it by hand, then run k3srotd again"
            )

    return resync
