"""The live file as kube-apiserver reads it: the verify set by content (client-go ParsePublicKeysPEM), the signer
by label (ParsePrivateKeyPEM), and Go's crypto/x509 limits. Vectors are real keys from cryptography and openssl."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from k3srotd.core import keys

NOENC = serialization.NoEncryption()


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs1(k: rsa.RSAPrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)


def _pkcs8(k: object) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NOENC)  # type: ignore[attr-defined]


def _relabel(pem: bytes, label: str) -> bytes:
    lines = pem.splitlines(keepends=True)
    return f"-----BEGIN {label}-----\n".encode() + b"".join(lines[1:-1]) + f"-----END {label}-----\n".encode()


def _openssl(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "k.pem"
    subprocess.run(["openssl", *args, "-out", str(out)], check=True, capture_output=True)
    return out.read_bytes()


def _pss(tmp_path: Path) -> bytes:
    return _openssl(tmp_path, "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048")


def _cert(k: rsa.RSAPrivateKey) -> bytes:
    import datetime as dt

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(k, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_verify_set_goes_by_content_whatever_the_label() -> None:
    signer, other, certified = _rsa(), _rsa(), _rsa()
    data = _pkcs1(signer) + _relabel(_pkcs1(other), "SOMETHING") + _cert(certified)
    kf = keys.parse(data, "s.key")
    assert kf.kids == [keys.kid_of(k.public_key()) for k in (signer, other, certified)]
    assert kf.signer.kid == keys.kid_of(signer.public_key())
    assert [b.kind for b in kf.blocks] == ["private", "private", "certificate"]
    assert kf.ignored == ()


def test_pkcs1_public_key_blocks_are_ignored_and_kept_byte_for_byte() -> None:
    signer, other = _rsa(), _rsa()
    pkcs1_pub = other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    data = _pkcs1(signer) + pkcs1_pub
    kf = keys.parse(data, "s.key")
    assert kf.kids == [keys.kid_of(signer.public_key())]
    assert kf.ignored == ("PEM block 2 (RSA PUBLIC KEY)",)
    assert keys.compose(kf, kf.kids) == data
    new = keys.generate(2048)
    out = keys.compose(kf, [new.kid, *kf.kids], [new])
    assert pkcs1_pub in out and keys.parse(out, "s").kids == [new.kid, kf.kids[0]]


def test_signer_is_the_first_private_label_not_the_first_key() -> None:
    verify_only, signer = _rsa(), _rsa()
    data = _relabel(_pkcs1(verify_only), "KEY OF SOMEONE") + _pkcs8(signer)
    kf = keys.parse(data, "s.key")
    assert kf.signer.kid == keys.kid_of(signer.public_key())
    assert kf.kids[0] == keys.kid_of(verify_only.public_key())


def test_pkcs8_ec_signer_is_refused_it_would_not_verify() -> None:
    with pytest.raises(keys.KeyFileError, match="PKCS#8") as e:
        keys.parse(_pkcs8(ec.generate_private_key(ec.SECP256R1())) + _pkcs1(_rsa()), "/x/s.key")
    assert str(e.value).startswith("/x/s.key: PEM block 1 (PRIVATE KEY)") and e.value.exit_code == 3


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: _pkcs8(ed25519.Ed25519PrivateKey.generate()), "signs only with RSA or EC"),
        (lambda p: _pkcs1_of_ec(ec.SECP224R1()), "signs only with RSA or EC"),
        (lambda p: _pkcs1_of_ec(ec.SECP256K1()), "cannot be parsed"),
        (
            lambda p: _openssl(p, "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"),
            "cannot be parsed",
        ),
        (
            lambda p: _openssl(p, "ecparam", "-name", "prime256v1", "-param_enc", "explicit", "-genkey", "-noout"),
            "cannot be parsed",
        ),
        (lambda p: _relabel(_pkcs8(_rsa()), "RSA PRIVATE KEY"), "cannot be parsed"),
    ],
)
def test_a_first_private_key_go_cannot_sign_with_is_refused(tmp_path: Path, make: object, words: str) -> None:
    first = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(keys.KeyFileError, match=words) as e:
        keys.parse(first + _pkcs1(_rsa()), "/x/s.key")
    assert "PEM block 1" in str(e.value) and e.value.exit_code == 3


def _pkcs1_of_ec(curve: ec.EllipticCurve) -> bytes:
    return _sec1(ec.generate_private_key(curve))


def _sec1(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)


def test_keys_go_cannot_load_are_ignored_after_the_signer(tmp_path: Path) -> None:
    signer = _rsa()
    p224 = ec.generate_private_key(ec.SECP224R1())
    k1 = ec.generate_private_key(ec.SECP256K1())
    pss = _openssl(tmp_path, "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048")
    k1_pub = k1.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = _pkcs1(signer) + _sec1(p224) + _sec1(k1) + k1_pub + pss + _pkcs8(ed25519.Ed25519PrivateKey.generate())
    kf = keys.parse(data, "s.key")
    # P-224 is a curve Go parses: it verifies (kube-apiserver cannot sign with it)
    assert kf.kids == [keys.kid_of(signer.public_key()), keys.kid_of(p224.public_key())]
    assert len(kf.ignored) == 4 and kf.ignored[0] == "PEM block 3 (EC PRIVATE KEY)"
    assert keys.compose(kf, kf.kids) == data


def test_bad_base64_and_huge_blocks_are_ignored_not_fatal() -> None:
    signer = _pkcs1(_rsa())
    junk = b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n"
    huge = b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(b"\0" * 200_000) + b"\n-----END PUBLIC KEY-----\n"
    kf = keys.parse(signer + junk + huge, "s.key")
    assert len(kf.blocks) == 1 and len(kf.ignored) == 2
