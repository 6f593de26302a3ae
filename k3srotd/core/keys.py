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

from k3srotd.core import gopem
from k3srotd.errors import SafetyRefusal


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
    ignored: tuple[str, ...] = ()  # PEM blocks kube-apiserver neither verifies nor signs with, kept as text
    signer_kid: str = ""  # client-go's ParsePrivateKeyPEM: the first block with a private key label

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
            if b.kid == self.signer_kid or (not self.signer_kid and b.is_private):
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


def _cut(label: str) -> str:
    return label if len(label) <= 40 else label[:40] + "..."


@dataclass
class _Scan:
    """What parse() has learned so far, block by block."""

    path: str
    segments: list[Segment] = dataclasses.field(default_factory=list)
    seen: set[str] = dataclasses.field(default_factory=set)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    signer: str = ""
    first_private: bool = False  # the first block with a private key label has been judged
    encrypted: bool = False


def _judge_signer(scan: _Scan, label: str, lines: Sequence[bytes], der: bytes | None, what: str) -> str:
    """K3s signs with the first private key client-go's ParsePrivateKeyPEM loads. A first private key that Go
    cannot load (or kube-apiserver cannot sign with) leaves it unclear which key K3s signs with: refuse."""
    if gopem.encrypted(lines):
        raise KeyFileError(
            f"{scan.path}: {what} is encrypted; K3s needs unencrypted keys. Decrypt it (openssl rsa -in ...) "
            "or restore the file from a backup"
        )
    got = gopem.signer_key(label, der) if der is not None else None
    if got is None:
        raise KeyFileError(
            f"{scan.path}: {what} cannot be parsed as kube-apiserver parses it (Go's crypto/x509: PKCS#1 for RSA "
            "PRIVATE KEY, SEC1 on P-224/256/384/521 for EC PRIVATE KEY, PKCS#8 for PRIVATE KEY; no RSA-PSS, no "
            "explicit curve parameters), so K3s would sign with another key. Restore the file from a backup"
        )
    if got.algorithm == "other" or (got.algorithm == "EC" and got.curve not in gopem.SIGNING_CURVES):
        raise KeyFileError(
            f"{scan.path}: {what} is the first private key, so K3s signs with it, but kube-apiserver signs only "
            "with RSA or EC on P-256/384/521. Put an RSA key first, or restore the file from a backup"
        )
    return kid_of(got.public)


def _parse_block(scan: _Scan, label: str, lines: Sequence[bytes], index: int) -> KeyBlock | None:
    what = f"PEM block {index} ({_cut(label)})"
    der = gopem.block_bytes(lines)
    scan.encrypted = scan.encrypted or "ENCRYPTED" in label or gopem.encrypted(lines)
    judged = label in gopem.SIGNER_LABELS and not scan.first_private
    if judged:
        scan.first_private = True
        scan.signer = _judge_signer(scan, label, lines, der, what)
    got = gopem.verify_key(der) if der is not None else None
    if got is None:
        if judged:
            raise KeyFileError(
                f"{scan.path}: {what} holds an EC key in PKCS#8: K3s signs with it, but kube-apiserver does not "
                "verify with it (client-go reads EC private keys only in SEC1), so every token would fail. "
                "Convert it (openssl ec -in KEY -out KEY.sec1) or restore the file from a backup"
            )
        scan.ignored.append(what)
        return None
    kind = "private" if got.private else ("certificate" if label == "CERTIFICATE" else "public")
    bits = got.public.key_size if got.algorithm == "RSA" else got.public.curve.key_size
    return KeyBlock(raw=b"".join(lines), kind=kind, kid=kid_of(got.public), algorithm=got.algorithm, bits=bits)


def parse(data: bytes, path: str) -> KeyFile:
    """Parse a service.key as kube-apiserver does; raise KeyFileError naming the path and what to do when K3s
    could not use it. Blocks kube-apiserver ignores stay in place as text, and are named in `ignored`."""
    if not data.strip():
        raise KeyFileError(f"{path}: is empty; K3s would generate a new signing key. Restore it from a backup")
    scan = _Scan(path)
    text: list[bytes] = []
    block: list[bytes] | None = None
    label = ""
    index = 0
    for line in data.splitlines(keepends=True):
        s = line.strip()
        if block is None:
            if s.startswith(b"-----BEGIN ") and s.endswith(b"-----"):
                label = s[11:-5].decode("ascii", "replace")
                block = [line]
            else:
                text.append(line)
            continue
        block.append(line)
        if s.startswith(b"-----END ") and s.endswith(b"-----"):
            index += 1
            parsed = _parse_block(scan, label, block, index)
            if parsed is None:
                text.extend(block)
            else:
                if text:
                    scan.segments.append(b"".join(text))
                    text = []
                if parsed.kid in scan.seen:
                    scan.duplicates.append(parsed.kid)
                    parsed = dataclasses.replace(parsed, duplicate=True)
                scan.seen.add(parsed.kid)
                scan.segments.append(parsed)
            block = None
    if block is not None:
        raise KeyFileError(
            f"{path}: ends inside a PEM block ({_cut(label)}); the file is truncated. Restore it from a backup"
        )
    if text:
        scan.segments.append(b"".join(text))
    kf = KeyFile(tuple(scan.segments), path, tuple(scan.duplicates), tuple(scan.ignored), scan.signer)
    if not scan.signer:
        if scan.encrypted:
            raise KeyFileError(
                f"{path}: holds only encrypted private keys; K3s needs unencrypted keys. Decrypt them "
                "(openssl rsa -in ...) or restore the file from a backup"
            )
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
