"""A small HTTPS client for the Kubernetes API with the admin kubeconfig's client certificate.

Plain stdlib (ssl + http.client): the checks need a handful of GETs and POSTs, and the official client costs
~1 s of import and ~50 MB. The client key is handed to OpenSSL through an anonymous memory file, so no copy of it
ever touches the disk.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from k3srotd.errors import ConfigError

KUBECONFIG_RETRY = 3.0  # seconds a kubeconfig that K3s may be rewriting is read again


class APIError(Exception):
    """The API answered with an error or could not be reached; str() is one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _data(entry: dict[str, Any], key: str, base: Path) -> Optional[bytes]:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        p = Path(entry[key])
        return (p if p.is_absolute() else base / p).read_bytes()
    return None


# Loaded kubeconfigs, by path: (its stat when read, the TLS context, the token). A command or a daemon's look makes
# a dozen clients; loading the certificates each time cost ~20 ms apiece. K3s rewrites the file at each start,
# which changes its stat, so it is read again then.
_LOADED: dict[str, tuple[tuple[int, int, int], ssl.SSLContext, Optional[str]]] = {}


def _stamp(path: Path) -> Optional[tuple[int, int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KubeAPI:
    def __init__(self, kubeconfig: str, server_url: str, timeout: float = 10.0) -> None:
        self.kubeconfig = kubeconfig
        self.server_url = server_url.rstrip("/")
        self.timeout = timeout
        self._ctx: Optional[ssl.SSLContext] = None
        self._token: Optional[str] = None

    def _context(self) -> ssl.SSLContext:
        if self._ctx is not None:
            return self._ctx
        path = Path(self.kubeconfig)
        stamp = _stamp(path)
        cached = _LOADED.get(self.kubeconfig)
        if stamp is not None and cached is not None and cached[0] == stamp:
            self._ctx, self._token = cached[1], cached[2]
            return cached[1]
        ctx = self._read(path)
        if stamp is not None and stamp == _stamp(path):  # unchanged while it was read: whole, as loaded
            _LOADED[self.kubeconfig] = (stamp, ctx, self._token)
        return ctx

    def _read(self, path: Path) -> ssl.SSLContext:
        import yaml

        # K3s rewrites its kubeconfig in place at every start: a read may see half of it, so a file that does not
        # parse, or whose certificates do not load, is read again for up to KUBECONFIG_RETRY seconds
        deadline = time.monotonic() + KUBECONFIG_RETRY
        while True:
            try:
                text = path.read_text()
            except OSError as e:
                raise ConfigError(f"{path}: cannot read the kubeconfig ({e.strerror}); set kubeconfig") from None
            try:
                cfg = yaml.safe_load(text)
            except yaml.YAMLError:
                why = "is not a valid kubeconfig (YAML)"
            else:
                try:
                    return self._load(cfg, path)
                except (KeyError, IndexError, StopIteration, TypeError, AttributeError):
                    why = "has no usable context/cluster/user"
                except (OSError, ValueError) as e:  # ssl.SSLError is an OSError; bad base64 a ValueError
                    why = f"holds certificates or a key that do not load ({type(e).__name__})"
            if time.monotonic() >= deadline:
                raise ConfigError(f"{path}: {why}; set kubeconfig")
            time.sleep(0.1)

    def _load(self, cfg: Any, path: Path) -> ssl.SSLContext:
        ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
        context = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
        ca = _data(cluster, "certificate-authority", path.parent)
        # the kubeconfig's CA alone, as kubectl trusts it (and ~20 ms less than loading the system's store too)
        ctx = ssl.create_default_context(cadata=ca.decode()) if ca else ssl.create_default_context()
        cert = _data(user, "client-certificate", path.parent)
        key = _data(user, "client-key", path.parent)
        if not ((cert and key) or user.get("token")):
            raise KeyError("client-certificate and client-key, or token")  # no credentials (yet): half written
        if cert and key:
            fd = os.memfd_create("k3srotd-client", 0)
            try:
                os.write(fd, cert + b"\n" + key)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        self._token = user.get("token")
        self._ctx = ctx
        return ctx

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        url = urllib.parse.urlsplit(self.server_url)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port or 443, timeout=self.timeout, context=self._context()
        )
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            conn.request(method, url.path.rstrip("/") + path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise APIError(f"{self.server_url}{path}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON body or None): for API objects, where 404 and 409 are answers, not errors."""
        status, data = self.request(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def get_json(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise APIError(f"{self.server_url}{path}: HTTP {status}", status)
        try:
            return json.loads(data)
        except ValueError:
            raise APIError(f"{self.server_url}{path}: not JSON") from None

    def readyz(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz")
        except APIError:
            return False
        return status == 200

    def jwks_kids(self) -> list[str]:
        doc = self.get_json("/openid/v1/jwks")
        try:
            return [str(k["kid"]) for k in doc["keys"]]
        except (KeyError, TypeError):
            raise APIError(f"{self.server_url}/openid/v1/jwks: not a JWK set") from None
