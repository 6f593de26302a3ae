"""probe.verify: real keys from cryptography, tokens signed as kube-apiserver signs them (the emulator's signer)."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from k3semu import jwt as emu_jwt
from k3semu import keys as emu_keys

from k3srotd.core import keys
from k3srotd.identity import probe

CLAIMS = emu_jwt.service_account_claims("https://issuer.example", "kube-system", "k3srotd-probe", ["k3s"], 600)


def _key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def _jwks(*privs) -> dict:
    return {"keys": [emu_keys.jwk(k.public_key()) for k in privs]}


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384", "p521"])
def test_tokens_of_every_key_type_verify(kind: str) -> None:
    key, other = _key(kind), _key("rsa")
    token = emu_jwt.sign(key, CLAIMS)
    assert probe.verify(token, _jwks(other, key)) == keys.kid_of(key.public_key())
    assert probe.header(token)["alg"] == emu_keys.algorithm(key.public_key())


def test_a_signature_by_another_key_fails() -> None:
    key, other = _key("rsa"), _key("rsa")
    good = emu_jwt.sign(key, CLAIMS)
    forged = good.rsplit(".", 1)[0] + "." + emu_jwt.sign(other, CLAIMS).rsplit(".", 1)[1]
    with pytest.raises(probe.ProbeError, match="signature does not verify"):
        probe.verify(forged, _jwks(key, other))


def test_a_jwks_entry_holding_another_key_under_the_kid_fails() -> None:
    key, other = _key("rsa"), _key("rsa")
    token = emu_jwt.sign(key, CLAIMS)
    entry = emu_keys.jwk(other.public_key())
    entry["kid"] = keys.kid_of(key.public_key())
    with pytest.raises(probe.ProbeError, match="holds another key"):
        probe.verify(token, {"keys": [entry]})


def test_a_kid_missing_from_the_jwks_fails() -> None:
    key, other = _key("p256"), _key("p256")
    with pytest.raises(probe.ProbeError, match="does not list kid"):
        probe.verify(emu_jwt.sign(key, CLAIMS), _jwks(other))


def test_an_alg_that_does_not_fit_the_key_fails() -> None:
    key = _key("rsa")
    token = emu_jwt.sign(key, CLAIMS)
    head, payload, sig = token.split(".")
    h = json.loads(emu_keys.b64url_decode(head))
    h["alg"] = "ES256"
    bad = emu_keys.b64url(json.dumps(h).encode()) + "." + payload + "." + sig
    with pytest.raises(probe.ProbeError, match="does not fit key"):
        probe.verify(bad, _jwks(key))
    h["alg"] = "none"
    unsigned = emu_keys.b64url(json.dumps(h).encode()) + "." + payload + "."
    with pytest.raises(probe.ProbeError, match="does not fit key"):
        probe.verify(unsigned, _jwks(key))


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("abc", "not three parts"),
        ("YWJj.b.c", "header is not JSON"),
        (emu_keys.b64url(b"[1]") + ".e30.", "not a JSON object"),
        ("!!!.e30.", "bad base64url|not JSON"),
    ],
)
def test_garbage_tokens(token: str, match: str) -> None:
    with pytest.raises(probe.ProbeError, match=match):
        probe.verify(token, {"keys": []})


@pytest.mark.parametrize(
    ("jwk", "match"),
    [
        ({"kid": "x", "kty": "oct", "k": "AAAA"}, "unsupported key type"),
        ({"kid": "x", "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}, "not a valid EC key"),
        ({"kid": "x", "kty": "RSA", "e": "AQAB"}, "has no `n`"),
    ],
)
def test_bad_jwks(jwk: dict, match: str) -> None:
    with pytest.raises(probe.ProbeError, match=match):
        probe.public_key(jwk)
