"""A local HTTPS server that plays a cluster's public OIDC issuer (what Azure Arc publishes for Entra), and a
small CONNECT proxy. The TLS certificate comes from a throwaway CA that tests trust through SSL_CERT_FILE.

    certs = TestCA(tmp_path)                       # ca.pem, server.pem, server.key
    iss = IssuerServer(certs).start()              # https://127.0.0.1:PORT/cluster-a
    iss.publish(jwks, cache_control="max-age=3")   # what the JWKS serves from now on
    iss.jwks_type = "text/html"                    # the wrong content type
    iss.stop(); iss.start()                        # unreachable, then back on the same port
    iss.hits                                       # (time, path, kids served) of every request
"""

from __future__ import annotations

import datetime
import http.server
import json
import select
import socket
import ssl
import threading
import time
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestCA:
    """A CA and a server certificate for 127.0.0.1 and localhost, written as PEM files."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3srotd test issuer CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        import ipaddress

        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        iss: IssuerServer = self.server.issuer  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        with iss.lock:
            location = iss.redirects.get(path)
            drip = iss.drip
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with iss.lock:
            if path == iss.path + "/.well-known/openid-configuration":
                doc = {
                    "issuer": iss.discovery_issuer or iss.issuer,
                    "jwks_uri": iss.issuer + "/openid/v1/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
                body, ctype, headers, kids = json.dumps(doc).encode(), iss.discovery_type, {}, ()
            elif path == iss.path + "/openid/v1/jwks":
                body = json.dumps(iss.jwks).encode()
                ctype, headers = iss.jwks_type, dict(iss.jwks_headers)
                kids = tuple(k.get("kid", "") for k in iss.jwks.get("keys", []))
            else:
                body, ctype, headers, kids = b"not found\n", "text/plain", {}, ()
            iss.hits.append((time.time(), path, kids))
        self.send_response(200 if ctype != "text/plain" else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):  # a slow server: one byte at a time, each in time for a per-read timeout
            try:
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(drip)


class IssuerServer:
    def __init__(self, certs: TestCA, path: str = "/cluster-a", port: Optional[int] = None) -> None:
        self.certs = certs
        self.path = path
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_type = "application/jwk-set+json"
        self.jwks_headers: dict[str, str] = {}
        self.discovery_type = "application/json"
        self.discovery_issuer: Optional[str] = None
        self.hits: list[tuple[float, str, tuple[str, ...]]] = []
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.drip = 0.0  # seconds between the bytes of an answer's body (0: all at once)
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    def publish(
        self,
        jwks: dict[str, Any],
        cache_control: Optional[str] = None,
        last_modified: bool = False,
        age: Optional[int] = None,
    ) -> None:
        """Serve this JWKS from now on, with these caching headers (`age`: as a CDN in front of it would add)."""
        headers = {}
        if cache_control:
            headers["Cache-Control"] = cache_control
        if last_modified:
            headers["Last-Modified"] = format_datetime(datetime.datetime.now(datetime.timezone.utc), usegmt=True)
        if age is not None:
            headers["Age"] = str(age)
        with self.lock:
            self.jwks, self.jwks_headers = jwks, headers

    def jwks_hits(self) -> list[tuple[float, tuple[str, ...]]]:
        with self.lock:
            return [(t, kids) for t, p, kids in self.hits if p.endswith("/jwks")]

    def start(self) -> IssuerServer:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certs.cert_file), str(self.certs.key_file))
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.daemon_threads = True
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        httpd.issuer = self  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._httpd = httpd
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class ConnectProxy:
    """An HTTP proxy that only tunnels CONNECT, and remembers where to."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tunnels: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(8)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ")[:2]
            if method != b"CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target.decode())
            host, port = target.decode().rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                socks = [conn, upstream]
                while True:
                    ready, _, _ = select.select(socks, [], [], 5)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        (upstream if s is conn else conn).sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
