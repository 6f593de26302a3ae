"""The live key file as data: PEM blocks parsed with cryptography, identified by kid.

K3s signs with the FIRST private key of service.key; every key of the file verifies and is published in the JWKS.
A file is kept as a list of segments (text and blocks) so that existing blocks, and anything between them, are
written back byte for byte; only the order and the set of key blocks change.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

from k3srotd.errors import SafetyRefusal

PRIVATE_LABELS = ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY")
PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")
CERT_LABELS = ("CERTIFICATE",)
ENCRYPTED_LABELS = ("ENCRYPTED PRIVATE KEY",)


class KeyFileError(SafetyRefusal):
    """The key file cannot be used as it is: a safety refusal (exit 3), nothing is changed."""


@dataclass(frozen=True)
class KeyBlock:
    """One key of the file. `raw` is its exact bytes, from the BEGIN line through the END line's line ending."""

    raw: bytes
    kind: str  # "private" | "public" | "certificate"
    kid: str
    algorithm: str  # "RSA" | "EC"
    bits: int
    duplicate: bool = False  # a second block of a kid already in the file: reported, written once

    @property
    def is_private(self) -> bool:
        return self.kind == "private"


Segment = Union[bytes, KeyBlock]


@dataclass(frozen=True)
class KeyFile:
    segments: tuple[Segment, ...]
    path: str
    duplicates: tuple[str, ...] = ()

    @property
    def blocks(self) -> list[KeyBlock]:
        """Key blocks in file order, duplicates left out (the first of a kid counts)."""
        return [s for s in self.segments if isinstance(s, KeyBlock) and not s.duplicate]

    @property
    def kids(self) -> list[str]:
        return [b.kid for b in self.blocks]

    @property
    def signer(self) -> KeyBlock:
        for b in self.blocks:
            if b.is_private:
                return b
        raise KeyFileError(f"{self.path}: holds no private key; K3s cannot sign with it")

    def block(self, kid: str) -> KeyBlock:
        for b in self.blocks:
            if b.kid == kid:
                return b
        raise KeyError(kid)

    def __contains__(self, kid: object) -> bool:
        return any(b.kid == kid for b in self.blocks)


