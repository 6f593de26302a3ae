"""Key and certificate handling with the semantics of Go's encoding/pem and client-go's keyutil.

- `pem_blocks` splits PEM data like Go's pem.Decode: text outside blocks is skipped, CRLF is accepted,
  blocks with headers are kept (their bytes will not parse as keys).
- `public_keys` is keyutil.ParsePublicKeysPEM: every block is tried as an RSA/EC private key (PKCS#1, PKCS#8,
  SEC1), then as a public key (PKIX) or certificate; other blocks are tolerated; no key at all is an error.
- `first_private_key` is keyutil.ParsePrivateKeyPEM: the first block whose TYPE matches its encoding
  (`RSA PRIVATE KEY` = PKCS#1, `EC PRIVATE KEY` = SEC1, `PRIVATE KEY` = PKCS#8) and parses.
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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

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


def der_private_kind(der: bytes) -> Optional[str]:
    """'pkcs1', 'pkcs8' or 'sec1' from the ASN.1 shape: SEQUENCE { INTEGER version, <next> ... }."""

    def header(buf: bytes, i: int) -> Tuple[int, int, int]:
        tag = buf[i]
        length = buf[i + 1]
        i += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[i : i + n], "big")
            i += n
        return tag, length, i

    try:
        tag, _, i = header(der, 0)
        if tag != 0x30:
            return None
        tag, length, i = header(der, i)
        if tag != 0x02:
            return None
        nxt = der[i + length]
    except IndexError:
        return None
    return {0x02: "pkcs1", 0x30: "pkcs8", 0x04: "sec1"}.get(nxt)


@functools.lru_cache(maxsize=64)
def _load_private(der: bytes) -> Optional[PrivateKey]:
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        return None
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return key
    return None


@functools.lru_cache(maxsize=64)
def _load_public(der: bytes) -> Optional[PublicKey]:
    try:
        pub: Any = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        try:
            pub = x509.load_der_x509_certificate(der).public_key()
        except ValueError:
            return None
    if isinstance(pub, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return pub
    return None


def public_keys(data: bytes) -> List[PublicKey]:
    keys: List[PublicKey] = []
    for block in pem_blocks(data):
        if der_private_kind(block.der):
            priv = _load_private(block.der)
            if priv is not None:
                keys.append(priv.public_key())
                continue
        pub = _load_public(block.der)
        if pub is not None:
            keys.append(pub)
    if not keys:
        raise KeyFileError("data does not contain any valid RSA or ECDSA public keys")
    return keys


def first_private_key(data: bytes) -> PrivateKey:
    want = {"RSA PRIVATE KEY": "pkcs1", "EC PRIVATE KEY": "sec1", "PRIVATE KEY": "pkcs8"}
    for block in pem_blocks(data):
        if want.get(block.type) and der_private_kind(block.der) == want[block.type]:
            key = _load_private(block.der)
            if key is not None:
                return key
    raise KeyFileError("data does not contain a valid RSA or ECDSA private key")


def marshal_private_key(key: PrivateKey) -> bytes:
    """PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as keyutil.MarshalPrivateKeyToPEM."""
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
    if isinstance(pub, rsa.RSAPublicKey):
        return "RS256"
    return _EC_ALG[pub.curve.name][1]


def jwk(pub: PublicKey) -> dict:
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
        e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
        return {"use": "sig", "kty": "RSA", "kid": kid_of(pub), "alg": "RS256", "n": b64url(n), "e": b64url(e)}
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
