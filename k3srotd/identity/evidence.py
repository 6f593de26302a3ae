"""Which key signed each legacy token: the service-account-token Secrets of every namespace, read through the API.

A Secret of type `kubernetes.io/service-account-token` holds a token that never expires, signed by the key that
signed when the token controller filled it. Its header names that key (`kid`); the signature needs no check,
since the question is only which key a client presenting it would need. Such a Secret holds its key's prune.

Re-issuing: clearing a Secret's `token` makes kube-controller-manager's token controller sign a new one with the
current signer (Kubernetes pkg/controller/serviceaccount/tokens_controller.go: `secretUpdateNeeded` finds the
token empty, `generateTokenIfNeeded` fills it). Clients that read the Secret must read it again: a pod that mounts
it sees the new token once the kubelet syncs the volume; a copy kept elsewhere must be replaced by hand.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
import urllib.parse
from typing import Any, Callable, Optional, Protocol, Sequence

from k3srotd.node.kubeapi import APIError

TYPE = "kubernetes.io/service-account-token"
LIST = "/api/v1/secrets?fieldSelector=" + urllib.parse.quote(f"type={TYPE}", safe="")


class Api(Protocol):
    server_url: str

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]: ...


class EvidenceError(Exception):
    """The Secrets could not be read or changed. str() is one line."""


@dataclasses.dataclass(frozen=True)
class TokenSecret:
    namespace: str
    name: str
    kid: Optional[str]  # None: no token yet, or one whose header names no kid

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def _b64(text: str, url: bool) -> bytes:
    pad = "=" * (-len(text) % 4)
    return (base64.urlsafe_b64decode if url else base64.b64decode)(text + pad)


def token_kid(token: str) -> Optional[str]:
    """The `kid` of a JWT's header, unverified; None when it is not a JWT or names none."""
    try:
        header = json.loads(_b64(token.strip().split(".")[0], url=True))
    except (ValueError, binascii.Error, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def secret_kid(obj: Any) -> Optional[str]:
    data = obj.get("data") if isinstance(obj, dict) else None
    raw = data.get("token") if isinstance(data, dict) else None
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return token_kid(_b64(raw, url=False).decode("ascii"))
    except (ValueError, binascii.Error):
        return None


def scan(api: Api) -> list[TokenSecret]:
    """Every service-account-token Secret in the cluster with the kid of its token."""
    try:
        status, doc = api.call("GET", LIST)
    except APIError as e:
        raise EvidenceError(str(e)) from None
    if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise EvidenceError(f"{api.server_url}/api/v1/secrets: HTTP {status}")
    out = []
    for obj in doc["items"]:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or obj.get("type") != TYPE:  # the field selector is trusted, not relied on
            continue
        out.append(TokenSecret(str(meta.get("namespace", "")), str(meta.get("name", "")), secret_kid(obj)))
    return sorted(out, key=lambda s: (s.namespace, s.name))


def by_kid(secrets: Sequence[TokenSecret]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in secrets:
        if s.kid is not None:
            out.setdefault(s.kid, []).append(s.ref)
    return out


def _path(s: TokenSecret) -> str:
    return f"/api/v1/namespaces/{urllib.parse.quote(s.namespace)}/secrets/{urllib.parse.quote(s.name)}"


def clear_token(api: Api, s: TokenSecret) -> None:
    """Clear the Secret's token (a conditional update: a concurrent change is read again, at most 5 times)."""
    for _ in range(5):
        status, obj = api.call("GET", _path(s))
        if status == 404:
            return  # gone: nothing holds the key any more
        if status != 200 or not isinstance(obj, dict):
            raise EvidenceError(f"{api.server_url}{_path(s)}: HTTP {status}")
        data = obj.get("data")
        obj["data"] = {k: v for k, v in data.items() if k != "token"} if isinstance(data, dict) else {}
        status, _ = api.call("PUT", _path(s), obj)
        if status in (200, 201, 404):
            return
        if status != 409:
            raise EvidenceError(f"{api.server_url}{_path(s)}: HTTP {status} when clearing its token")
    raise EvidenceError(f"{api.server_url}{_path(s)}: kept changing while its token was cleared; try again")


def reissue(
    api: Api,
    secrets: Sequence[TokenSecret],
    signer: str,
    wait: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[TokenSecret]:
    """Clear each Secret's token and wait until the token controller signed a new one with `signer`. Returns the
    Secrets still not re-signed after `wait` seconds."""
    for s in secrets:
        clear_token(api, s)
    deadline = monotonic() + wait
    left = list(secrets)
    while left:
        current = {x.ref: x for x in scan(api)}
        left = [s for s in left if s.ref in current and current[s.ref].kid != signer]
        if not left or monotonic() >= deadline:
            break
        sleep(0.5)
    return left
