"""PEM parsing exactly as client-go's keyutil and Go's crypto/x509 do it, against vectors of every block kind made
by openssl and cryptography (see k3semu/keys.py and k3semu/goasn1.py for the rules and their sources)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
from cryptography.hazmat.primitives import serialization
from k3semu import keys

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _ssl(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def vec(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, bytes]:
    d: Path = tmp_path_factory.mktemp("pem")
    v: Dict[str, bytes] = {}
    v["pkcs1"] = _ssl("genrsa", "-traditional", "2048")
    v["pkcs8_rsa"] = _ssl("genrsa", "2048")
    v["sec1_p256"] = _ssl("ecparam", "-name", "prime256v1", "-genkey", "-noout")
    v["sec1_p384"] = _ssl("ecparam", "-name", "secp384r1", "-genkey", "-noout")
    v["sec1_p224"] = _ssl("ecparam", "-name", "secp224r1", "-genkey", "-noout")
    v["pkcs8_ec"] = _ssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    v["pkix_rsa"] = _ssl("pkey", "-pubout", stdin=v["pkcs8_rsa"])
    v["pkix_ec"] = _ssl("pkey", "-pubout", stdin=v["sec1_p384"])
    v["rsa_public"] = _ssl("rsa", "-RSAPublicKey_out", stdin=v["pkcs1"])
    (d / "k.pem").write_bytes(v["pkcs1"])
    v["cert_rsa"] = _ssl("req", "-x509", "-key", str(d / "k.pem"), "-subj", "/CN=v", "-days", "1")
    v["secp256k1"] = _ssl("ecparam", "-name", "secp256k1", "-genkey", "-noout")
    v["brainpool"] = _ssl("ecparam", "-name", "brainpoolP256r1", "-genkey", "-noout")
    v["explicit"] = _ssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-param_enc", "explicit")
    v["explicit_pub"] = _ssl("ec", "-pubout", stdin=v["explicit"])
    v["rsa_pss"] = _ssl("genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048")
    v["rsa_pss_pub"] = _ssl("pkey", "-pubout", stdin=v["rsa_pss"])
    v["ed25519"] = _ssl("genpkey", "-algorithm", "ed25519")
    v["ec_params"] = _ssl("ecparam", "-name", "prime256v1")
    v["junk"] = b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"
    v["not_base64"] = b"-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n"
    # cryptography's own encodings of the same kinds
    ec_key = keys.new_ec_key()
    v["crypto_sec1"] = keys.marshal_private_key(ec_key)
    v["crypto_pkcs8_ec"] = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return v


def _kid(pem: bytes) -> str:
    """The kid of the one key in `pem`, from openssl's own public-key output (independent of keys.py)."""
    pubin = ["-pubin"] if b"PUBLIC KEY" in pem else []
    der = _ssl("pkey", *pubin, "-pubout", "-outform", "DER", stdin=pem)
    return keys.kid_of(serialization.load_der_public_key(der))  # type: ignore[arg-type]


def _kids(data: bytes) -> List[str]:
    return [keys.kid_of(k) for k in keys.public_keys(data)]


# (vector, in the verify set?)
VERIFY = [
    ("pkcs1", True),
    ("pkcs8_rsa", True),
    ("sec1_p256", True),
    ("sec1_p384", True),
    ("sec1_p224", True),  # Go parses P-224; only the JWT signer and the JWKS refuse it
    ("pkcs8_ec", False),  # parseECPrivateKey is SEC1 only
    ("crypto_pkcs8_ec", False),
    ("crypto_sec1", True),
    ("pkix_rsa", True),
    ("pkix_ec", True),
    ("rsa_public", False),  # PKCS#1 RSAPublicKey: not PKIX, not a certificate
    ("cert_rsa", True),
    ("secp256k1", False),
    ("brainpool", False),
    ("explicit", False),
    ("explicit_pub", False),
    ("rsa_pss", False),
    ("rsa_pss_pub", False),
    ("ed25519", False),
    ("ec_params", False),
    ("junk", False),
    ("not_base64", False),
]


@pytest.mark.parametrize("name,counted", VERIFY)
def test_verify_set_by_content(vec: Dict[str, bytes], name: str, counted: bool) -> None:
    anchor = vec["pkix_rsa"]  # one key every file has, so "no keys at all" never hides the answer
    got = _kids(vec[name] + anchor)
    source = vec["pkcs1"] if name == "cert_rsa" else vec[name]  # the certificate holds the pkcs1 key
    want = ([_kid(source)] if counted else []) + [_kid(anchor)]
    assert got == want


def test_verify_set_keeps_file_order_and_ignores_labels(vec: Dict[str, bytes]) -> None:
    relabelled = vec["sec1_p256"].replace(b"EC PRIVATE KEY", b"WHATEVER")
    data = vec["pkcs8_ec"] + vec["pkcs1"] + vec["junk"] + relabelled + vec["secp256k1"] + vec["pkix_ec"]
    assert _kids(data) == [_kid(vec["pkcs1"]), _kid(vec["sec1_p256"]), _kid(vec["pkix_ec"])]


def test_no_key_at_all_is_the_keyutil_error(vec: Dict[str, bytes]) -> None:
    with pytest.raises(keys.KeyFileError, match="does not contain any valid RSA or ECDSA public keys"):
        keys.public_keys(vec["pkcs8_ec"] + vec["rsa_public"] + vec["brainpool"] + vec["junk"])


# (file made of these vectors, which one signs)
SIGNER = [
    (["junk", "pkcs1", "pkcs8_rsa"], "pkcs1"),
    (["pkcs8_ec", "pkcs1"], "pkcs8_ec"),  # PKCS#8 EC signs although it does not verify
    (["secp256k1", "brainpool", "explicit", "rsa_pss", "sec1_p256"], "sec1_p256"),
    (["rsa_public", "pkix_rsa", "cert_rsa", "pkcs8_rsa"], "pkcs8_rsa"),
]


@pytest.mark.parametrize("names,signer", SIGNER)
def test_signer_by_label(vec: Dict[str, bytes], names: List[str], signer: str) -> None:
    key = keys.first_private_key(b"".join(vec[n] for n in names))
    assert keys.kid_of(key.public_key()) == _kid(vec[signer])


def test_signer_label_must_fit_the_encoding(vec: Dict[str, bytes]) -> None:
    # a PKCS#8 body under the PKCS#1 label: ParsePKCS1PrivateKey fails, the block is skipped
    mislabelled = vec["pkcs8_rsa"].replace(b"PRIVATE KEY", b"RSA PRIVATE KEY")
    key = keys.first_private_key(mislabelled + vec["sec1_p256"])
    assert keys.kid_of(key.public_key()) == _kid(vec["sec1_p256"])
    with pytest.raises(keys.KeyFileError, match="does not contain a valid RSA or ECDSA private key"):
        keys.first_private_key(vec["pkix_rsa"] + vec["secp256k1"] + vec["rsa_pss"] + vec["explicit"])


def test_ed25519_signer_cannot_be_marshalled(vec: Dict[str, bytes]) -> None:
    key = keys.first_private_key(vec["ed25519"] + vec["pkcs1"])
    with pytest.raises(keys.KeyFileError, match="not a recognized type"):
        keys.marshal_private_key(key)


def test_p224_has_no_jwt_algorithm(vec: Dict[str, bytes]) -> None:
    (pub,) = keys.public_keys(vec["sec1_p224"])
    with pytest.raises(keys.KeyFileError, match="must be 256, 384, or 521"):
        keys.jwk(pub)
