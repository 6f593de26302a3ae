"""kube-apiserver identity Leases (Kubernetes >= 1.26, feature APIServerIdentity, KEP-1965).

From Kubernetes's sources:
- name: `apiserver-` + lowercase unpadded base32 of the first 16 bytes of sha256 over the cryptobyte encoding
  (uint16 length-prefixed) of the hostname and of "kube-apiserver" (apiserver/pkg/server/config.go NewConfig);
  the emulator's "host" is the server's node name, since all emulated servers share one machine;
- holderIdentity: `<name>_<uuid>`, a new uuid at every start; namespace kube-system; labels
  `apiserver.kubernetes.io/identity=kube-apiserver` and `kubernetes.io/hostname=<host>`
  (pkg/controlplane/apiserver/server.go: the start-kube-apiserver-identity-lease-controller hook,
  labelAPIServerHeartbeatFunc);
- leaseDurationSeconds 3600, renewed every 10 s (IdentityLeaseDurationSeconds, IdentityLeaseRenewIntervalPeriod);
- garbage collection every 3600 s (IdentityLeaseGCPeriod): each Lease with that label whose renewTime +
  leaseDurationSeconds is in the past is deleted (pkg/controlplane/controller/apiserverleasegc, isLeaseExpired).
Upstream exposes the three values as package variables for its integration tests; the emulator takes them from
K3SEMU_IDENTITY_LEASE_DURATION, K3SEMU_IDENTITY_LEASE_RENEW and K3SEMU_IDENTITY_LEASE_GC (seconds) for the same use.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import uuid
from typing import Dict, List

from .objects import _bump, _store

LABEL = "apiserver.kubernetes.io/identity"
IDENTITY = "kube-apiserver"
NAMESPACE = "kube-system"


def settings() -> Dict[str, float]:
    env = os.environ
    return {
        "duration": float(env.get("K3SEMU_IDENTITY_LEASE_DURATION") or 3600),
        "renew": float(env.get("K3SEMU_IDENTITY_LEASE_RENEW") or 10),
        "gc": float(env.get("K3SEMU_IDENTITY_LEASE_GC") or 3600),
    }


def lease_name(hostname: str) -> str:
    data = b""
    for part in (hostname.encode(), IDENTITY.encode()):
        data += len(part).to_bytes(2, "big") + part
    digest = hashlib.sha256(data).digest()[:16]
    return "apiserver-" + base64.b32encode(digest).decode().rstrip("=").lower()


def holder_identity(hostname: str) -> str:
    return f"{lease_name(hostname)}_{uuid.uuid4()}"


def _micro(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renew(store_dir: str, hostname: str, holder: str, duration: int, now: float) -> None:
    """The lease controller's create-or-renew (component-helpers/apimachinery/lease/controller.go)."""
    name = lease_name(hostname)
    key = f"{NAMESPACE}/{name}"
    with _store(store_dir) as data:
        obj = data["leases"].get(key) or {
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _micro(now)[:19] + "Z",
                "labels": {},
                "annotations": {},
            },
            "spec": {},
        }
        obj["metadata"]["labels"] = {LABEL: IDENTITY, "kubernetes.io/hostname": hostname}
        obj["spec"] = {"holderIdentity": holder, "leaseDurationSeconds": int(duration), "renewTime": _micro(now)}
        obj["metadata"]["resourceVersion"] = _bump(data)
        data["leases"][key] = obj


def collect(store_dir: str, now: float) -> List[str]:
    """apiserverleasegc: delete expired identity Leases; the names deleted."""
    gone: List[str] = []
    with _store(store_dir) as data:
        for key, obj in list(data["leases"].items()):
            if not key.startswith(NAMESPACE + "/") or obj["metadata"].get("labels", {}).get(LABEL) != IDENTITY:
                continue
            spec = obj.get("spec") or {}
            renewed, dur = spec.get("renewTime"), spec.get("leaseDurationSeconds")
            expired = renewed is None or dur is None
            if not expired:
                t = datetime.datetime.strptime(renewed, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
                expired = t.timestamp() + float(dur) < now
            if expired:
                del data["leases"][key]
                gone.append(obj["metadata"]["name"])
        if gone:
            _bump(data)
    return gone
