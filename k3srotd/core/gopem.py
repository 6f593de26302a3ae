"""What kube-apiserver makes of one PEM block: client-go's keyutil over Go's crypto/x509, in Python.

- The verify set (`ParsePublicKeysPEM`, --service-account-key-file) goes by CONTENT, whatever the label, trying
  in order: an RSA private key (PKCS#1, or PKCS#8 holding RSA), an RSA public key (PKIX, or a certificate's), an
  EC private key in SEC1 only, an EC public key (PKIX, or a certificate's). Anything else is skipped silently.
- The signer (`ParsePrivateKeyPEM`, what K3s copies to service.current.key) goes by LABEL: `EC PRIVATE KEY` is
  SEC1, `RSA PRIVATE KEY` is PKCS#1, `PRIVATE KEY` is PKCS#8.
- Go's x509 knows EC only on the named curves P-224/256/384/521 (no explicit parameters), and no RSA-PSS keys;
  kube-apiserver signs with RSA or EC P-256/384/521 only.
Python's cryptography loads more than that, so the structure and algorithm OIDs are checked here first, on the
DER itself, and cryptography only loads what Go would.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Optional, Sequence

SEQ, INT, BITS, OCTETS, NULL, OID, CTX0 = 0x30, 0x02, 0x03, 0x04, 0x05, 0x06, 0xA0

RSA_OID = bytes.fromhex("2a864886f70d010101")
EC_OID = bytes.fromhex("2a8648ce3d0201")
CURVES = {  # Go's namedCurveFromOID: the curves crypto/x509 parses
    bytes.fromhex("2b81040021"): "P-224",
    bytes.fromhex("2a8648ce3d030107"): "P-256",
    bytes.fromhex("2b81040022"): "P-384",
    bytes.fromhex("2b81040023"): "P-521",
}
GO_OTHER_PKCS8 = (bytes.fromhex("2b6570"), bytes.fromhex("2b656e"))  # Ed25519, X25519: Go loads, no JWT signer
SIGNING_CURVES = ("P-256", "P-384", "P-521")  # kube-apiserver's ES256/384/512
SIGNER_LABELS = ("EC PRIVATE KEY", "RSA PRIVATE KEY", "PRIVATE KEY")
MAX_DER = 64 * 1024  # far above any RSA-16384 key; a larger block is no key kube-apiserver would load

Tlv = tuple[int, int, int, int]  # tag, start of content, end of content, start of the tag byte


class DerError(ValueError):
    pass


def _tlv(buf: bytes, pos: int, limit: int) -> Tlv:
    if pos + 2 > limit:
        raise DerError("short")
    start = pos
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 3 or pos + n > limit:
            raise DerError("bad length")
        size = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    else:
        size = first
    if pos + size > limit:
        raise DerError("overrun")
    return tag, pos, pos + size, start


def _children(buf: bytes, tlv: Tlv) -> list[Tlv]:
    out, pos = [], tlv[1]
    while pos < tlv[2]:
        child = _tlv(buf, pos, tlv[2])
        out.append(child)
        pos = child[2]
    return out


def _top(der: bytes) -> list[Tlv]:
    """The children of the one SEQUENCE that is the whole of `der` (Go refuses trailing data)."""
    top = _tlv(der, 0, len(der))
    if top[0] != SEQ or top[2] != len(der):
        raise DerError("not one sequence")
    return _children(der, top)


def _tags(items: Sequence[Tlv]) -> list[int]:
    return [t[0] for t in items]


def _content(der: bytes, tlv: Tlv) -> bytes:
    return der[tlv[1] : tlv[2]]


@dataclass(frozen=True)
class Parsed:
    public: Any  # cryptography public key
    algorithm: str  # RSA | EC | other
    curve: Optional[str]  # for EC
    private: bool


def _load_private(der: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        # Only the public half is used; K3s validates what it loads. The check is ~3,000x slower on
        # cryptography >= 39 (the argument does not exist before it).
        return serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    except TypeError as e:
        if "unsafe_skip_rsa_key_validation" not in str(e):
            raise
        return serialization.load_der_private_key(der, None)


def _safely(load: Any, der: bytes) -> Any:
    """cryptography's verdict; None where it cannot load what Go would (never an exception of its own)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return load(der)
    except (ValueError, TypeError, UnsupportedAlgorithm, OverflowError):
        return None


def _sec1_curve(der: bytes, items: Sequence[Tlv]) -> Optional[bytes]:
    for t in items[2:]:
        if t[0] == CTX0:
            inner = _tlv(der, t[1], t[2])
            return _content(der, inner) if inner[0] == OID else b"explicit"
    return None


def pkcs1(der: bytes) -> Optional[Parsed]:
    """x509.ParsePKCS1PrivateKey."""
    items = _top(der)
    if len(items) < 9 or any(tag != INT for tag in _tags(items)):
        return None
    key = _safely(_load_private, der)
    return None if key is None else Parsed(key.public_key(), "RSA", None, True)


