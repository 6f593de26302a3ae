"""Which DER key structures Go's crypto/x509 accepts, checked by shape before cryptography loads the key.

Python's cryptography (OpenSSL) loads more than Go does; kube-apiserver reads keys with Go, so the emulator must
refuse what Go refuses (crypto/x509: pkcs1.go, pkcs8.go, sec1.go, x509.go ParsePKIXPublicKey, parser.go):
- PKIX SubjectPublicKeyInfo and PKCS#8 accept the algorithms rsaEncryption and id-ecPublicKey only among the
  RSA/EC ones (RSASSA-PSS is an unknown algorithm: `x509: unknown public key algorithm` / `PKCS#8 wrapping
  contained private key with unknown algorithm`);
- EC keys only on the named curves P-224, P-256, P-384 and P-521 (namedCurveFromOID); explicit parameters and
  any other curve (secp256k1, brainpool) are `x509: unknown elliptic curve`;
- SEC1 `ECPrivateKey` must name its curve in `[0] parameters` unless PKCS#8 named it;
- PKCS#1 `RSAPrivateKey` is SEQUENCE { INTEGER version, INTEGER n, ... }; a PKCS#1 `RSAPublicKey`
  (SEQUENCE { INTEGER n, INTEGER e }) is neither PKIX nor a certificate, so ParsePKIXPublicKey refuses it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

RSA = "1.2.840.113549.1.1.1"
EC = "1.2.840.10045.2.1"
RSA_PSS = "1.2.840.113549.1.1.10"
ED25519 = "1.3.101.112"
GO_CURVES = {
    "1.3.132.0.33": "P-224",
    "1.2.840.10045.3.1.7": "P-256",
    "1.3.132.0.34": "P-384",
    "1.3.132.0.35": "P-521",
}
Tlv = Tuple[int, bytes]  # (tag byte, content)


def _read(buf: bytes, i: int) -> Tuple[int, bytes, int]:
    """One TLV at i: (tag, content, index after it). IndexError/ValueError on bad DER."""
    tag = buf[i]
    length = buf[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(buf[i : i + n], "big")
        i += n
    end = i + length
    if end > len(buf):
        raise ValueError("truncated DER")
    return tag, buf[i:end], end


def children(content: bytes) -> List[Tlv]:
    out: List[Tlv] = []
    i = 0
    while i < len(content):
        tag, body, i = _read(content, i)
        out.append((tag, body))
    return out


def top(der: bytes) -> Optional[List[Tlv]]:
    """The elements of a DER SEQUENCE that spans all of `der`, else None."""
    try:
        tag, body, end = _read(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        return children(body)
    except (IndexError, ValueError):
        return None


def oid(content: bytes) -> str:
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for b in content[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _algorithm(seq: Tlv) -> Optional[Tuple[str, Optional[Tlv]]]:
    if seq[0] != 0x30:
        return None
    try:
        items = children(seq[1])
    except (IndexError, ValueError):
        return None
    if not items or items[0][0] != 0x06:
        return None
    return oid(items[0][1]), (items[1] if len(items) > 1 else None)


def _curve(params: Optional[Tlv]) -> Optional[str]:
    """The Go curve name of named-curve parameters, None for explicit parameters or another curve."""
    if params is None or params[0] != 0x06:
        return None
    return GO_CURVES.get(oid(params[1]))


def spki_kind(der: bytes) -> Optional[str]:
    """'rsa' or 'ec:<curve>' for a SubjectPublicKeyInfo Go parses, else None."""
    items = top(der)
    if not items or len(items) != 2 or items[1][0] != 0x03:
        return None
    alg = _algorithm(items[0])
    if alg is None:
        return None
    if alg[0] == RSA:
        return "rsa"
    if alg[0] == EC:
        curve = _curve(alg[1])
        return f"ec:{curve}" if curve else None
    return None


def certificate_spki(der: bytes) -> Optional[bytes]:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (TBSCertificate's 7th field, 6th without version)."""
    items = top(der)
    if not items or len(items) != 3 or items[0][0] != 0x30:
        return None
    try:
        tbs = children(items[0][1])
    except (IndexError, ValueError):
        return None
    idx = 6 if tbs and tbs[0][0] == 0xA0 else 5
    if len(tbs) <= idx or tbs[idx][0] != 0x30:
        return None
    body = tbs[idx][1]
    return _encode(0x30, body)


def _encode(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + body


def pkcs1_private(der: bytes) -> bool:
    """x509.ParsePKCS1PrivateKey's shape: SEQUENCE { INTEGER version, INTEGER n, INTEGER e, ... } (9+ fields)."""
    items = top(der)
    return bool(items) and len(items) >= 9 and all(t == 0x02 for t, _ in items[:9])  # type: ignore[arg-type]


def sec1_private(der: bytes, named: Optional[str] = None) -> Optional[str]:
    """x509.ParseECPrivateKey (or parseECPrivateKey with the curve PKCS#8 named): the Go curve, else None."""
    items = top(der)
    if not items or len(items) < 2 or items[0] != (0x02, b"\x01") or items[1][0] != 0x04:
        return None
    if named is not None:
        return named
    for tag, body in items[2:]:
        if tag == 0xA0:
            try:
                inner = children(body)
            except (IndexError, ValueError):
                return None
            return _curve(inner[0]) if len(inner) == 1 else None
    return None  # no parameters: "x509: unknown elliptic curve"


def pkcs8_kind(der: bytes) -> Optional[str]:
    """'rsa' or 'ec:<curve>' for a PKCS#8 PrivateKeyInfo Go parses as RSA or ECDSA, else None."""
    items = top(der)
    if not items or len(items) < 3 or items[0][0] != 0x02 or items[2][0] != 0x04:
        return None
    alg = _algorithm(items[1])
    if alg is None:
        return None
    if alg[0] == RSA:
        return "rsa" if pkcs1_private(items[2][1]) else None
    if alg[0] == EC:
        curve = _curve(alg[1])
        return f"ec:{curve}" if curve and sec1_private(items[2][1], curve) else None
    if alg[0] == ED25519:  # Go parses it; ParsePrivateKeyPEM returns it; K3s cannot marshal it
        return "ed25519"
    return None
