"""Cluster objects the servers of one datastore share: Nodes and coordination.k8s.io/v1 Leases.

Stored in `<datastore>/objects.json` under an exclusive `flock` of `<datastore>/objects.lock`, so every server of
an EmulatedCluster sees the same objects, and they outlive restarts (as etcd does). One resourceVersion counter for
the whole store, as etcd's revision.

- Nodes: each server registers its Node at start (`--node-name`, else the hostname, as K3s), labelled as K3s labels
  a server (`node-role.kubernetes.io/control-plane=true`, `.../master=true`, `.../etcd=true`), condition Ready
  True; at a clean shutdown Ready becomes Unknown ("Kubelet stopped posting node status."), as the node
  lifecycle controller says it some 40 s later. A Node is never deleted by the emulator.
  `GET /api/v1/nodes[?labelSelector=...]`, `GET /api/v1/nodes/NAME`.
- Leases: `GET/POST /apis/coordination.k8s.io/v1/namespaces/NS/leases`, `GET/PUT/DELETE .../leases/NAME`,
  as kube-apiserver's generic registry (apiserver/pkg/registry/generic/registry/store.go Update) with the lease
  strategy (pkg/registry/coordination/lease/strategy.go: AllowCreateOnUpdate true, AllowUnconditionalUpdate
  false): POST of an existing name is 409 AlreadyExists; PUT of a missing Lease creates it (201); PUT without
  metadata.resourceVersion is 422 "must be specified for an update"; a stale one is 409 Conflict. Names are
  DNS-1123 subdomains (apimachinery ValidateObjectMeta, 422). renewTime/acquireTime are metav1.MicroTime, decoded
  with time.Parse(RFC3339Micro): exactly six fractional digits, else the body cannot be decoded (400, as
  apiserver/pkg/endpoints/handlers transformDecodeError). leaseDurationSeconds > 0 and leaseTransitions >= 0
  (pkg/apis/coordination/validation).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import tempfile
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
Result = Tuple[int, Dict[str, Any]]  # (HTTP status, object or {"reason", "message", "details"})


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _store(directory: str) -> Iterator[Dict[str, Any]]:
    """The whole store, locked; written back (atomically) when the block ends without an exception."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "objects.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = os.path.join(directory, "objects.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        data.setdefault("revision", 0)
        data.setdefault("nodes", {})
        data.setdefault("leases", {})
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            tmp_fd, tmp = tempfile.mkstemp(dir=directory, prefix=".objects-")
            with os.fdopen(tmp_fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _bump(data: Dict[str, Any]) -> str:
    data["revision"] = int(data["revision"]) + 1
    return str(data["revision"])


def _not_found(kind: str, name: str) -> Result:
    return 404, {"reason": "NotFound", "message": f'{kind} "{name}" not found', "details": {"name": name}}


def selected(labels: Dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (AND)."""
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


# ----- Leases
def _lease_key(ns: str, name: str) -> str:
    return f"{ns}/{name}"


def list_leases(store_dir: str, ns: str) -> Dict[str, Any]:
    with _store(store_dir) as data:
        items = [v for k, v in sorted(data["leases"].items()) if k.startswith(ns + "/")]
        rv = str(data["revision"])
    return {
        "kind": "LeaseList",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "items": items,
    }


def revision(store_dir: str) -> int:
    with _store(store_dir) as data:
        return int(data["revision"])


def get_lease(store_dir: str, ns: str, name: str) -> Result:
    with _store(store_dir) as data:
        obj = data["leases"].get(_lease_key(ns, name))
    return (200, obj) if obj is not None else _not_found("leases.coordination.k8s.io", name)


def _clean(ns: str, name: str, body: Dict[str, Any]) -> Dict[str, Any]:
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    return {
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {str(k): str(v) for k, v in annotations.items()},
            "labels": {str(k): str(v) for k, v in labels.items()},
        },
        "spec": {k: v for k, v in spec.items() if v is not None},
    }


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
_DNS_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def bad_name(kind: str, name: str) -> Optional[Result]:
    """apimachinery validation.IsDNS1123Subdomain, as ValidateObjectMeta applies it: 422."""
    if len(name) <= 253 and _DNS1123.match(name):
        return None
    return 422, {
        "reason": "Invalid",
        "message": f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": {_DNS_MSG}',
        "details": {"name": name, "kind": kind.split(".")[0].lower() + "s"},
    }


def _bad_times(spec: Dict[str, Any]) -> Optional[Result]:
    for key in ("renewTime", "acquireTime"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and _MICRO.match(value)):
            why = f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse'
            return 400, {
                "reason": "BadRequest",
                "message": f'Lease in version "v1" cannot be handled as a Lease: {why}',
            }
    return None


def _invalid(body: Dict[str, Any], ns: str, name: Optional[str]) -> Optional[Result]:
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    bad = _bad_times(spec)
    if bad is not None:
        return bad
    given = meta.get("name")
    if not given:
        return 422, {
            "reason": "Invalid",
            "message": "Lease.coordination.k8s.io is invalid: metadata.name: Required value",
        }
    if name is not None and given != name:
        return 400, {
            "reason": "BadRequest",
            "message": f"the name of the object ({given}) does not match the name on the URL ({name})",
        }
    if meta.get("namespace") not in (None, ns):
        return 400, {
            "reason": "BadRequest",
            "message": "the namespace of the provided object does not match the namespace sent on the request",
        }
    bad = bad_name("Lease.coordination.k8s.io", str(given))
    if bad is not None:
        return bad
    dur = spec.get("leaseDurationSeconds")
    if dur is not None and (not isinstance(dur, int) or isinstance(dur, bool) or dur <= 0):
        return 422, {
            "reason": "Invalid",
            "message": f'Lease.coordination.k8s.io "{given}" is invalid: spec.leaseDurationSeconds: Invalid value: '
            f"{dur}: must be greater than 0",
        }
    moves = spec.get("leaseTransitions")
    if moves is not None and (not isinstance(moves, int) or moves < 0):
        return 422, {
            "reason": "Invalid",
            "message": f'Lease.coordination.k8s.io "{given}" is invalid: spec.leaseTransitions: Invalid value: '
            f"{moves}: must be greater than or equal to 0",
        }
    return None


def create_lease(store_dir: str, ns: str, body: Dict[str, Any]) -> Result:
    bad = _invalid(body, ns, None)
    if bad is not None:
        return bad
    name = str(body["metadata"]["name"])
    with _store(store_dir) as data:
        key = _lease_key(ns, name)
        if key in data["leases"]:
            return 409, {
                "reason": "AlreadyExists",
                "message": f'leases.coordination.k8s.io "{name}" already exists',
                "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
            }
        obj = _clean(ns, name, body)
        obj["metadata"]["uid"] = str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = _now()
        obj["metadata"]["resourceVersion"] = _bump(data)
        data["leases"][key] = obj
        return 201, obj


def update_lease(store_dir: str, ns: str, name: str, body: Dict[str, Any]) -> Result:
    bad = _invalid(body, ns, name)
    if bad is not None:
        return bad
    with _store(store_dir) as data:
        key = _lease_key(ns, name)
        old = data["leases"].get(key)
        if old is None:  # AllowCreateOnUpdate: the update creates it
            obj = _clean(ns, name, body)
            obj["metadata"]["uid"] = str(uuid.uuid4())
            obj["metadata"]["creationTimestamp"] = _now()
            obj["metadata"]["resourceVersion"] = _bump(data)
            data["leases"][key] = obj
            return 201, obj
        rv = body["metadata"].get("resourceVersion")
        if rv in (None, "", "0", 0):  # not AllowUnconditionalUpdate
            return 422, {
                "reason": "Invalid",
                "message": f'Lease.coordination.k8s.io "{name}" is invalid: metadata.resourceVersion: Invalid '
                "value: 0x0: must be specified for an update",
                "details": {"name": name, "group": "coordination.k8s.io", "kind": "Lease"},
            }
        if str(rv) != old["metadata"]["resourceVersion"]:
            return 409, {
                "reason": "Conflict",
                "message": f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
            }
        obj = _clean(ns, name, body)
        for k in ("uid", "creationTimestamp"):
            obj["metadata"][k] = old["metadata"][k]
        obj["metadata"]["resourceVersion"] = _bump(data)
        data["leases"][key] = obj
        return 200, obj


def delete_lease(store_dir: str, ns: str, name: str) -> Result:
    with _store(store_dir) as data:
        obj = data["leases"].pop(_lease_key(ns, name), None)
        if obj is None:
            return _not_found("leases.coordination.k8s.io", name)
        _bump(data)
    return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}


def read_all(store_dir: str) -> Dict[str, Any]:
    """The whole store, for tests."""
    with _store(store_dir) as data:
        return json.loads(json.dumps(data))


def list_names(items: List[Dict[str, Any]]) -> List[str]:
    return [str(i["metadata"]["name"]) for i in items]
