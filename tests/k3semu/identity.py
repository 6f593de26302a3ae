"""What kube-apiserver keeps about workload identity: ServiceAccount objects, the service-account token counters
of /metrics, and a fault that makes newly issued tokens fail verification.

- ServiceAccounts: `GET/POST /api/v1/namespaces/NS/serviceaccounts[/NAME]`, stored in
  `<datastore>/serviceaccounts.json` (shared by a cluster's servers, kept across restarts), each with a fresh
  uid. kube-controller-manager's serviceaccounts controller creates `default` in every namespace
  (pkg/controller/serviceaccount/serviceaccounts_controller.go); the emulator does so at start for the
  namespaces K3s has from the start. TokenRequest and TokenReview need the ServiceAccount (api.py).
- Counters: `<data-dir>/emulator/token-counters.json`, e.g. `{"serviceaccount_stale_tokens_total": 3}`. A test
  raises them (`add_counters`, or `EmulatedServer.add_token_uses`); /metrics serves them with
  `process_start_time_seconds`; every server start sets them back to 0, as a restarted kube-apiserver does.
- Fault `bad_tokens` (faults.json, read without being used up): TokenRequest returns tokens that do not verify.
  `{"kid": K}` only while K signs, `{"not_kid": K}` only while another key signs; `"mode": "signature"` (default:
  the signature is not the signer's) or `"kid"` (the header names another kid of the key set).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import tempfile
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import faults, keys

COUNTERS = {
    "serviceaccount_legacy_tokens_total": "Cumulative legacy service account tokens used",
    "serviceaccount_stale_tokens_total": "Cumulative stale projected service account tokens used",
    "serviceaccount_valid_tokens_total": "Cumulative valid projected service account tokens used",
    "serviceaccount_legacy_auto_token_uses_total": "Cumulative auto-generated legacy tokens used",
    "serviceaccount_legacy_manual_token_uses_total": "Cumulative manually created legacy tokens used",
    "serviceaccount_invalid_legacy_auto_token_uses_total": "Cumulative invalid auto-generated legacy tokens used",
}


@contextlib.contextmanager
def _locked(directory: str, name: str) -> Iterator[None]:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: str, data: Dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".identity-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


# ----- token counters
def counters_path(data_dir: str) -> str:
    return os.path.join(data_dir, "emulator", "token-counters.json")


def reset_counters(data_dir: str) -> None:
    with _locked(os.path.join(data_dir, "emulator"), "token-counters.lock"):
        _write(counters_path(data_dir), {})


def add_counters(data_dir: str, by: Dict[str, float]) -> Dict[str, float]:
    unknown = set(by) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counter(s): {', '.join(sorted(unknown))}; known: {', '.join(COUNTERS)}")
    with _locked(os.path.join(data_dir, "emulator"), "token-counters.lock"):
        data = _read(counters_path(data_dir))
        for name, n in by.items():
            data[name] = float(data.get(name, 0)) + float(n)
        _write(counters_path(data_dir), data)
        return {k: float(v) for k, v in data.items()}


def read_counters(data_dir: str) -> Dict[str, float]:
    with _locked(os.path.join(data_dir, "emulator"), "token-counters.lock"):
        return {k: float(v) for k, v in _read(counters_path(data_dir)).items()}


def metrics_text(data_dir: str, started: float) -> str:
    """Prometheus text format 0.0.4, as kube-apiserver's /metrics (only the families k3srotd reads)."""
    values = read_counters(data_dir)
    out = [
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {started:.2f}",
    ]
    for name, text in COUNTERS.items():
        out += [f"# HELP {name} [ALPHA] {text}", f"# TYPE {name} counter", f"{name} {values.get(name, 0):g}"]
    return "\n".join(out) + "\n"


# ----- ServiceAccounts
def _sa_path(store_dir: str) -> str:
    return os.path.join(store_dir, "serviceaccounts.json")


def get_sa(store_dir: str, namespace: str, name: str) -> Optional[Dict[str, Any]]:
    with _locked(store_dir, "serviceaccounts.lock"):
        obj = _read(_sa_path(store_dir)).get(f"{namespace}/{name}")
    return obj if isinstance(obj, dict) else None


def list_sa(store_dir: str, namespace: str) -> List[Dict[str, Any]]:
    with _locked(store_dir, "serviceaccounts.lock"):
        objs = _read(_sa_path(store_dir))
    return [v for k, v in sorted(objs.items()) if k.startswith(namespace + "/")]


def create_sa(store_dir: str, namespace: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """(201, the object) or (409 | 422, a Status message and reason)."""
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    name = str(meta.get("name") or "")
    if not name:
        return 422, {"reason": "Invalid", "message": "ServiceAccount is invalid: metadata.name: Required value"}
    if meta.get("namespace") not in (None, namespace):
        return 422, {
            "reason": "BadRequest",
            "message": "the namespace of the provided object does not match the namespace sent on the request",
        }
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    with _locked(store_dir, "serviceaccounts.lock"):
        objs = _read(_sa_path(store_dir))
        key = f"{namespace}/{name}"
        if key in objs:
            return 409, {"reason": "AlreadyExists", "message": f'serviceaccounts "{name}" already exists'}
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = {
            "kind": "ServiceAccount",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(len(objs) + 1),
                "creationTimestamp": now,
                "labels": {str(k): str(v) for k, v in labels.items()},
            },
        }
        objs[key] = obj
        _write(_sa_path(store_dir), objs)
    return 201, obj


def ensure_default_service_accounts(store_dir: str) -> None:
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        if get_sa(store_dir, ns, "default") is None:
            create_sa(store_dir, ns, {"metadata": {"name": "default"}})


# ----- fault bad_tokens
def tamper(data_dir: str, token: str, public_keys: List[keys.PublicKey], extra: Dict[str, Any]) -> str:
    """The token as issued, or spoilt as the fault bad_tokens asks."""
    spec = faults.peek(data_dir, "bad_tokens")
    if spec is None:
        return token
    head, payload, _sig = token.split(".")
    signer = json.loads(keys.b64url_decode(head))["kid"]
    if "kid" in spec and spec["kid"] != signer:
        return token
    if "not_kid" in spec and spec["not_kid"] == signer:
        return token
    if spec.get("mode") == "kid":
        others = [keys.kid_of(k) for k in public_keys if keys.kid_of(k) != signer]
        header = json.loads(keys.b64url_decode(head))
        header["kid"] = others[-1] if others else "unknown-kid"
        new_head = keys.b64url(json.dumps(header, separators=(",", ":")).encode())
        return new_head + "." + payload + "." + _sig
    other = extra.get("bad_tokens_key")
    if other is None:
        other = extra["bad_tokens_key"] = keys.new_rsa_key(2048)
    from . import jwt

    forged = jwt.sign(other, json.loads(keys.b64url_decode(payload)))
    return head + "." + payload + "." + forged.split(".")[2]
