"""TokenRequest and TokenReview as kube-apiserver answers them, and service-account bearer authentication
(pkg/registry/core/serviceaccount/storage/token.go, pkg/serviceaccount/jwt.go and claims.go)."""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from . import identity, jwt

if TYPE_CHECKING:
    from .api import State


def status_body(code: int, reason: str, message: str, details: Any = None) -> bytes:
    from .api import status_body as body

    return body(code, reason, message, details)


def authenticate(st: State, token: str, audiences: List[str]) -> Dict[str, Any]:
    """pkg/serviceaccount/jwt.go + claims.go Validate: signature, issuer, audience, time (60 s leeway), and the
    ServiceAccount must still exist with the token's UID."""
    claims = jwt.verify(token, st.public_keys, st.issuers, audiences)
    ref = claims.get("kubernetes.io", {})
    ns, sa = ref.get("namespace", ""), ref.get("serviceaccount", {})
    obj = identity.get_sa(st.datastore.directory, ns, str(sa.get("name", "")))
    if obj is None:
        raise jwt.TokenError(f"service account {ns}/{sa.get('name', '')} has been deleted")
    if obj["metadata"]["uid"] != sa.get("uid"):
        raise jwt.TokenError(
            f"service account UID ({obj['metadata']['uid']}) does not match claim ({sa.get('uid', '')})"
        )
    return claims


def token_request(st: State, ns: str, name: str, raw: bytes) -> Tuple[int, bytes]:
    try:
        req = json.loads(raw or b"{}")
    except ValueError:
        req = None
    spec = req.get("spec", {}) if isinstance(req, dict) else {}
    audiences = list(spec.get("audiences") or st.api_audiences)
    seconds = int(spec.get("expirationSeconds") or 3600)
    if seconds < 600:
        msg = (
            f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds: '
            f"Invalid value: {seconds}: may not specify a duration less than 10 minutes"
        )
        return 422, status_body(422, "Invalid", msg)
    sa = identity.get_sa(st.datastore.directory, ns, name)
    if sa is None:  # pkg/registry/core/serviceaccount/storage/token.go: the ServiceAccount must exist
        details = {"name": name, "kind": "serviceaccounts"}
        return 404, status_body(404, "NotFound", f'serviceaccounts "{name}" not found', details)
    if st.max_expiration and seconds > st.max_expiration:
        seconds = st.max_expiration
    now = time.time()
    claims = jwt.service_account_claims(st.issuers[0], ns, name, audiences, seconds, now)
    claims["kubernetes.io"]["serviceaccount"]["uid"] = sa["metadata"]["uid"]
    token = identity.tamper(st.data_dir, jwt.sign(st.signer, claims), st.public_keys, st.extra)
    expires = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": None},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
        "status": {"token": token, "expirationTimestamp": expires},
    }
    return 201, json.dumps(doc).encode()


def token_review(st: State, raw: bytes) -> Tuple[int, bytes]:
    try:
        req = json.loads(raw or b"{}")
    except ValueError:
        req = None
    spec = req.get("spec", {}) if isinstance(req, dict) else {}
    wanted = list(spec.get("audiences") or st.api_audiences)
    status: Dict[str, Any]
    try:
        claims = authenticate(st, str(spec.get("token", "")), wanted)
        aud = claims.get("aud", [])
        aud = [aud] if isinstance(aud, str) else aud
        ns = claims.get("kubernetes.io", {}).get("namespace", "")
        sa_uid = claims.get("kubernetes.io", {}).get("serviceaccount", {}).get("uid", "")
        status = {
            "authenticated": True,
            "user": {
                "username": claims["sub"],
                "uid": sa_uid,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            },
            "audiences": [a for a in wanted if a in aud],
        }
    except jwt.TokenError as exc:
        status = {"authenticated": False, "user": {}, "error": f"[{exc}, token lookup failed]"}
    doc = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }
    return 201, json.dumps(doc).encode()
