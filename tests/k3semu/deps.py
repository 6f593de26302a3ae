"""Files a server generates on disk (pkg/daemons/control/deps): CAs, service.key, passwords, and at every
start service.current.key, the token, the admin client certificate, kubeconfigs and the serving cert."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from typing import Optional, Tuple

import yaml

from . import keys
from .bootstrap import write_file

CAS = (
    ("k3s-client", "tls/client-ca.crt", "tls/client-ca.key"),
    ("k3s-server", "tls/server-ca.crt", "tls/server-ca.key"),
    ("k3s-request-header", "tls/request-header-ca.crt", "tls/request-header-ca.key"),
    ("etcd-server", "tls/etcd/server-ca.crt", "tls/etcd/server-ca.key"),
    ("etcd-peer", "tls/etcd/peer-ca.crt", "tls/etcd/peer-ca.key"),
)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_cert(path: str, pem: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o644)


def _load_or_generate_key(path: str) -> keys.PrivateKey:
    if os.path.exists(path):
        return keys.first_private_key(_read(path))
    key = keys.new_ec_key()
    write_file(path, keys.marshal_private_key(key))
    return key


def gen_bootstrap_files(server_dir: str, token: Optional[str] = None) -> None:
    """Create whatever bootstrap file is missing; existing files (custom CAs, a pre-made service.key) stay."""
    for prefix, crt, key in CAS:
        crt_path, key_path = os.path.join(server_dir, crt), os.path.join(server_dir, key)
        if os.path.exists(crt_path) and os.path.exists(key_path):
            continue
        ca_key = _load_or_generate_key(key_path)
        _write_cert(crt_path, keys.cert_pem(keys.new_ca(f"{prefix}-ca@{int(time.time())}", ca_key)))
    service_key = os.path.join(server_dir, "tls", "service.key")
    if not os.path.exists(service_key):
        write_file(service_key, keys.marshal_private_key(keys.new_rsa_key(2048)))
    passwd = os.path.join(server_dir, "cred", "passwd")
    if not os.path.exists(passwd):
        password = _password_from_token(token) if token else secrets.token_hex(16)
        write_file(passwd, f"{password},node,node,k3s:agent\n{password},server,server,k3s:server\n".encode())
    psk = os.path.join(server_dir, "cred", "ipsec.psk")
    if not os.path.exists(psk) or os.path.getsize(psk) == 0:
        write_file(psk, (secrets.token_hex(64) + "\n").encode())


def _password_from_token(token: str) -> str:
    if token.startswith("K10") and "::" in token:
        token = token.split("::", 1)[1]
    if ":" in token:
        token = token.split(":", 1)[1]
    return token


def server_password(server_dir: str) -> str:
    for line in _read(os.path.join(server_dir, "cred", "passwd")).decode().splitlines():
        fields = line.strip().split(",")
        if len(fields) >= 2 and fields[1] == "server":
            return fields[0]
    raise ValueError("no server password in " + os.path.join(server_dir, "cred", "passwd"))


def write_current_key(server_dir: str) -> keys.PrivateKey:
    """service.current.key = the FIRST private key of service.key, re-marshalled (deps.genServiceAccount)."""
    key = keys.first_private_key(_read(os.path.join(server_dir, "tls", "service.key")))
    write_file(os.path.join(server_dir, "tls", "service.current.key"), keys.marshal_private_key(key))
    return key


def write_token(server_dir: str, password: str) -> str:
    ca = _read(os.path.join(server_dir, "tls", "server-ca.crt"))
    token = f"K10{hashlib.sha256(ca).hexdigest()}::server:{password}"
    path = os.path.join(server_dir, "token")
    write_file(path, (token + "\n").encode())
    os.chmod(path, 0o600)
    link = os.path.join(server_dir, "node-token")
    if os.path.islink(link) or os.path.exists(link):
        os.unlink(link)
    os.symlink("token", link)
    return token


def _ca_pair(server_dir: str, crt: str, key: str) -> Tuple[bytes, keys.PrivateKey]:
    pem = _read(os.path.join(server_dir, crt))
    return pem, keys.first_private_key(_read(os.path.join(server_dir, key)))


def ensure_admin_cert(server_dir: str) -> Tuple[bytes, bytes]:
    """client-admin.crt/.key (CN system:admin, O system:masters) signed by the client CA; renewed when the
    client CA changed. Returns (cert chain PEM, key PEM)."""
    ca_pem, ca_key = _ca_pair(server_dir, "tls/client-ca.crt", "tls/client-ca.key")
    ca_cert = keys.certs_from_pem(ca_pem)[0]
    crt_path = os.path.join(server_dir, "tls", "client-admin.crt")
    key_path = os.path.join(server_dir, "tls", "client-admin.key")
    if os.path.exists(crt_path) and os.path.exists(key_path):
        try:
            current = keys.certs_from_pem(_read(crt_path))[0]
            if keys.signed_by(current, ca_cert):
                return _read(crt_path), _read(key_path)
        except ValueError:
            pass
    key = keys.new_ec_key()
    cert = keys.new_leaf("system:admin", key, ca_cert, ca_key, organizations=("system:masters",))
    chain = keys.cert_pem(cert) + keys.cert_pem(ca_cert)
    write_file(key_path, keys.marshal_private_key(key))
    _write_cert(crt_path, chain)
    return chain, keys.marshal_private_key(key)


def write_serving_cert(server_dir: str) -> Tuple[str, str]:
    """The HTTPS serving certificate (K3s's dynamiclistener cert), signed by the server CA, SAN 127.0.0.1."""
    ca_pem, ca_key = _ca_pair(server_dir, "tls/server-ca.crt", "tls/server-ca.key")
    ca_cert = keys.certs_from_pem(ca_pem)[0]
    key = keys.new_ec_key()
    dns = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
    cert = keys.new_leaf(
        "k3s", key, ca_cert, ca_key, organizations=("k3s",), server=True, dns_names=dns, ips=("127.0.0.1", "::1")
    )
    crt_path = os.path.join(server_dir, "tls", "serving-kube-apiserver.crt")
    key_path = os.path.join(server_dir, "tls", "serving-kube-apiserver.key")
    write_file(key_path, keys.marshal_private_key(key))
    _write_cert(crt_path, keys.cert_pem(cert) + keys.cert_pem(ca_cert))
    return crt_path, key_path


def kubeconfig_yaml(url: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> bytes:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca_pem), "server": url}, "name": "default"}],
        "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
        "current-context": "default",
        "kind": "Config",
        "preferences": {},
        "users": [
            {"name": "default", "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}
        ],
    }
    return yaml.safe_dump(doc, default_flow_style=False).encode()


def write_kubeconfig(path: str, content: bytes, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.chmod(path, mode)
