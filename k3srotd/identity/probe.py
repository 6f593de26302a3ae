"""Token probes around a restart, with real tokens of k3srotd's own ServiceAccount, kube-system/k3srotd-probe.

Before the restart: the ServiceAccount exists (created if absent, labelled app.kubernetes.io/managed-by=k3srotd),
a token minted through TokenRequest passes TokenReview. After the restart: a new token's header kid is the step's
expected signer, its signature verifies against the cluster's /openid/v1/jwks (checked here with cryptography, no
JWT library), and it passes TokenReview; the token from before still passes TokenReview whenever the step keeps
the key that signed it. Tokens live in memory only and are never logged.

Only what the step changed fails it: when no token could be minted before the restart (RBAC, an API error),
the after-restart probe is skipped with a warning. In a rollback the probe reports and fails nothing: there is
no better key set to go back to.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Optional

from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import Clock
from k3srotd.core.ports import Log
from k3srotd.core.verify import VerifyFailed
from k3srotd.errors import K3srotdError
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError, KubeAPI

NAMESPACE = "kube-system"
NAME = "k3srotd-probe"
LABELS = {"app.kubernetes.io/managed-by": "k3srotd"}
TOKEN_SECONDS = 600  # the least TokenRequest allows
RETRY_SECONDS = 30.0  # transient API errors right after a restart


class ProbeError(Exception):
    """A probe found a token that does not verify, or could not get one. str() is one line, never a token."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# --- JWTs, just what service-account tokens use (RS256, ES256/384/512)
def _b64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ProbeError("the token is not a JWT (bad base64url)") from None


def header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise ProbeError("the token is not a JWT (not three parts)")
    try:
        head = json.loads(_b64url(parts[0]))
    except ValueError:
        raise ProbeError("the token's header is not JSON") from None
    if not isinstance(head, dict):
        raise ProbeError("the token's header is not a JSON object")
    return head


def public_key(jwk: dict[str, Any]) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def num(field: str) -> int:
        value = jwk.get(field)
        if not isinstance(value, str):
            raise ProbeError(f"JWK {jwk.get('kid')}: has no `{field}`")
        return int.from_bytes(_b64url(value), "big")

    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(num("e"), num("n")).public_key()
        curves: dict[str, ec.EllipticCurve] = {
            "P-256": ec.SECP256R1(),
            "P-384": ec.SECP384R1(),
            "P-521": ec.SECP521R1(),
        }
        if kty == "EC" and jwk.get("crv") in curves:
            return ec.EllipticCurvePublicNumbers(num("x"), num("y"), curves[jwk["crv"]]).public_key()
    except ValueError as e:
        raise ProbeError(f"JWK {jwk.get('kid')}: not a valid {kty} key ({e})") from None
    raise ProbeError(f"JWK {jwk.get('kid')}: unsupported key type {kty!r} {jwk.get('crv') or ''}".rstrip())


def verify(token: str, jwks: Any) -> str:
    """Check the token's signature against the JWK its header names; return that kid. ProbeError if not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    head = header(token)
    kid, alg = head.get("kid"), head.get("alg")
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    jwk = next((k for k in entries or [] if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None:
        raise ProbeError(f"the cluster's JWKS does not list kid {kid}, which signed the token")
    key = public_key(jwk)
    actual = keys.kid_of(key)
    if actual != kid:
        raise ProbeError(f"the cluster's JWKS entry {kid} holds another key (whose kid is {actual})")
    signing_input, _, sig_text = token.rpartition(".")
    sig = _b64url(sig_text)
    digests: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
    try:
        if isinstance(key, rsa.RSAPublicKey) and alg == "RS256":
            key.verify(sig, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey) and alg in ("ES256", "ES384", "ES512"):
            size = (key.curve.key_size + 7) // 8
            if len(sig) != 2 * size:
                raise InvalidSignature()
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            key.verify(der, signing_input.encode(), ec.ECDSA(digests[str(alg)[2:]]))
        else:
            raise ProbeError(f"the token's alg {alg} does not fit key {kid}")
    except InvalidSignature:
        raise ProbeError(f"the token's signature does not verify with key {kid} of the cluster's JWKS") from None
    return str(kid)


# --- the API calls
def _call(api: KubeAPI, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        status, raw = api.request(method, path, body)
    except APIError as e:
        raise ProbeError(str(e), transient=True) from None
    except K3srotdError as e:  # the kubeconfig cannot be used
        raise ProbeError(str(e)) from None
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if status >= 500 or status == 429:
        raise ProbeError(f"{api.server_url}{path}: HTTP {status}", transient=True)
    return status, doc


def _message(doc: Any) -> str:
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""


def ensure_service_account(api: KubeAPI) -> bool:
    """kube-system/k3srotd-probe exists afterwards; True if it was created now."""
    base = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts"
    status, doc = _call(api, "GET", f"{base}/{NAME}")
    if status == 200:
        return False
    if status != 404:
        raise ProbeError(f"GET {base}/{NAME}: HTTP {status} {_message(doc)}".rstrip())
    body = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)},
    }
    status, doc = _call(api, "POST", base, body)
    if status == 409:
        return False
    if status not in (200, 201):
        raise ProbeError(f"creating {NAMESPACE}/{NAME}: HTTP {status} {_message(doc)}".rstrip())
    return True


def mint(api: KubeAPI) -> str:
    path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{NAME}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": TOKEN_SECONDS},
    }
    status, doc = _call(api, "POST", path, body)
    token = doc.get("status", {}).get("token") if isinstance(doc, dict) else None
    if status not in (200, 201) or not isinstance(token, str) or not token:
        raise ProbeError(f"TokenRequest for {NAMESPACE}/{NAME}: HTTP {status} {_message(doc)}".rstrip())
    return token


def review(api: KubeAPI, token: str) -> Optional[str]:
    """None when the token passes TokenReview; else the apiserver's reason."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    status, doc = _call(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
    if status not in (200, 201) or not isinstance(doc, dict):
        raise ProbeError(f"TokenReview: HTTP {status} {_message(doc)}".rstrip())
    st = doc.get("status") or {}
    if st.get("authenticated") is True:
        return None
    return str(st.get("error") or "not authenticated")


