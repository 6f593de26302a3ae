"""Secrets, and the token controller that fills `kubernetes.io/service-account-token` Secrets (legacy tokens).

Stored in `<datastore>/secrets.json` (shared by a cluster's servers, kept across restarts, as etcd keeps them).
- `GET /api/v1/secrets[?fieldSelector=type=T]` (every namespace), `GET/POST /api/v1/namespaces/NS/secrets`,
  `GET/PUT/DELETE /api/v1/namespaces/NS/secrets/NAME`. The field selector `type` is one Secrets support
  (Kubernetes pkg/registry/core/secret/strategy.go, `SelectableFields`); any other field is a 400. A PUT whose
  metadata.resourceVersion is not the stored one is 409 Conflict; without one it is unconditional (Secrets allow
  unconditional update). A service-account-token Secret must name its ServiceAccount in the annotation
  `kubernetes.io/service-account.name` (pkg/apis/core/validation `ValidateSecret`), else 422.
- The token controller (Kubernetes pkg/controller/serviceaccount/tokens_controller.go, run by K3s's
  kube-controller-manager): `secretUpdateNeeded` finds a Secret whose `token` data is empty (or lacks `namespace`
  or `ca.crt`), and `generateTokenIfNeeded` fills it: a token signed by the controller-manager's
  `--service-account-private-key-file`, which K3s points at service.current.key (the signer), with the legacy
  claims of pkg/serviceaccount/legacy.go, and the ServiceAccount's name and uid as annotations. A Secret whose
  ServiceAccount does not exist is deleted (`syncSecret`). The real controller works from a watch, a moment after
  the write; the emulator fills the Secret in the same request, so a reader never sees it empty.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from typing import Any, Dict, List, Optional, Tuple

from . import jwt
from .identity import _locked, _read, _write, get_sa

TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME = "kubernetes.io/service-account.name"
SA_UID = "kubernetes.io/service-account.uid"
_ALL = re.compile(r"^/api/v1/secrets$")
_NS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
Result = Tuple[int, Dict[str, Any]]


def owns(path: str) -> bool:
    return bool(_ALL.match(path) or _NS.match(path))


def _status(code: int, reason: str, message: str) -> Result:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _file(store: str) -> str:
    return f"{store}/secrets.json"


def legacy_claims(namespace: str, secret: str, sa: Dict[str, Any]) -> Dict[str, Any]:
    """pkg/serviceaccount/legacy.go `LegacyClaims`: no expiry, the legacy issuer."""
    name = sa["metadata"]["name"]
    return {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": sa["metadata"]["uid"],
        "sub": f"system:serviceaccount:{namespace}:{name}",
    }


def _controller(st: Any, obj: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The token controller's sync of one Secret: the filled object, or None when the Secret is to be deleted."""
    if obj.get("type") != TOKEN_TYPE:
        return obj
    meta = obj["metadata"]
    sa = get_sa(st.datastore.directory, meta["namespace"], meta.get("annotations", {}).get(SA_NAME, ""))
    if sa is None:
        return None
    data = obj.setdefault("data", {})
    if not data.get("token"):
        token = jwt.sign(st.signer, legacy_claims(meta["namespace"], meta["name"], sa))
        data["token"] = base64.b64encode(token.encode()).decode()
    data.setdefault("namespace", base64.b64encode(meta["namespace"].encode()).decode())
    data.setdefault("ca.crt", base64.b64encode(st.server_ca_pem).decode())
    meta.setdefault("annotations", {})[SA_UID] = sa["metadata"]["uid"]
    return obj


def _selected(obj: Dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        field, _, value = term.replace("==", "=").partition("=")
        if field == "type" and obj.get("type") != value:
            return False
        if field == "metadata.namespace" and obj["metadata"]["namespace"] != value:
            return False
    return True


def _list(objs: Dict[str, Any], ns: Optional[str], selector: str) -> Result:
    for term in filter(None, selector.split(",")):
        field = term.replace("==", "=").partition("=")[0]
        if field not in ("type", "metadata.name", "metadata.namespace"):
            return _status(400, "BadRequest", f'"{field}" is not a known field selector: only "type"')
    items = [o for k, o in sorted(objs.items()) if (ns is None or k.startswith(ns + "/")) and _selected(o, selector)]
    return 200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items}


