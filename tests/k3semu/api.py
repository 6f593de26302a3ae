"""The HTTPS endpoints of an emulated server: K3s's supervisor paths and the kube-apiserver paths k3srotd uses.

Authentication as K3s runs kube-apiserver: `--anonymous-auth=false`, so every API path (even /readyz and the
JWKS) needs a client certificate signed by the client CA or a valid service-account bearer token, else 401.
`/cacerts` and `/ping` are open (K3s's supervisor); `/v1-k3s/...` takes basic auth `server:<password>`."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import secrets
import socket
import sys
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import VERSION, certs, faults, identity, join, jwt, keys, log, nodes, objects, tokens, watch
from . import secrets as sa_secrets
from .bootstrap import Datastore


@dataclass
class State:
    data_dir: str
    server_dir: str
    port: int
    password: str
    server_ca_pem: bytes
    public_keys: List[keys.PublicKey]
    signer: keys.PrivateKey
    issuers: List[str]
    api_audiences: List[str]
    max_expiration: Optional[int]
    datastore: Datastore
    error_style: str = "legacy"
    jwks_uri: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


def status_body(code: int, reason: str, message: str, details: Optional[dict] = None) -> bytes:
    obj: Dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        obj["details"] = details
    return json.dumps(obj).encode()


_TOKEN_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)/token$")
_SA_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/serviceaccounts(?:/([^/]+))?$")
_LEASE_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")
_NODE_PATH = re.compile(r"^/api/v1/nodes(?:/([^/]+))?$")
_CACHE = {"Cache-Control": "public, max-age=3600"}  # pkg/routes/openidmetadata.go cacheControl
_OPEN_API = ("/readyz", "/livez", "/healthz", "/version", "/openid/v1/jwks", "/.well-known/openid-configuration")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k3s"
    sys_version = ""

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # as Go's net/http (kube-apiserver): no Nagle delay between the header and body writes, which would
        # otherwise meet the client's delayed ACK and add some 40 ms to every request
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ----- plumbing
    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body()
        try:
            obj = json.loads(raw or b"{}")
        except ValueError:
            obj = None
        return obj if isinstance(obj, dict) else {}

    def _user(self) -> Optional[Tuple[str, List[str]]]:
        """(username, groups) from the client certificate or a bearer token; None if unauthenticated."""
        try:
            cert = self.connection.getpeercert()  # type: ignore[attr-defined]
        except (ValueError, AttributeError):
            cert = None
        if cert:
            cn, orgs = "", []
            for rdn in cert.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        cn = v
                    elif k == "organizationName":
                        orgs.append(v)
            return cn, [*orgs, "system:authenticated"]
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            st = self.state
            try:
                claims = tokens.authenticate(st, auth[7:].strip(), st.api_audiences)
            except jwt.TokenError:
                return None
            ns = claims.get("kubernetes.io", {}).get("namespace", "")
            return str(claims.get("sub")), [
                "system:serviceaccounts",
                f"system:serviceaccounts:{ns}",
                "system:authenticated",
            ]
        return None

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # ----- routing
    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        slow = faults.peek(self.state.data_dir, "slow_api")
        if slow is not None and path.startswith(str(slow.get("path", "/"))):
            time.sleep(float(slow.get("seconds", 1)))
        try:
            if path == "/cacerts":
                self._send(200, self.state.server_ca_pem, "text/plain")
            elif path == "/ping":
                self._send(200, b"pong", "text/plain")
            elif path.startswith("/v1-k3s/"):
                self._supervisor(path, query)
            else:
                self._api(path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _supervisor(self, path: str, query: dict) -> None:
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                ok = user == "server" and secrets.compare_digest(password, self.state.password)
            except ValueError:
                ok = False
        if not ok:
            self._body()
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        if path == "/v1-k3s/server-bootstrap" and self.command == "GET":
            st = self.state
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            self._send(200, join.serve(VERSION, st.server_dir, st.datastore, peer))
            return
        if path != "/v1-k3s/cert/cacerts":
            self._body()
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        body = self._body()
        if self.command != "PUT":
            self._error_with_id("method not allowed", code=405, with_id=False)
            return
        force = (query.get("force") or ["false"])[0] in ("1", "t", "T", "TRUE", "true", "True")
        st = self.state
        try:
            certs.replace(st.server_dir, st.data_dir, body, force, st.datastore)
        except (certs.CertError, ValueError, OSError) as exc:
            self._error_with_id(str(exc))
            return
        log.info("certificate: Cluster Certificate Authority data has been updated, k3s must be restarted.")
        if faults.take(st.data_dir, "reply_lost") is not None:  # saved, but the client never hears so
            self.close_connection = True
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error_with_id(self, message: str, code: int = 500, with_id: bool = True) -> None:
        if with_id:
            err_id = secrets.randbelow(99999)
            log.error(f"certificate error ID {err_id:05d}: {message}")
            message = f"certificate error ID {err_id:05d}"
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        log.error(f"Sending {self.request_version} {code} response to {peer}: {message}")
        if self.state.error_style == "status":
            reason = "InternalError" if code == 500 else "MethodNotAllowed"
            text = f"Internal error occurred: {message}" if code == 500 else message
            body = status_body(code, reason, text, {"causes": [{"message": message}]} if code == 500 else None)
            self._send(code, body, headers={"Connection": "close"})
        else:
            self._send(
                code, (message + "\n").encode(), "text/plain; charset=utf-8", {"X-Content-Type-Options": "nosniff"}
            )

    def _api(self, path: str, query: dict) -> None:
        user = self._user()
        watch.audit(self.state.data_dir, user[0] if user else "", self.command, self.path)
        body = self._body() if self.command in ("POST", "PUT", "PATCH") else b""
        if user is None:
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        name, groups = user
        masters = "system:masters" in groups
        st = self.state
        if self.command in ("GET", "HEAD") and path in ("/readyz", "/livez", "/healthz"):
            if "verbose" in query:
                text = f"[+]ping ok\n[+]log ok\n[+]etcd ok\n{path[1:]} check passed\n"
                self._send(200, text.encode(), "text/plain; charset=utf-8")
            else:
                self._send(200, b"ok", "text/plain; charset=utf-8")
        elif self.command == "GET" and path == "/version":
            major, minor = VERSION.lstrip("v").split(".")[:2]
            info = {"major": major, "minor": minor, "gitVersion": VERSION, "platform": "linux/amd64"}
            self._send(200, json.dumps(info).encode())
        elif path in ("/openid/v1/jwks", "/.well-known/openid-configuration") and not self._discovery():
            self._send(404, status_body(404, "NotFound", "the server could not find the requested resource", {}))
        elif self.command == "GET" and path == "/openid/v1/jwks":
            doc = {"keys": [keys.jwk(k) for k in st.public_keys]}
            self._send(200, json.dumps(doc).encode(), "application/jwk-set+json", _CACHE)
        elif self.command == "GET" and path == "/.well-known/openid-configuration":
            algs = sorted({keys.algorithm(k) for k in st.public_keys})
            doc = {
                "issuer": st.issuers[0],
                "jwks_uri": st.jwks_uri,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": algs,
            }
            self._send(200, json.dumps(doc).encode(), headers=_CACHE)
        elif path in _OPEN_API:
            self._send(
                405,
                status_body(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
            )
        elif not masters:
            self._send(
                403,
                status_body(403, "Forbidden", f'forbidden: User "{name}" cannot {self.command.lower()} path "{path}"'),
            )
        elif self.command == "POST" and _TOKEN_PATH.match(path):
            m = _TOKEN_PATH.match(path)
            assert m is not None
            self._send(*tokens.token_request(st, m.group(1), m.group(2), body))
        elif self.command == "POST" and path == "/apis/authentication.k8s.io/v1/tokenreviews":
            self._send(*tokens.token_review(st, body))
        elif self.command == "GET" and path == "/metrics":
            text = identity.metrics_text(st.data_dir, float(st.extra.get("started", 0)))
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.command in ("GET", "POST") and _SA_PATH.match(path):
            m = _SA_PATH.match(path)
            assert m is not None
            self._service_accounts(m.group(1), m.group(2), body)
        elif _LEASE_PATH.match(path) or _NODE_PATH.match(path):
            self._objects(path, query, body)
        elif sa_secrets.owns(path):  # Secrets and the token controller: secrets.py
            self._send(*sa_secrets.serve(st, self.command, path, query, body))
        else:
            self._send(404, status_body(404, "NotFound", "the server could not find the requested resource", {}))

    def _discovery(self) -> bool:
        """kube-apiserver installs the discovery endpoints only when serviceaccount.NewOpenIDMetadata succeeds:
        an https issuer, and a JWK for every key (pkg/serviceaccount/openidmetadata.go; otherwise "Endpoints will
        not be enabled", pkg/controlplane/apiserver/config.go)."""
        st = self.state
        if urllib.parse.urlsplit(st.issuers[0]).scheme != "https":
            return False
        try:
            for k in st.public_keys:
                keys.algorithm(k)
        except keys.KeyFileError:
            return False
        return True

    def _service_accounts(self, ns: str, name: Optional[str], raw: bytes) -> None:
        store = self.state.datastore.directory
        if self.command == "GET" and name:
            obj = identity.get_sa(store, ns, name)
            if obj is None:
                details = {"name": name, "kind": "serviceaccounts"}
                self._send(404, status_body(404, "NotFound", f'serviceaccounts "{name}" not found', details))
            else:
                self._send(200, json.dumps(obj).encode())
        elif self.command == "GET":
            doc = {"kind": "ServiceAccountList", "apiVersion": "v1", "items": identity.list_sa(store, ns)}
            self._send(200, json.dumps(doc).encode())
        elif name:
            self._send(405, status_body(405, "MethodNotAllowed", "the server does not allow this method"))
        else:
            try:
                req = json.loads(raw or b"{}")
            except ValueError:
                req = None
            code, obj = identity.create_sa(store, ns, req if isinstance(req, dict) else {})
            if code == 201:
                self._send(201, json.dumps(obj).encode())
            else:
                self._send(code, status_body(code, obj["reason"], obj["message"]))

    def _objects(self, path: str, query: dict, raw: bytes) -> None:
        """Nodes and Leases (objects.py), shared through the datastore folder."""
        store = self.state.datastore.directory
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send(400, status_body(400, "BadRequest", "the body of the request is not a JSON object"))
            return
        code: int
        obj: Dict[str, Any]
        node = _NODE_PATH.match(path)
        lease = _LEASE_PATH.match(path)
        if node and self.command == "GET":
            grace = float(self.state.extra.get("node_grace", nodes.DEFAULT_GRACE))
            if node.group(1):
                code, obj = nodes.get_node(store, node.group(1), grace)
            else:
                code, obj = 200, nodes.list_nodes(store, (query.get("labelSelector") or [""])[0], grace)
        elif lease and lease.group(2) is None and self.command == "GET" and query.get("watch") == ["true"]:
            watch.stream(self, store, lease.group(1), query)
            return
        elif lease and lease.group(2) is None and self.command == "GET":
            code, obj = 200, objects.list_leases(store, lease.group(1))
        elif lease and lease.group(2) is None and self.command == "POST":
            code, obj = objects.create_lease(store, lease.group(1), body)
        elif lease and self.command == "GET":
            code, obj = objects.get_lease(store, lease.group(1), str(lease.group(2)))
        elif lease and lease.group(2) and self.command == "PUT":
            code, obj = objects.update_lease(store, lease.group(1), lease.group(2), body)
        elif lease and lease.group(2) and self.command == "DELETE":
            code, obj = objects.delete_lease(store, lease.group(1), lease.group(2))
        else:
            self._send(405, status_body(405, "MethodNotAllowed", "the server does not allow this method"))
            return
        if code < 300:
            self._send(code, json.dumps(obj).encode())
        else:
            self._send(code, status_body(code, obj["reason"], obj["message"], obj.get("details")))


class HTTPSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        peer = f"{client_address[0]}:{client_address[1]}"
        if isinstance(exc, OSError):  # TLS handshake failures, resets: a client's problem
            log.debug(f"http: TLS handshake error from {peer}: {exc}")
        else:  # a bug in the emulator: make it visible in the server log
            log.error(f"http: panic serving {peer}: {''.join(traceback.format_exception(*sys.exc_info()))}")
