"""Durable files: atomic writes, private folders, bounded reads of regular files (no FIFO, no symlink swapped in),
and the JSON store of every state-dir file."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar

from k3srotd.core.model import VERSION, State
from k3srotd.core.text import cut
from k3srotd.errors import ConfigError, NoSpace, SafetyRefusal

T = TypeVar("T")


def ensure_private_dir(path: Path) -> None:
    """Create a 0700 directory; tighten an existing one that is group- or world-accessible. Refuse a symlink or a
    folder of another user: root would write key material where they chose, and trim files there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SafetyRefusal(f"{path}: is a symlink or no folder; k3srotd keeps its files only in a real folder it owns")
    if st.st_uid not in (0, os.geteuid()):
        raise SafetyRefusal(f"{path}: is owned by uid {st.st_uid}, not root; remove it (k3srotd creates it)")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def no_room(path: Path, e: OSError) -> NoSpace:
    """The one line for a full (or read-only) filesystem under a file k3srotd keeps."""
    return NoSpace(f"{path}: cannot be written ({e.strerror}); the file is as it was. Free space in {path.parent}")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write temp + fsync + rename + fsync(dir): the file is either the old or the new one, never half. A full
    filesystem is a NoSpace naming the file, not an unexpected OSError."""
    try:
        _write_atomic(path, data, mode)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise no_room(path, e) from None
        raise


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
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


KEY_FILE_CAP = 1024 * 1024  # a service.key of a thousand RSA-4096 keys is ~3 MB short of this; no real one is near


def read_regular(path: Path, cap: int = KEY_FILE_CAP, follow: bool = True) -> bytes:
    """A regular file's bytes, at most `cap`. O_NONBLOCK so that a FIFO cannot hang us, the type checked on the
    open descriptor (no window to swap it), O_NOFOLLOW unless `follow`. FileNotFoundError passes through;
    anything else that is no regular file of sane size is a SafetyRefusal naming the path."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SafetyRefusal(f"{path}: is a symlink; k3srotd reads it only as a real file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SafetyRefusal(f"{path}: is not a regular file; replace it with the real file")
        if st.st_size > cap:
            raise SafetyRefusal(f"{path}: is larger than {cap // 1024} KiB; it is no key file. Check the path")
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(65536, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise SafetyRefusal(f"{path}: is larger than {cap // 1024} KiB; it is no key file. Check the path")
        return b"".join(chunks)
    finally:
        os.close(fd)


MAX_JSON_BYTES = 16 * 1024 * 1024


MISSING: Any = object()  # read_raw: there is no file


class CorruptFile(ValueError):
    """A JSON file in state-dir that cannot be what k3srotd wrote."""


_BROKEN = (ValueError, KeyError, TypeError, AttributeError, AssertionError, OverflowError, RecursionError)


class JsonStore(Generic[T]):
    """One JSON file in state-dir: read only as a regular file (no symlink, bounded), decoded by `decode`;
    written atomically (temp + fsync + rename), 0600, in a private folder. The one loader for every state-dir
    file (state.json, the cluster's book, token history...): each passes its own decode and encode."""

    def __init__(self, path: Path, decode: Callable[[Any], T], encode: Callable[[T], Any]) -> None:
        self.path = path
        self.decode = decode
        self.encode = encode

    def read_raw(self) -> Any:
        """The parsed JSON, or MISSING when there is no file (JSON `null` is None). CorruptFile when it is no JSON."""
        try:
            raw = read_regular(self.path, MAX_JSON_BYTES, follow=False)
        except FileNotFoundError:
            return MISSING
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot be read ({e.strerror}); check state-dir") from None
        try:
            return json.loads(raw)
        except _BROKEN as e:
            raise CorruptFile(f"not JSON ({type(e).__name__})") from None

    def read_raw_or_corrupt(self) -> Any:
        """read_raw, with a CorruptFile returned rather than raised."""
        try:
            return self.read_raw()
        except CorruptFile as e:
            return e

    def load(self, default: Callable[[], T]) -> T:
        """The decoded value; `default()` when there is no file. CorruptFile when it cannot be decoded."""
        data = self.read_raw()
        if data is MISSING:
            return default()
        try:
            return self.decode(data)
        except CorruptFile:
            raise
        except _BROKEN as e:
            raise CorruptFile(f"{type(e).__name__}: {cut(str(e), 120)}") from None

    def load_or(self, default: Callable[[], T]) -> T:
        """For files that only remember (the books, the token history): a missing, unreadable or corrupt file
        reads as `default()`, and the next save rewrites it."""
        try:
            return self.load(default)
        except (CorruptFile, ConfigError):
            return default()

    def save(self, value: T) -> None:
        ensure_private_dir(self.path.parent)
        data = json.dumps(self.encode(value), indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(self.path, data)


def json_object(data: Any) -> dict[str, Any]:
    """A book's decode: a JSON object, as written."""
    if not isinstance(data, dict):
        raise CorruptFile(f"holds a JSON {type(data).__name__}, not an object")
    return data


def as_is(value: T) -> T:
    return value


def decode_state(data: Any) -> State:
    """state.json as k3srotd wrote it; CorruptFile (or a decode error) otherwise."""
    if not isinstance(data, dict):
        raise CorruptFile(f"holds a JSON {type(data).__name__}, not an object")
    return State.from_json(data)


class Store:
    """Loads and saves the state file of a state dir."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.file: JsonStore[State] = JsonStore(self.path, decode_state, State.to_json)
        self.notes: list[str] = []  # what load() had to repair, for the caller to log

    def load(self, now: dt.datetime, resync: Optional[Callable[[], None]] = None) -> State:
        """The state. A newer version is refused (exit 3): this k3srotd cannot know what it records. A corrupt
        one is rebuilt from the live file only after `resync` has put the datastore back to the live file (and
        found no staged file); without `resync`, or when it cannot, refused (exit 3) with what to do."""
        try:
            return self._read()
        except _BROKEN as e:
            why = str(e) if isinstance(e, CorruptFile) else f"{type(e).__name__}: {cut(str(e), 120)}"
        if resync is None:
            raise SafetyRefusal(
                f"{self.path}: is corrupt ({why}); run `k3srotd rotate-now --dry-run` after checking K3s, or move "
                "the file away to rebuild it from the live key file"
            )
        resync()  # refuses when the datastore cannot be shown to match the live file
        aside = self.path.with_name(f"state.json.corrupt-{now.strftime('%Y%m%dT%H%M%SZ')}")
        os.replace(self.path, aside)
        self.notes.append(
            f"{self.path}: was corrupt ({why}); kept it as {aside}, put the datastore back to the live key file "
            "and rebuilt the state from it"
        )
        return State()

    def load_readonly(self) -> State:
        """For status and dry runs, which write nothing: a newer version is refused as by load(); a corrupt file
        reads as an empty state, with a note saying so (the next step rebuilds it, or refuses)."""
        try:
            return self._read()
        except _BROKEN as e:
            self.notes.append(
                f"{self.path}: is corrupt ({cut(str(e), 120)}); the next step rebuilds it or says why not"
            )
            return State()

    def _read(self) -> State:
        """The state as the file holds it; a newer version refused; a corrupt file raises one of _BROKEN."""
        data = self.file.read_raw_or_corrupt()
        self._refuse_newer(data)
        if isinstance(data, CorruptFile):
            raise data
        return State() if data is MISSING else self.file.decode(data)

    def _refuse_newer(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("version"), int) and data["version"] > VERSION:
            raise SafetyRefusal(
                f"{self.path}: was written by a newer k3srotd (state version {data['version']}; this one knows "
                f"{VERSION}); upgrade k3srotd on this server again"
            )

    def save(self, state: State) -> None:
        self.file.save(state)
