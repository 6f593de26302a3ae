"""Bootstrap data: the CA files, service.key and passwords every server of a cluster shares.

Modelled on K3s's pkg/bootstrap and pkg/cluster/bootstrap.go:
- the data is a JSON map `{"ServiceKey": {"Timestamp": "<RFC 3339>", "Content": "<base64>"}, ...}` keyed by the
  field names of config.ControlRuntimeBootstrap;
- `read_from_disk` is bootstrap.ReadFromDisk (a missing file is a warning and is left out);
- `write_to_disk` is bootstrap.WriteToDiskFromStorage (mkdir 0700, write with mode 0600 on creation, then
  set the file's times to the datastore timestamp);
- `reconcile` is Cluster.ReconcileBootstrapData.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from . import log

# Field name -> path relative to <data-dir>/server ("" = not used by this server, as K3s without
# secrets-encryption). Order as in config.ControlRuntimeBootstrap.
FIELDS: Dict[str, str] = {
    "ETCDServerCA": "tls/etcd/server-ca.crt",
    "ETCDServerCAKey": "tls/etcd/server-ca.key",
    "ETCDPeerCA": "tls/etcd/peer-ca.crt",
    "ETCDPeerCAKey": "tls/etcd/peer-ca.key",
    "ServerCA": "tls/server-ca.crt",
    "ServerCAKey": "tls/server-ca.key",
    "ClientCA": "tls/client-ca.crt",
    "ClientCAKey": "tls/client-ca.key",
    "ServiceKey": "tls/service.key",
    "PasswdFile": "cred/passwd",
    "RequestHeaderCA": "tls/request-header-ca.crt",
    "RequestHeaderCAKey": "tls/request-header-ca.key",
    "IPSECKey": "cred/ipsec.psk",
    "EncryptionConfig": "",
    "EncryptionHash": "",
}
# Fields tagged `rotate:"true"`: the ones rotate-ca may replace.
ROTATE = {f for f in FIELDS if f not in ("PasswdFile", "IPSECKey", "EncryptionConfig", "EncryptionHash")}
SYSTEM_TIME_SKEW = 3  # seconds, as pkg/cluster/bootstrap.go

_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$")


def format_ts(ns: int) -> str:
    """RFC 3339 with nanoseconds, trailing zeros trimmed, in UTC (Go's time.RFC3339Nano)."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def parse_ts(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp."""
    m = _TS.match(text.strip())
    if not m:
        raise ValueError(f"parsing time {text!r} as RFC3339: cannot parse")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    ns = int((frac or "0")[:9].ljust(9, "0"))
    return secs * 1_000_000_000 + ns


def unix_seconds(ns: int) -> int:
    """Go's Time.Unix(): whole seconds, rounded down."""
    return ns // 1_000_000_000


@dataclass
class File:
    timestamp_ns: int
    content: bytes

    def to_json(self) -> dict:
        return {"Timestamp": format_ts(self.timestamp_ns), "Content": base64.b64encode(self.content).decode()}

    @classmethod
    def from_json(cls, obj: dict) -> File:
        content = obj.get("Content") or ""
        return cls(parse_ts(str(obj.get("Timestamp") or "0001-01-01T00:00:00Z")), base64.b64decode(content))


Files = Dict[str, File]


def decode(data: bytes) -> Files:
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("bootstrap data is not a JSON object")
    return {k: File.from_json(v) for k, v in raw.items() if isinstance(v, dict)}


def encode(files: Files) -> bytes:
    return json.dumps({k: files[k].to_json() for k in sorted(files)}).encode()


def paths(server_dir: str) -> Dict[str, str]:
    return {f: (os.path.join(server_dir, rel) if rel else "") for f, rel in FIELDS.items()}


def read_from_disk(field_paths: Dict[str, str]) -> Files:
    out: Files = {}
    for name in sorted(field_paths):
        path = field_paths[name]
        if not path:
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            log.warn(f"failed to stat {name}: stat {path}: {_os_err(exc)}")
            continue
        with open(path, "rb") as f:
            out[name] = File(st.st_mtime_ns, f.read())
    return out


def _os_err(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def write_file(path: str, content: bytes, timestamp_ns: Optional[int] = None) -> None:
    """os.WriteFile(path, content, 0600) (an existing file keeps its mode), then os.Chtimes."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    if timestamp_ns is not None:
        os.utime(path, ns=(timestamp_ns, timestamp_ns))


def write_to_disk(files: Files, field_paths: Dict[str, str]) -> None:
    for name, f in files.items():
        path = field_paths.get(name, "")
        if path:
            write_file(path, f.content, f.timestamp_ns)


def _is_newer_file(path: str, f: File) -> Tuple[bool, bool]:
    """(updated, newer_on_disk), as isNewerFile."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            st = os.fstat(fh.fileno())
    except FileNotFoundError:
        log.warn(path + " doesn't exist. continuing...")
        return True, False
    if data == f.content:
        return False, False
    if unix_seconds(st.st_mtime_ns) - unix_seconds(f.timestamp_ns) >= SYSTEM_TIME_SKEW:
        return True, True
    log.warn(path + " will be updated from the datastore.")
    return True, False


def cert_dirs_exist(server_dir: str) -> bool:
    for d in ("cred", "tls", "tls/etcd"):
        if not os.path.isdir(os.path.join(server_dir, d)):
            log.debug(os.path.join(server_dir, d) + " doesn't exist")
            return False
    return True


def reconcile(files: Files, server_dir: str) -> None:
    """Bring the disk in line with the datastore, or log the fatal 'newer than datastore' error and exit."""
    log.info("Reconciling bootstrap data between datastore and disk")
    field_paths = paths(server_dir)
    if not cert_dirs_exist(server_dir):
        log.debug("One or more certificate directories do not exist; writing data to disk from datastore")
        write_to_disk(files, field_paths)
        return
    update_disk = False
    newer_on_disk: List[str] = []
    for name in sorted(files):
        path = field_paths.get(name, "")
        if not path:
            log.warn(f"Unable to lookup path to reconcile {name}")
            continue
        updated, newer = _is_newer_file(path, files[name])
        if newer:
            newer_on_disk.append(path)
        update_disk = update_disk or updated
    if newer_on_disk:
        log.fatal(
            ", ".join(newer_on_disk) + " newer than datastore and could cause a cluster outage. "
            "Remove the file(s) from disk and restart to be recreated from datastore."
        )
    if update_disk:
        log.warn("Updating bootstrap data on disk from datastore")
        write_to_disk(files, field_paths)


class DatastoreError(Exception):
    pass


class Datastore:
    """A folder that holds one cluster's bootstrap data, shared by its servers, guarded by fcntl locks.

    Stands in for K3s's datastore (sqlite at <data-dir>/server/db/ by default, or an external or etcd
    datastore shared by several servers)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.data_path = os.path.join(directory, "bootstrap.json")
        self.lock_path = os.path.join(directory, "bootstrap.lock")

    @contextlib.contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[None]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read(self) -> Optional[Files]:
        try:
            with open(self.data_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return decode(data) if data.strip() else None

    def write(self, files: Files) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".bootstrap-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode(files))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.data_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
