"""Fault switches, read at the moment they matter so that a test can flip them between steps.

Sources: the control file `<data-dir>/emulator/faults.json` and the environment variable `K3SEMU_FAULTS`
(both a JSON object; the file wins for a name set in both). Values:

    true                      always on
    5                         on; for slow_start the number of seconds
    {"times": 1, ...}         on for the next N times it triggers, then off (file only: the count is
                              decremented in the file; in K3SEMU_FAULTS it is on every time)
    false / null / 0          off

start_stale: the next start keeps the key set on its own disk instead of the datastore's (a joining server
before K3s PR #11844 reconciled from its join peer's disk, not the datastore; FACTS.md "HA bootstrap").

slow_api: every API request whose path starts with "path" (default "/") is answered only after "seconds" (a
kube-apiserver waiting on a stalled datastore answers late, not never; read with `peek`, never used up).

Extra keys: slow_start {"seconds": S}; no_come_back {"mode": "hang" | "exit"} (default hang).
bad_tokens (see identity.py) is read with `peek`, never used up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from typing import Any, Dict, Optional

NAMES = (
    "rotate_ca_fail",
    "no_come_back",
    "stale_keys",
    "slow_start",
    "crash_at_start",
    "datastore_write_fail",
    "bad_tokens",
    "reply_lost",
    "start_stale",
    "slow_api",
)
ENV = "K3SEMU_FAULTS"


def path_for(data_dir: str) -> str:
    return os.path.join(data_dir, "emulator", "faults.json")


def _normalize(name: str, value: Any) -> Optional[Dict[str, Any]]:
    if value is None or value is False:
        return None
    if isinstance(value, dict):
        spec = dict(value)
        if "times" in spec and int(spec["times"]) <= 0:
            return None
        return spec
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            return None
        return {"seconds": float(value)} if name == "slow_start" else {}
    return {}


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: faults must be a JSON object")
    return data


def _write_json(path: str, data: Dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".faults-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(data_dir: str):  # type: ignore[no-untyped-def]
    directory = os.path.join(data_dir, "emulator")
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "faults.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def take(data_dir: str, name: str) -> Optional[Dict[str, Any]]:
    """If fault `name` is on, use it up once and return its settings; else None."""
    assert name in NAMES, name
    with _locked(data_dir):
        path = path_for(data_dir)
        data = _read_json(path)
        if name in data:
            spec = _normalize(name, data[name])
            if spec is not None and "times" in spec:
                left = int(spec["times"]) - 1
                if left > 0:
                    data[name] = dict(spec, times=left)
                else:
                    del data[name]
                _write_json(path, data)
            return spec
    env = os.environ.get(ENV, "").strip()
    if env:
        data = json.loads(env)
        if isinstance(data, dict) and name in data:
            return _normalize(name, data[name])
    return None


def peek(data_dir: str, name: str) -> Optional[Dict[str, Any]]:
    """Fault `name`'s settings if it is on, without using it up."""
    assert name in NAMES, name
    with _locked(data_dir):
        data = _read_json(path_for(data_dir))
    if name in data:
        return _normalize(name, data[name])
    env = os.environ.get(ENV, "").strip()
    data = json.loads(env) if env else {}
    return _normalize(name, data[name]) if isinstance(data, dict) and name in data else None


def set_all(data_dir: str, faults: Dict[str, Any]) -> None:
    """Replace the control file's contents (used by the harness)."""
    unknown = set(faults) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    with _locked(data_dir):
        _write_json(path_for(data_dir), dict(faults))


def read_all(data_dir: str) -> Dict[str, Any]:
    with _locked(data_dir):
        return _read_json(path_for(data_dir))