def jwks(api: KubeAPI) -> Any:
    try:
        return api.get_json("/openid/v1/jwks")
    except APIError as e:
        raise ProbeError(str(e), transient=True) from None
    except K3srotdError as e:
        raise ProbeError(str(e)) from None


class TokenProbe:
    """A gates.StepCheck: before_restart mints a token, after_restart checks a new one and the old one."""

    def __init__(self, cfg: Config, k3s: K3s, log: Log, clock: Optional[Clock] = None) -> None:
        self.cfg = cfg
        self.k3s = k3s
        self.log = log
        self.clock = clock or Clock()
        self._before: Optional[tuple[str, str]] = None  # (token, kid) that passed TokenReview before the restart
        self._armed = False

    def before_restart(self, step: str, target: keys.KeyFile) -> None:
        self._before, self._armed = None, False
        api = self.k3s.api()
        try:
            if ensure_service_account(api):
                self.log.info("probe.created", msg=f"created ServiceAccount {NAMESPACE}/{NAME} for token probes")
            token = mint(api)
            kid = str(header(token).get("kid"))
            why = review(api, token)
        except ProbeError as e:
            self.log.warning("probe.skipped", msg=f"{step}: no token probe around this restart: {e}", step=step)
            return
        self._armed = True
        if why is None:
            self._before = (token, kid)
        else:
            self.log.warning(
                "probe.before",
                msg=f"{step}: a token minted now for {NAMESPACE}/{NAME} fails TokenReview before the restart: {why}",
                step=step,
            )

    def after_restart(self, step: str, target: keys.KeyFile) -> None:
        if not self._armed:
            return
        deadline = self.clock.monotonic() + min(RETRY_SECONDS, self.cfg.restart_timeout.total_seconds())
        while True:
            try:
                self._check(target)
                break
            except ProbeError as e:
                if e.transient and self.clock.monotonic() < deadline:
                    self.clock.sleep(1.0)
                    continue
                self._before, self._armed = None, False
                if step == "rollback":
                    self.log.error("probe.failed", msg=f"rollback: token probe: {e}", step=step)
                    return
                raise VerifyFailed(f"token probe: {e}") from None
        self.log.info(
            "probe.ok",
            msg=f"{step}: tokens signed by {target.signer.kid} verify"
            + ("; the token from before the restart still passes TokenReview" if self._kept(target) else ""),
            step=step,
            signer_kid=target.signer.kid,
        )
        self._before, self._armed = None, False

    def _kept(self, target: keys.KeyFile) -> bool:
        return self._before is not None and self._before[1] in target

    def _check(self, target: keys.KeyFile) -> None:
        api = self.k3s.api()
        token = mint(api)
        kid = header(token).get("kid")
        if kid != target.signer.kid:
            raise ProbeError(f"a new token is signed by kid {kid}, expected {target.signer.kid}")
        verify(token, jwks(api))
        why = review(api, token)
        if why is not None:
            raise ProbeError(f"a new token signed by {kid} fails TokenReview: {why}")
        if self._before is not None and self._kept(target):
            old_kid = self._before[1]
            why = review(api, self._before[0])
            if why is not None:
                raise ProbeError(f"a token signed by {old_kid} before the restart no longer passes TokenReview: {why}")