def _write_one(st: Any, objs: Dict[str, Any], key: str, obj: Dict[str, Any], code: int) -> Result:
    synced = _controller(st, obj)
    if synced is None:  # syncSecret: its ServiceAccount is gone, so the controller deletes the token
        objs.pop(key, None)
        _write(_file(st.datastore.directory), objs)
        return code, obj
    objs["revision"] = int(objs.get("revision", 0)) + 1
    synced["metadata"]["resourceVersion"] = str(objs["revision"])
    objs[key] = synced
    _write(_file(st.datastore.directory), objs)
    return code, synced


def _create(st: Any, objs: Dict[str, Any], ns: str, body: Dict[str, Any]) -> Result:
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    name = str(meta.get("name") or "")
    if not name:
        return _status(422, "Invalid", "Secret is invalid: metadata.name: Required value")
    if f"{ns}/{name}" in objs:
        return _status(409, "AlreadyExists", f'secrets "{name}" already exists')
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    if body.get("type") == TOKEN_TYPE and not annotations.get(SA_NAME):
        return _status(422, "Invalid", f'Secret "{name}" is invalid: metadata.annotations[{SA_NAME}]: Required value')
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": now,
            "annotations": {str(k): str(v) for k, v in annotations.items()},
        },
        "type": str(body.get("type") or "Opaque"),
        "data": dict(body.get("data") or {}),
    }
    return _write_one(st, objs, f"{ns}/{name}", obj, 201)


def _update(st: Any, objs: Dict[str, Any], ns: str, name: str, body: Dict[str, Any]) -> Result:
    old = objs.get(f"{ns}/{name}")
    if not isinstance(old, dict):
        return _status(404, "NotFound", f'secrets "{name}" not found')
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    rv = meta.get("resourceVersion")
    if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
        return _status(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on secrets "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
        )
    obj = json.loads(json.dumps(old))
    obj["data"] = dict(body.get("data") or {})
    if isinstance(meta.get("annotations"), dict):
        obj["metadata"]["annotations"] = {str(k): str(v) for k, v in meta["annotations"].items()}
    return _write_one(st, objs, f"{ns}/{name}", obj, 200)


def serve(st: Any, method: str, path: str, query: Dict[str, List[str]], raw: bytes) -> Tuple[int, bytes]:
    """The answer to one request on a Secrets path (owns(path) is true): (HTTP status, JSON body)."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return 400, json.dumps(_status(400, "BadRequest", "the body is not a JSON object")[1]).encode()
    selector = (query.get("fieldSelector") or [""])[0]
    m = _NS.match(path)
    ns, name = (m.group(1), m.group(2)) if m else (None, None)
    with _locked(st.datastore.directory, "secrets.lock"):
        objs = _read(_file(st.datastore.directory))
        revision = objs.pop("revision", 0)
        objs_rw: Dict[str, Any] = {**objs, "revision": revision}
        if method == "GET" and name is None:
            code, obj = _list({k: v for k, v in objs.items()}, ns, selector)
        elif method == "GET":
            found = objs.get(f"{ns}/{name}")
            missing = _status(404, "NotFound", f'secrets "{name}" not found')
            code, obj = (200, found) if isinstance(found, dict) else missing
        elif method == "POST" and ns is not None and name is None:
            code, obj = _create(st, objs_rw, ns, body)
        elif method == "PUT" and ns is not None and name is not None:
            code, obj = _update(st, objs_rw, ns, name, body)
        elif method == "DELETE" and ns is not None and name is not None:
            if objs_rw.pop(f"{ns}/{name}", None) is None:
                code, obj = _status(404, "NotFound", f'secrets "{name}" not found')
            else:
                _write(_file(st.datastore.directory), objs_rw)
                code, obj = 200, _status(200, "Success", "deleted")[1]
        else:
            code, obj = _status(405, "MethodNotAllowed", "the server does not allow this method")
    return code, json.dumps(obj).encode()


def names(items: List[Dict[str, Any]]) -> List[str]:
    return [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in items]
