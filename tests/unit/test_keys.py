"""The key file as data: real keys from cryptography, every PEM form K3s accepts."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from k3srotd.core import keys


def _rsa_pkcs1() -> tuple[bytes, object]:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return pem, k


def _pkcs8(k: object) -> bytes:
    return k.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _kid(k: object) -> str:
    der = k.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def test_kid_is_kube_apiserver_key_id() -> None:
    pem, k = _rsa_pkcs1()
    kf = keys.parse(pem, "service.key")
    assert kf.kids == [_kid(k)]
    assert "=" not in kf.kids[0] and len(kf.kids[0]) == 43


def _sec1(k: object) -> bytes:
    return k.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def test_every_accepted_form_parses_and_first_private_key_signs() -> None:
    a_pem, a = _rsa_pkcs1()
    b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    e8 = ec.generate_private_key(ec.SECP384R1())
    pub = b.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = pub + _sec1(e) + b"\n\n" + a_pem + _pkcs8(e8) + _sec1(e)
    kf = keys.parse(data, "service.key")
    # the public key comes first in the file, the first PRIVATE key is the signer (EC, SEC1)
    assert kf.signer.kid == _kid(e)
    assert kf.signer.algorithm == "EC" and kf.signer.bits == 256
    # an EC key in PKCS#8 is no verify key for client-go: ignored, kept in place
    assert kf.kids == [_kid(b), _kid(e), _kid(a)]
    assert kf.duplicates == (_kid(e),)
    assert kf.ignored == ("PEM block 4 (PRIVATE KEY)",)
    assert keys.compose(kf, kf.kids) == data[: -len(_sec1(e))]  # the duplicate written once


def test_crlf_blank_lines_and_other_blocks_are_kept_byte_for_byte() -> None:
    a_pem, a = _rsa_pkcs1()
    b_pem, b = _rsa_pkcs1()
    assert _kid(b) != _kid(a)
    crlf = a_pem.replace(b"\n", b"\r\n")
    other = b"-----BEGIN SOMETHING ELSE-----\nAAAA\n-----END SOMETHING ELSE-----\n"
    data = b"# kept\n" + crlf + b"\r\n" + other + b_pem
    kf = keys.parse(data, "service.key")
    assert kf.kids == [_kid(a), _kid(b)]
    # same order: the file comes back identical
    assert keys.compose(kf, kf.kids) == data
    # reversed: each block unchanged, the comment and the other block in place
    out = keys.compose(kf, [_kid(b), _kid(a)])
    assert out == b"# kept\n" + b_pem + b"\r\n" + other + crlf
    assert keys.parse(out, "x").signer.kid == _kid(b)


def test_compose_appends_new_keys_and_drops_removed_and_duplicates() -> None:
    a_pem, a = _rsa_pkcs1()
    b_pem, _ = _rsa_pkcs1()
    kf = keys.parse(a_pem + b_pem + a_pem, "service.key")
    new = keys.generate(2048)
    out = keys.compose(kf, [new.kid, _kid(a)], [new])
    parsed = keys.parse(out, "x")
    assert parsed.kids == [new.kid, _kid(a)]
    assert parsed.duplicates == ()
    assert out.count(b"BEGIN") == 2
    assert new.raw.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as K3s writes its own
    with pytest.raises(ValueError):
        keys.compose(kf, ["no-such-kid"])


def test_openssl_traditional_and_pkcs8_output_are_both_read(tmp_path) -> None:
    trad = tmp_path / "trad.key"
    p8 = tmp_path / "p8.key"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(trad), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "genrsa", "-out", str(p8), "2048"], check=True, capture_output=True)
    kf = keys.parse(trad.read_bytes() + p8.read_bytes(), "service.key")
    assert len(kf.kids) == 2 and all(b.is_private for b in kf.blocks)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"garbage that is no PEM\n", "holds no PEM key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n", "truncated"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n", "cannot be parsed"),
    ],
)
def test_bad_files_are_refused_naming_the_path(data: bytes, words: str) -> None:
    with pytest.raises(keys.KeyFileError) as e:
        keys.parse(data, "/x/service.key")
    assert str(e.value).startswith("/x/service.key: ")
    assert words in str(e.value)
    assert e.value.exit_code == 3


def test_encrypted_and_public_only_files_are_refused() -> None:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc = k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(keys.KeyFileError, match="encrypted"):
        keys.parse(enc, "s.key")
    pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(keys.KeyFileError, match="no private key"):
        keys.parse(pub, "s.key")


def test_refusals_never_carry_key_material() -> None:
    pem, _ = _rsa_pkcs1()
    broken = pem[: len(pem) // 2] + b"\n-----END RSA PRIVATE KEY-----\n"
    with pytest.raises(keys.KeyFileError) as e:
        keys.parse(broken, "s.key")
    body = pem.split(b"\n")[3].decode()
    assert body not in str(e.value)
