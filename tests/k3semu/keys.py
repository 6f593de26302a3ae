"""Key and certificate handling with the semantics of Go's encoding/pem and client-go's keyutil.

- `pem_blocks` splits PEM data like Go's pem.Decode: text outside blocks is skipped, CRLF is accepted,
  blocks with headers are kept (their bytes will not parse as keys).
- `public_keys` is keyutil.ParsePublicKeysPEM (client-go util/keyutil/key.go): every block, whatever its label,
  is tried as an RSA private key (PKCS#1, or PKCS#8 holding RSA), an RSA public key (PKIX or certificate), an EC
  private key (SEC1 ONLY), an EC public key (PKIX or certificate); other blocks are tolerated (skipped); no key
  at all is an error. So a PKCS#8 EC key and a PKCS#1 `RSA PUBLIC KEY` are skipped.
- `first_private_key` is keyutil.ParsePrivateKeyPEM: the first block whose LABEL's parser succeeds
  (`RSA PRIVATE KEY` = PKCS#1, `EC PRIVATE KEY` = SEC1, `PRIVATE KEY` = PKCS#8).
- Go's crypto/x509 refuses what goasn1.py lists (RSA-PSS, curves other than P-224/256/384/521, explicit
  parameters), though Python's cryptography may load them.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from . import goasn1

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]
PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

_BEGIN = re.compile(rb"-----BEGIN ([^-\r\n]*)-----\r?\n")


class KeyFileError(ValueError):
    """A key file that cannot be used."""


@dataclass
class PemBlock:
    type: str
    der: bytes
    headers: dict = field(default_factory=dict)


def pem_blocks(data: bytes) -> List[PemBlock]:
    blocks: List[PemBlock] = []
    pos = 0
    while True:
        m = _BEGIN.search(data, pos)
        if not m:
            return blocks
        kind = m.group(1).decode("ascii", "replace")
        end_marker = b"-----END " + m.group(1) + b"-----"
        end = data.find(end_marker, m.end())
        if end < 0:
            return blocks
        body = data[m.end() : end].replace(b"\r", b"")
        headers = {}
        lines = body.split(b"\n")
        if lines and b":" in lines[0]:
            while lines and b":" in lines[0]:
                k, _, v = lines.pop(0).partition(b":")
                headers[k.strip().decode()] = v.strip().decode()
            if lines and not lines[0].strip():
                lines.pop(0)
        try:
            der = base64.b64decode(b"".join(x.strip() for x in lines), validate=True)
        except ValueError:
            pos = end + len(end_marker)
            continue
        blocks.append(PemBlock(kind, der, headers))
        pos = end + len(end_marker)


@functools.lru_cache(maxsize=64)
def _load_private(der: bytes) -> Optional[PrivateKey]:
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        return key  # type: ignore[return-value]
    return None


@functools.lru_cache(maxsize=64)
def _load_spki(der: bytes) -> Optional[PublicKey]:
    try:
        pub: Any = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return pub if isinstance(pub, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)) else None


def _rsa_private(der: bytes) -> Optional[PrivateKey]:
    """keyutil parseRSAPrivateKey: x509.ParsePKCS1PrivateKey, else ParsePKCS8PrivateKey holding RSA."""
    if goasn1.pkcs1_private(der) or goasn1.pkcs8_kind(der) == "rsa":
        key = _load_private(der)
        return key if isinstance(key, rsa.RSAPrivateKey) else None
    return None


def _ec_private(der: bytes) -> Optional[PrivateKey]:
    """keyutil parseECPrivateKey: x509.ParseECPrivateKey, SEC1 only, named Go curves only."""
    if goasn1.sec1_private(der):
        key = _load_private(der)
        return key if isinstance(key, ec.EllipticCurvePrivateKey) else None
    return None


def _public(der: bytes, kind: str) -> Optional[PublicKey]:
    """keyutil parseRSAPublicKey / parseECPublicKey: x509.ParsePKIXPublicKey, else x509.ParseCertificate's key."""
    spki = der if goasn1.spki_kind(der) else goasn1.certificate_spki(der)
    found = goasn1.spki_kind(spki) if spki else None
    if spki is None or found is None or not found.startswith(kind):
        return None
    return _load_spki(spki)


