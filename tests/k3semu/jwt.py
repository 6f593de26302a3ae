"""Service-account JWTs as kube-apiserver issues and checks them (RS256 for RSA keys, ES256/384/512 for EC)."""

from __future__ import annotations

import json
import time
import uuid
from typing import List, Optional, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .keys import PrivateKey, PublicKey, algorithm, b64url, b64url_decode, kid_of

_HASH = {"RS256": hashes.SHA256, "ES256": hashes.SHA256, "ES384": hashes.SHA384, "ES512": hashes.SHA512}
_EC_SIZE = {"ES256": 32, "ES384": 48, "ES512": 66}
LEEWAY = 60


class TokenError(ValueError):
    """A token that does not authenticate."""


def _compact(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sign(key: PrivateKey, claims: dict) -> str:
    pub = key.public_key()
    alg = algorithm(pub)
    header = {"alg": alg, "kid": kid_of(pub)}
    signing_input = b64url(_compact(header)) + "." + b64url(_compact(claims))
    digest = _HASH[alg]()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), digest)
    else:
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(digest)))
        size = _EC_SIZE[alg]
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return signing_input + "." + b64url(sig)


def _verify_one(pub: PublicKey, alg: str, signing_input: bytes, sig: bytes) -> bool:
    if alg not in _HASH or algorithm(pub) != alg:
        return False
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, signing_input, padding.PKCS1v15(), _HASH[alg]())
        else:
            size = _EC_SIZE[alg]
            if len(sig) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            pub.verify(der, signing_input, ec.ECDSA(_HASH[alg]()))
    except InvalidSignature:
        return False
    return True


def service_account_claims(
    issuer: str,
    namespace: str,
    name: str,
    audiences: Sequence[str],
    expiration_seconds: int,
    now: Optional[float] = None,
) -> dict:
    now = int(time.time() if now is None else now)
    sa_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"serviceaccount/{namespace}/{name}"))
    return {
        "aud": list(audiences),
        "exp": now + expiration_seconds,
        "iat": now,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid}},
        "nbf": now,
        "sub": f"system:serviceaccount:{namespace}:{name}",
    }


def verify(
    token: str,
    keys: Sequence[PublicKey],
    issuers: Sequence[str],
    audiences: Sequence[str],
    now: Optional[float] = None,
) -> dict:
    """Return the claims of a valid token or raise TokenError (with kube-apiserver-like wording)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("invalid bearer token")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except ValueError as exc:
        raise TokenError("invalid bearer token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("invalid bearer token")
    if claims.get("iss") not in issuers:
        raise TokenError("invalid bearer token")
    alg = str(header.get("alg", ""))
    signing_input = (parts[0] + "." + parts[1]).encode()
    if not any(_verify_one(pub, alg, signing_input, sig) for pub in keys):
        raise TokenError("invalid bearer token, square/go-jose: error in cryptographic primitive")
    # go-jose's Claims.Validate with DefaultLeeway (1 minute), as pkg/serviceaccount/claims.go calls it
    t = time.time() if now is None else now
    if "exp" in claims and t - LEEWAY > float(claims["exp"]):
        raise TokenError("invalid bearer token, service account token has expired")
    if "nbf" in claims and t + LEEWAY < float(claims["nbf"]):
        raise TokenError("invalid bearer token, service account token is not valid yet")
    if "iat" in claims and t + LEEWAY < float(claims["iat"]):
        raise TokenError("invalid bearer token, service account token is issued in the future")
    aud = claims.get("aud", [])
    aud_list: List[str] = [aud] if isinstance(aud, str) else list(aud)
    if not set(aud_list) & set(audiences):
        raise TokenError("invalid bearer token, token audiences " + json.dumps(aud_list) + " is invalid")
    return claims
