"""`k3s certificate rotate-ca` (pkg/cli/cert/cert.go rotateCA, pkg/clientaccess).

1. The token comes from <data-dir>/server/token (no --token flag; a missing file gives an empty token).
2. GET <server>/cacerts without verification, check its SHA-256 against the token's CA hash, GET it again
   verified with that CA.
3. Read <path>/tls/* (bootstrap.ReadFromDisk: each missing file is a `failed to stat` warning), with the
   passwd and ipsec files read from /dev/null so they are never replaced.
4. PUT <server>/v1-k3s/cert/cacerts?force=<bool> as user `server`; 2xx prints `certificates saved to datastore`.
Errors are logrus fatal lines, exit 1."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from typing import List, Optional, Tuple

from cryptography.hazmat.primitives import serialization

from . import bootstrap, flags, keys, log

FLAGS = [
    flags.Flag("data-dir", ("d",), default="/var/lib/rancher/k3s", env="K3S_DATA_DIR"),
    flags.Flag("server", ("s",), default="https://127.0.0.1:6443", env="K3S_URL"),
    flags.Flag("path"),
    flags.Flag("force", kind="bool", default=False),
]
TIMEOUT = 10.0


class ClientError(Exception):
    pass


def parse_token(token: str) -> Tuple[str, str, str]:
    """(ca_hash, username, password), as clientaccess.parseToken."""
    if not token:
        raise ClientError("token must not be empty")
    if not token.startswith("K10"):
        token = "K10:::" + token
    parts = token[3:].split("::", 1)
    ca_hash = ""
    rest = parts[0]
    if len(parts) > 1:
        ca_hash, rest = parts
        if ca_hash and len(ca_hash) != 64:
            raise ClientError("invalid token CA hash length")
    user, sep, password = rest.partition(":")
    if not sep or not password:
        raise ClientError("invalid token format")
    return ca_hash, user, password


def hash_ca(data: bytes) -> str:
    """SHA-256 of the PEM bytes; for a bundle, of the DER of the root the first cert chains to."""
    try:
        certs = keys.certs_from_pem(data)
    except ValueError:
        certs = []
    if len(certs) > 1:
        current = certs[0]
        for _ in range(8):
            issuer = next((c for c in certs[1:] if keys.signed_by(current, c)), None)
            if issuer is None:
                break
            if issuer.issuer == issuer.subject:
                return hashlib.sha256(issuer.public_bytes(serialization.Encoding.DER)).hexdigest()
            current = issuer
    return hashlib.sha256(data).hexdigest()


def _go_error(method: str, url: str, exc: BaseException) -> str:
    u = urllib.parse.urlsplit(url)
    verb = {"GET": "Get", "PUT": "Put"}[method]
    if isinstance(exc, ConnectionRefusedError):
        return f'{verb} "{url}": dial tcp {u.hostname}:{u.port}: connect: connection refused'
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f'{verb} "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f'{verb} "{url}": tls: failed to verify certificate: x509: certificate signed by unknown authority'
    if isinstance(exc, socket.gaierror):
        return f'{verb} "{url}": dial tcp: lookup {u.hostname}: no such host'
    return f'{verb} "{url}": {exc}'


def _request(
    method: str, url: str, context: ssl.SSLContext, body: Optional[bytes] = None, auth: Optional[Tuple[str, str]] = None
) -> bytes:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname or "", u.port or 443, context=context, timeout=TIMEOUT)
    headers = {"User-Agent": "k3s/emulator"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    target = u.path + ("?" + u.query if u.query else "")
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(_go_error(method, url, exc)) from exc
    finally:
        conn.close()
    if 200 <= resp.status <= 299:
        return data
    status_line = f"{resp.status} {resp.reason}"
    try:
        status = json.loads(data)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        raise ClientError(str(status.get("message", status_line)))
    if method == "GET":
        raise ClientError(f"{url}: {status_line}")
    raise ClientError(f"{url}: {status_line} {data.decode(errors='replace')}".rstrip("\n"))


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run(args: List[str]) -> int:
    try:
        values, _, _ = flags.parse(FLAGS, args)
    except flags.UsageError as exc:
        log.fatal(str(exc))
    if not values["path"]:
        log.fatal('Required flag "path" not set')
    data_dir = os.path.abspath(os.path.expanduser(values["data-dir"]))
    token_path = os.path.join(data_dir, "server", "token")
    try:
        with open(token_path, "rb") as f:
            token = f.read().rstrip(b"\n").decode()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        log.fatal(f"open {token_path}: {(exc.strerror or str(exc)).lower()}")
    try:
        ca_hash, _, password = parse_token(token)
        server = values["server"]
        u = urllib.parse.urlsplit(server)
        if u.scheme != "https":
            raise ClientError("only https:// URLs are supported, invalid scheme: " + server)
        base = f"https://{u.netloc}{u.path.rstrip('/')}"
        try:
            cacerts = _request("GET", base + "/cacerts", _insecure())
        except ClientError as exc:
            raise ClientError(f"failed to get CA certs: {exc}") from exc
        verified = ssl.create_default_context(cadata=cacerts.decode(errors="replace"))
        try:
            _request("GET", base + "/cacerts", verified)
        except (ClientError, ssl.SSLError) as exc:
            raise ClientError(f"CA cert validation failed: {exc}") from exc
        if ca_hash and hash_ca(cacerts) != ca_hash:
            raise ClientError(
                f"token CA hash does not match the Cluster CA certificate hash: {ca_hash} != {hash_ca(cacerts)}"
            )
        paths = bootstrap.paths(os.path.abspath(values["path"]))
        paths["PasswdFile"] = os.devnull
        paths["IPSECKey"] = os.devnull
        body = bootstrap.encode(bootstrap.read_from_disk(paths))
        url = f"{base}/v1-k3s/cert/cacerts?force={'true' if values['force'] else 'false'}"
        try:
            _request("PUT", url, verified, body, ("server", password))
        except ClientError as exc:
            raise ClientError(f"see server log for details: {exc}") from exc
    except ClientError as exc:
        log.fatal(str(exc))
    print("certificates saved to datastore", flush=True)
    return 0