def public_keys(data: bytes) -> List[PublicKey]:
    """keyutil.ParsePublicKeysPEM: by CONTENT, whatever the label; blocks no parser takes are skipped."""
    keys: List[PublicKey] = []
    for block in pem_blocks(data):
        for parse in (
            lambda d: _rsa_private(d),
            lambda d: _public(d, "rsa"),
            lambda d: _ec_private(d),
            lambda d: _public(d, "ec"),
        ):
            found = parse(block.der)
            if found is not None:
                keys.append(found.public_key() if hasattr(found, "private_bytes") else found)  # type: ignore[union-attr]
                break
    if not keys:
        raise KeyFileError("data does not contain any valid RSA or ECDSA public keys")
    return keys


def first_private_key(data: bytes) -> PrivateKey:
    """keyutil.ParsePrivateKeyPEM: by LABEL; the first block whose parser for that label succeeds. A PKCS#8
    Ed25519 key is returned too (x509.ParsePKCS8PrivateKey accepts it); marshal_private_key then refuses it."""
    for block in pem_blocks(data):
        der = block.der
        ok = (
            (block.type == "RSA PRIVATE KEY" and goasn1.pkcs1_private(der))
            or (block.type == "EC PRIVATE KEY" and goasn1.sec1_private(der) is not None)
            or (block.type == "PRIVATE KEY" and goasn1.pkcs8_kind(der) is not None)
        )
        if ok:
            key = _load_private(der)
            if key is not None:
                return key
    raise KeyFileError("data does not contain a valid RSA or ECDSA private key")


def marshal_private_key(key: PrivateKey) -> bytes:
    """PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as keyutil.MarshalPrivateKeyToPEM."""
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError("private key is not a recognized type: " + type(key).__name__)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def spki_der(pub: PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def kid_of(pub: PublicKey) -> str:
    """kube-apiserver's key id: base64url (no padding) of SHA-256 over the DER SubjectPublicKeyInfo."""
    return b64url(hashlib.sha256(spki_der(pub)).digest())


def same_key(a: PublicKey, b: PublicKey) -> bool:
    return spki_der(a) == spki_der(b)


_EC_ALG = {
    "secp256r1": ("P-256", "ES256", 32),
    "secp384r1": ("P-384", "ES384", 48),
    "secp521r1": ("P-521", "ES512", 66),
}


def algorithm(pub: PublicKey) -> str:
    """pkg/serviceaccount/jwt.go and openidmetadata.go algorithmFromPublicKey: P-224 (which Go parses) has none."""
    if isinstance(pub, rsa.RSAPublicKey):
        return "RS256"
    if pub.curve.name not in _EC_ALG:
        raise KeyFileError("unknown private key curve, must be 256, 384, or 521")
    return _EC_ALG[pub.curve.name][1]


def jwk(pub: PublicKey) -> dict:
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
        e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
        return {"use": "sig", "kty": "RSA", "kid": kid_of(pub), "alg": "RS256", "n": b64url(n), "e": b64url(e)}
    algorithm(pub)
    crv, alg, size = _EC_ALG[pub.curve.name]
    en = pub.public_numbers()
    return {
        "use": "sig",
        "kty": "EC",
        "kid": kid_of(pub),
        "crv": crv,
        "alg": alg,
        "x": b64url(en.x.to_bytes(size, "big")),
        "y": b64url(en.y.to_bytes(size, "big")),
    }


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_from_pem(data: bytes) -> List[x509.Certificate]:
    out = []
    for block in pem_blocks(data):
        if block.type == "CERTIFICATE" and not block.headers:
            out.append(x509.load_der_x509_certificate(block.der))
    if not out:
        raise KeyFileError("data does not contain any valid RSA or ECDSA certificates")
    return out


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def new_ca(common_name: str, key: PrivateKey) -> x509.Certificate:
    """A self-signed CA like dynamiclistener's NewSelfSignedCACert (10 years)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def new_leaf(
    common_name: str,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    organizations: Tuple[str, ...] = (),
    server: bool = False,
    dns_names: Tuple[str, ...] = (),
    ips: Tuple[str, ...] = (),
) -> x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = _now()
    usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    sans: List[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The issuer's key id, as Go's x509.CreateCertificate sets it on every certificate a CA signs (the CA's own
    SubjectKeyId). Python 3.13's ssl (Debian 13) refuses a chain without it: VERIFY_X509_STRICT."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a CA made elsewhere without one: the id is the hash of its public key
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` names and signed `cert`."""
    if cert.issuer != issuer.subject:
        return False
    pub = issuer.public_key()
    algo = cert.signature_hash_algorithm
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algo)  # type: ignore[arg-type]
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))  # type: ignore[arg-type]
        else:
            return False
    except Exception:  # cryptography raises InvalidSignature or a type error for odd keys
        return False
    return True
