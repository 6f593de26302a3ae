"""Nodes as K3s and the node lifecycle controller make them, stored with the Leases in objects.py's store.

- A server registers a Node only when it runs an agent (kubelet): `--disable-agent` means no Node at all. K3s labels
  it `node-role.kubernetes.io/control-plane=true` and `master=true` only when the server runs both the agent and
  the apiserver (k3s pkg/server/server.go setNodeLabelsAndAnnotations returns early on DisableAgent or
  DisableAPIServer); `node-role.kubernetes.io/etcd=true` comes from the etcd member controller (pkg/etcd).
- The kubelet heartbeats through its node Lease every nodeLeaseDurationSeconds * 0.25 (pkg/kubelet/kubelet.go,
  nodeLeaseRenewIntervalFraction; default 40 s, so 10 s), honoured from `kubelet-arg: node-lease-duration-seconds=N`.
- Ready turns Unknown ("Kubelet stopped posting node status.") only once no heartbeat came for the node monitor
  grace period (pkg/controller/nodelifecycle/node_lifecycle_controller.go tryUpdateNodeHealth;
  `--node-monitor-grace-period`, default 40 s, pkg/controller/nodelifecycle/config/v1alpha1/defaults.go),
  honoured from `kube-controller-manager-arg: node-monitor-grace-period=D`. It is computed when read, from the
  last heartbeat and the answering server's grace. A Node is never deleted by the emulator.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any, Dict, Optional

from .objects import CONTROL_PLANE, Result, _bump, _not_found, _store, selected

DEFAULT_GRACE = 40.0
DEFAULT_NODE_LEASE_SECONDS = 40
RENEW_FRACTION = 0.25


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_node(store_dir: str, name: str, control_plane: bool = True, address: str = "127.0.0.1") -> None:
    """Create or refresh this server's Node and post its first heartbeat."""
    now = time.time()
    with _store(store_dir) as data:
        node = data["nodes"].get(name) or {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"node/{name}")),
                "creationTimestamp": _rfc3339(now),
            },
            "spec": {},
        }
        labels = node["metadata"].setdefault("labels", {})
        labels.update({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"})
        if control_plane:
            labels.update({CONTROL_PLANE: "true", "node-role.kubernetes.io/master": "true"})
            labels["node-role.kubernetes.io/etcd"] = "true"
        node["status"] = {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        }
        node["metadata"]["resourceVersion"] = _bump(data)
        data["nodes"][name] = node
        data.setdefault("heartbeats", {})[name] = now
        data.setdefault("ready_since", {})[name] = now


def heartbeat(store_dir: str, name: str) -> None:
    """The kubelet renewing its node Lease (no resourceVersion bump on the Node, as a Lease renew)."""
    with _store(store_dir) as data:
        if name in data["nodes"]:
            beats = data.setdefault("heartbeats", {})
            if time.time() - float(beats.get(name, 0)) > 0:
                beats[name] = time.time()


def _view(node: Dict[str, Any], beat: float, since: float, grace: float, now: float) -> Dict[str, Any]:
    out = dict(node)
    if now - beat <= grace:
        cond = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": _rfc3339(beat),
            "lastTransitionTime": _rfc3339(since),
        }
    else:
        cond = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": _rfc3339(beat),
            "lastTransitionTime": _rfc3339(beat + grace),
        }
    out["status"] = dict(node.get("status") or {}, conditions=[cond])
    return out


def list_nodes(store_dir: str, selector: str = "", grace: float = DEFAULT_GRACE) -> Dict[str, Any]:
    now = time.time()
    with _store(store_dir) as data:
        beats, since = data.get("heartbeats", {}), data.get("ready_since", {})
        items = [
            _view(n, float(beats.get(k, 0)), float(since.get(k, 0)), grace, now)
            for k, n in sorted(data["nodes"].items())
            if selected(n["metadata"].get("labels", {}), selector)
        ]
        rv = str(data["revision"])
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}


def get_node(store_dir: str, name: str, grace: float = DEFAULT_GRACE) -> Result:
    now = time.time()
    with _store(store_dir) as data:
        node: Optional[Dict[str, Any]] = data["nodes"].get(name)
        beat = float(data.get("heartbeats", {}).get(name, 0))
        since = float(data.get("ready_since", {}).get(name, 0))
    if node is None:
        return _not_found("nodes", name)
    return 200, _view(node, beat, since, grace, now)
