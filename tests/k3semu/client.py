"""A small HTTPS client that authenticates with an admin kubeconfig (inline data or file references)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse
from typing import Any, Dict, Optional, Tuple

import yaml


def _field(entry: dict, data_key: str, file_key: str) -> bytes:
    if entry.get(data_key):
        return base64.b64decode(entry[data_key])
    with open(entry[file_key], "rb") as f:
        return f.read()


class KubeClient:
    def __init__(self, kubeconfig: str) -> None:
        with open(kubeconfig) as f:
            doc = yaml.safe_load(f)
        ctx_name = doc.get("current-context")
        ctx = next((c["context"] for c in doc["contexts"] if c["name"] == ctx_name), doc["contexts"][0]["context"])
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"]
        ca = _field(cluster, "certificate-authority-data", "certificate-authority")
        cert = _field(user, "client-certificate-data", "client-certificate")
        key = _field(user, "client-key-data", "client-key")
        self.context = ssl.create_default_context(cadata=ca.decode())
        with tempfile.TemporaryDirectory(prefix="k3semu-client-") as tmp:
            cert_path, key_path = os.path.join(tmp, "c.crt"), os.path.join(tmp, "c.key")
            for path, data in ((cert_path, cert), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, data)
                os.close(fd)
            self.context.load_cert_chain(cert_path, key_path)

    def request(
        self, method: str, path: str, body: Optional[Any] = None, timeout: float = 5.0
    ) -> Tuple[int, Dict[str, str], bytes]:
        url = urllib.parse.urlsplit(self.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port or 443, context=self.context, timeout=timeout
        )
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Optional[Any] = None, timeout: float = 5.0) -> Any:
        status, _, data = self.request(method, path, body, timeout)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data.decode(errors='replace')}")
        return json.loads(data)

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            status, _, data = self.request("GET", "/readyz", timeout=timeout)
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
        return status == 200 and data == b"ok"