def kid_of(public_key: Any) -> str:
    """kube-apiserver's key id: base64url, unpadded, of SHA-256 over the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def _load_private(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        # Existing keys need only their public halves; K3s validates what it loads. Skipping the RSA
        # consistency check is ~3,000x faster on cryptography >= 39 (the argument does not exist before).
        return serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    except TypeError as e:
        if "unsafe_skip_rsa_key_validation" not in str(e):
            raise
        return serialization.load_pem_private_key(pem, None)


def _describe(public_key: Any, path: str, what: str) -> tuple[str, int]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC", public_key.curve.key_size
    raise KeyFileError(
        f"{path}: {what} is neither RSA nor EC; kube-apiserver accepts only those. Remove it from the file"
    )


def _normalise(lines: Sequence[bytes]) -> bytes:
    """PEM for cryptography: LF line endings, no blank lines (K3s's Go parser tolerates both)."""
    out = [ln.strip() for ln in lines]
    return b"\n".join(ln for ln in out if ln) + b"\n"


def _parse_block(label: str, lines: Sequence[bytes], path: str, index: int) -> KeyBlock | None:
    from cryptography.hazmat.primitives import serialization

    what = f"PEM block {index} ({label})"
    raw = b"".join(lines)
    if label in ENCRYPTED_LABELS or any(b"ENCRYPTED" in ln and b"Proc-Type" in ln for ln in lines):
        raise KeyFileError(
            f"{path}: {what} is encrypted; K3s needs unencrypted keys. Decrypt it (openssl rsa -in ...) "
            "or restore the file from a backup"
        )
    pem = _normalise(lines)
    try:
        if label in PRIVATE_LABELS:
            key = _load_private(pem)
            pub = key.public_key()
            kind = "private"
        elif label in PUBLIC_LABELS:
            pub = serialization.load_pem_public_key(pem)
            kind = "public"
        elif label in CERT_LABELS:
            from cryptography import x509  # ~60 ms to import: only for files that hold certificates

            pub = x509.load_pem_x509_certificate(pem).public_key()
            kind = "certificate"
        else:
            return None  # other blocks are tolerated and kept in place, as K3s does
    except (ValueError, TypeError) as e:
        raise KeyFileError(
            f"{path}: {what} cannot be parsed ({type(e).__name__}); the file may be truncated or damaged. "
            "Restore it from a backup before k3srotd touches it"
        ) from None
    algorithm, bits = _describe(pub, path, what)
    return KeyBlock(raw=raw, kind=kind, kid=kid_of(pub), algorithm=algorithm, bits=bits)


def parse(data: bytes, path: str) -> KeyFile:
    """Parse a service.key; raise KeyFileError naming the path and what to do when K3s could not use it."""
    if not data.strip():
        raise KeyFileError(f"{path}: is empty; K3s would generate a new signing key. Restore it from a backup")
    segments: list[Segment] = []
    text: list[bytes] = []
    block: list[bytes] | None = None
    label = ""
    seen: set[str] = set()
    duplicates: list[str] = []
    index = 0
    for line in data.splitlines(keepends=True):
        s = line.strip()
        if block is None:
            if s.startswith(b"-----BEGIN ") and s.endswith(b"-----"):
                if text:
                    segments.append(b"".join(text))
                    text = []
                label = s[11:-5].decode("ascii", "replace")
                block = [line]
            else:
                text.append(line)
            continue
        block.append(line)
        if s.startswith(b"-----END ") and s.endswith(b"-----"):
            index += 1
            parsed = _parse_block(label, block, path, index)
            if parsed is None:
                text.extend(block)
            else:
                if parsed.kid in seen:
                    duplicates.append(parsed.kid)
                    parsed = dataclasses.replace(parsed, duplicate=True)
                seen.add(parsed.kid)
                segments.append(parsed)
            block = None
    if block is not None:
        raise KeyFileError(
            f"{path}: ends inside a PEM block ({label}); the file is truncated. Restore it from a backup"
        )
    if text:
        segments.append(b"".join(text))
    kf = KeyFile(segments=tuple(segments), path=path, duplicates=tuple(duplicates))
    if not kf.blocks:
        raise KeyFileError(f"{path}: holds no PEM key; restore it from a backup")
    kf.signer  # noqa: B018 - raises when there is no private key
    return kf


def compose(current: KeyFile, order: Sequence[str], new_blocks: Iterable[KeyBlock] = ()) -> bytes:
    """The file with exactly the keys of `order`, in that order.

    Existing blocks and the text around them are kept byte for byte; a duplicate block is dropped; the key
    slots of the file are filled in the new order, and keys beyond them are appended at the end.
    """
    pool = {b.kid: b for b in current.blocks}
    for b in new_blocks:
        pool[b.kid] = b
    missing = [k for k in order if k not in pool]
    if missing:
        raise ValueError(f"unknown kids in target order: {missing}")
    if len(set(order)) != len(order):
        raise ValueError("target order names a kid twice")
    queue = [pool[k] for k in order]
    out: list[bytes] = []
    for seg in current.segments:
        if isinstance(seg, KeyBlock):
            if queue and not seg.duplicate:
                out.append(_terminated(queue.pop(0).raw))
        else:
            out.append(seg)
    for b in queue:
        if out and not out[-1].endswith(b"\n"):
            out.append(b"\n")
        out.append(_terminated(b.raw))
    return b"".join(out)


def _terminated(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


def generate(bits: int) -> KeyBlock:
    """A new RSA key (e=65537) as PKCS#1 PEM, the form K3s writes its own keys in."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raw = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return KeyBlock(raw=raw, kind="private", kid=kid_of(key.public_key()), algorithm="RSA", bits=bits)


def short(kid: str) -> str:
    """A kid shortened for humans (tables, prompts); logs and JSON carry the whole kid."""
    return kid[:12]