def sec1(der: bytes, curve: Optional[bytes] = None, whole: Optional[bytes] = None) -> Optional[Parsed]:
    """x509.ParseECPrivateKey; or the SEC1 inside PKCS#8 (`whole`), whose curve may come from the outer algorithm."""
    items = _top(der)
    if len(items) < 2 or _tags(items)[:2] != [INT, OCTETS] or _content(der, items[0]) != b"\x01":
        return None
    oid = curve or _sec1_curve(der, items)
    if oid not in CURVES:
        return None
    key = _safely(_load_private, whole or der)
    return None if key is None else Parsed(key.public_key(), "EC", CURVES[oid], True)


def pkcs8(der: bytes) -> Optional[Parsed]:
    """x509.ParsePKCS8PrivateKey, for the algorithms that matter here (RSA, EC; others named as such)."""
    items = _top(der)
    if len(items) < 3 or _tags(items)[:3] != [INT, SEQ, OCTETS]:
        return None
    alg = _children(der, items[1])
    if not alg or alg[0][0] != OID:
        return None
    oid, inner = _content(der, alg[0]), _content(der, items[2])
    if oid == RSA_OID:
        rsa = pkcs1(inner)
        return None if rsa is None else Parsed(rsa.public, "RSA", None, True)
    if oid == EC_OID:
        curve = _content(der, alg[1]) if len(alg) > 1 and alg[1][0] == OID else None
        return sec1(inner, curve, der)
    if oid not in GO_OTHER_PKCS8:
        return None  # RSA-PSS, DSA, ...: "x509: PKCS#8 wrapping contained private key with unknown algorithm"
    key = _safely(_load_private, der)
    return None if key is None else Parsed(key.public_key(), "other", None, True)


def pkix(der: bytes) -> Optional[Parsed]:
    """x509.ParsePKIXPublicKey for RSA (NULL parameters) and EC (a named curve); no RSA-PSS."""
    from cryptography.hazmat.primitives import serialization

    items = _top(der)
    if len(items) != 2 or _tags(items) != [SEQ, BITS]:
        return None
    alg = _children(der, items[0])
    if not alg or alg[0][0] != OID:
        return None
    oid = _content(der, alg[0])
    if oid == RSA_OID:
        if len(alg) != 2 or alg[1][0] != NULL or alg[1][1] != alg[1][2]:
            return None
        algorithm, curve = "RSA", None
    elif oid == EC_OID:
        param = _content(der, alg[1]) if len(alg) == 2 and alg[1][0] == OID else None
        if param not in CURVES:
            return None
        algorithm, curve = "EC", CURVES[param]
    else:
        return None
    key = _safely(serialization.load_der_public_key, der)
    return None if key is None else Parsed(key, algorithm, curve, False)


def certificate(der: bytes) -> Optional[Parsed]:
    """The public key of x509.ParseCertificate, by the same rules as pkix."""
    from cryptography import x509  # ~60 ms to import: only for files that hold certificates

    items = _top(der)
    if len(items) != 3 or _tags(items) != [SEQ, SEQ, BITS]:
        return None
    tbs = _children(der, items[0])
    spki_at = 6 if tbs and tbs[0][0] == CTX0 else 5
    if len(tbs) <= spki_at or _safely(x509.load_der_x509_certificate, der) is None:
        return None
    spki = tbs[spki_at]
    return pkix(der[spki[3] : spki[2]])


def _try(parse: Any, der: bytes) -> Optional[Parsed]:
    try:
        result: Optional[Parsed] = parse(der)
        return result
    except DerError:
        return None


def verify_key(der: bytes) -> Optional[Parsed]:
    """client-go ParsePublicKeysPEM on one block's bytes: the key it adds to the verify set, or None."""
    for parse, algorithm in (
        (pkcs1, "RSA"),
        (pkcs8, "RSA"),
        (pkix, "RSA"),
        (certificate, "RSA"),
        (sec1, "EC"),
        (pkix, "EC"),
        (certificate, "EC"),
    ):
        got = _try(parse, der)
        if got is not None and got.algorithm == algorithm:
            return got
    return None


def signer_key(label: str, der: bytes) -> Optional[Parsed]:
    """client-go ParsePrivateKeyPEM on one block: the private key its label promises, or None."""
    parse = {"EC PRIVATE KEY": sec1, "RSA PRIVATE KEY": pkcs1, "PRIVATE KEY": pkcs8}.get(label)
    return None if parse is None else _try(parse, der)


def block_bytes(lines: Sequence[bytes]) -> Optional[bytes]:
    """The DER of a PEM block (BEGIN and END lines included), as Go's pem.Decode gives it: headers (`Key: value`
    lines up to a blank line) skipped, base64 with whitespace removed. None when it does not decode."""
    body = [ln.strip() for ln in lines[1:-1]]
    if body and b":" in body[0]:
        while body and body[0]:
            body.pop(0)
    data = b"".join(body)
    if len(data) > MAX_DER * 4 // 3 + 4:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        return None


def encrypted(lines: Sequence[bytes]) -> bool:
    """A legacy OpenSSL-encrypted block (Proc-Type: 4,ENCRYPTED)."""
    return any(b"Proc-Type" in ln and b"ENCRYPTED" in ln for ln in lines[1:4])
