"""The public OIDC issuer as a verifier such as Microsoft Entra sees it: the discovery document, then its JWKS.

Plain urllib, so the standard proxy variables apply (`https_proxy`, `no_proxy`, ...). TLS is verified against
OpenSSL's default trust store, the system's CAs; the standard `SSL_CERT_FILE` / `SSL_CERT_DIR` variables point
it elsewhere. Every fetch has a total deadline (connect, redirects and every byte of the answer together: a
server dripping one byte at a time cannot stretch it), follows redirects only to the same scheme and host, reads
at most 1 MiB and must come with a JSON content type. Answers are cached in this process for as long as their
Cache-Control max-age (less their Age) allows, as a caching verifier would keep them; `no-store`, `no-cache` or
no max-age: not cached. The promote hold (promote.py) counts the full max-age, never less because of Age.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import functools
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Optional

from k3srotd import __version__

TIMEOUT = 10.0
MAX_BYTES = 1 << 20
DISCOVERY_PATH = "/.well-known/openid-configuration"  # as promote.DISCOVERY_PATH (no import: `status` stays light)
DISCOVERY_TYPES = ("application/json",)
JWKS_TYPES = ("application/json", "application/jwk-set+json")


class IssuerError(Exception):
    """The issuer cannot be read, or what it serves is unusable. str() is one line."""


@dataclasses.dataclass(frozen=True)
class Response:
    url: str
    doc: Any
    fetched_at: dt.datetime  # when it came from the network
    max_age: float  # Cache-Control max-age in seconds, as a verifier may keep it from its own fetch; 0: not cacheable
    last_modified: Optional[dt.datetime]
    cached: bool = False  # served from this process's cache
    age: float = 0.0  # the Age header: how long a shared cache held it already

    @property
    def fresh_until(self) -> dt.datetime:
        """Until when this process keeps it (max-age less Age, RFC 9111)."""
        return self.fetched_at + dt.timedelta(seconds=max(0.0, self.max_age - self.age))


@dataclasses.dataclass(frozen=True)
class PublicKeys:
    issuer: str
    discovery: Response
    jwks: Response
    kids: tuple[str, ...]


_cache: dict[str, tuple[float, Response]] = {}


def clear_cache() -> None:
    _cache.clear()


def _directives(cache_control: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            out[name.lower()] = value.strip().strip('"')
    return out


def max_age(cache_control: str) -> float:
    """The max-age a verifier may keep an answer for, counted from its own fetch; 0 when it may not keep it."""
    directives = _directives(cache_control)
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    try:
        return max(0.0, float(int(directives["max-age"])))
    except (KeyError, ValueError):
        return 0.0


def _age(age: str) -> float:
    try:
        return max(0.0, float(int(age)))
    except ValueError:
        return 0.0


def cache_seconds(cache_control: str, age: str = "") -> float:
    """How long this process keeps an answer with these headers (RFC 9111: max-age less Age)."""
    return max(0.0, max_age(cache_control) - _age(age))


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect may change the path only: the same scheme, host and port, so a verifier's URL is what is checked."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Optional[urllib.request.Request]:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new.scheme != "https":
            raise IssuerError(f"{req.full_url}: redirects to {newurl}, which is not https")
        if (new.hostname, new.port) != (old.hostname, old.port):
            raise IssuerError(f"{req.full_url}: redirects to {newurl}, another host; only the same host is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """Cuts every connection of one fetch when its total time is up: a blocked read then fails at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socks: list[tuple[socket.socket, int]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def add(self, sock: socket.socket, replaces: int = -1) -> None:
        """`replaces`: the fd of the TCP socket this TLS socket took over (its entry goes)."""
        with self._lock:
            self._socks = [(s, fd) for s, fd in self._socks if fd != replaces]
            self._socks.append((sock, -1 if replaces != -1 else sock.fileno()))
            if self.expired:
                self._shut(sock, -1)

    @staticmethod
    def _shut(sock: socket.socket, fd: int) -> None:
        with contextlib.suppress(OSError):
            if sock.fileno() != -1:
                sock.shutdown(socket.SHUT_RDWR)
            elif fd != -1:  # a TCP socket the TLS wrapper detached mid-handshake: reach it through its fd
                with socket.socket(fileno=os.dup(fd)) as dup:
                    dup.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            for sock, fd in self._socks:
                self._shut(sock, fd)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._timer.cancel()
            self._socks.clear()  # closed by now: their numbers may be reused


class _Connection(http.client.HTTPSConnection):
    """Hands its sockets to the deadline as soon as they exist: the proxy tunnel and the TLS handshake count too."""

    def __init__(self, *args: Any, deadline: _Deadline, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._deadline = deadline
        create = self._create_connection  # type: ignore[has-type]

        def connect(*a: Any, **k: Any) -> socket.socket:
            sock: socket.socket = create(*a, **k)
            deadline.add(sock)
            self._tcp_fd = sock.fileno()
            return sock

        self._create_connection = connect
        self._tcp_fd = -1

    def connect(self) -> None:
        super().connect()
        self._deadline.add(self.sock, replaces=self._tcp_fd)  # the TLS socket that took the TCP one over


class _Handler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, deadline: _Deadline) -> None:
        super().__init__(context=context)
        self._ctx, self._deadline = context, deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_Connection, deadline=self._deadline), req, context=self._ctx)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """Built per request, so proxy variables are read as they are now. build_opener adds the ProxyHandler."""
    ctx = ssl.create_default_context()  # OpenSSL's default paths: the system CAs, or SSL_CERT_FILE/SSL_CERT_DIR
    return urllib.request.build_opener(_Handler(ctx, deadline), _SameOriginRedirects())


def _why(e: BaseException, timeout: float) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else OSError(str(e.reason))
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({e.verify_message}); add its CA to the system's trust store"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


def fetch_json(
    url: str,
    media_types: tuple[str, ...],
    now: dt.datetime,
    timeout: float = TIMEOUT,
    monotonic: Callable[[], float] = time.monotonic,
) -> Response:
    hit = _cache.get(url)
    if hit is not None and hit[0] > monotonic():
        return dataclasses.replace(hit[1], cached=True)
    if urllib.parse.urlsplit(url).scheme != "https":
        raise IssuerError(f"{url}: is not an https URL")
    req = urllib.request.Request(  # noqa: S310 (https only: checked above, and in redirects)
        url, headers={"Accept": ", ".join(media_types), "User-Agent": f"k3srotd/{__version__}"}
    )
    try:
        with _Deadline(timeout) as deadline, _opener(deadline).open(req, timeout=timeout) as resp:
            headers = resp.headers
            body = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise IssuerError(f"{url}: {_why(e, timeout)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        why = f"no complete answer within {timeout:g}s" if deadline.expired else _why(e, timeout)
        raise IssuerError(f"{url}: {why}") from None
    if deadline.expired:  # the cut can end a read early without an error: what came is not the whole answer
        raise IssuerError(f"{url}: no complete answer within {timeout:g}s")
    if len(body) > MAX_BYTES:
        raise IssuerError(f"{url}: answers with more than {MAX_BYTES} bytes")
    ctype = headers.get("Content-Type", "")
    if _media_type(ctype) not in media_types:
        raise IssuerError(f"{url}: is served as {ctype or 'no content type'}, expected {' or '.join(media_types)}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise IssuerError(f"{url}: is not valid JSON") from None
    last_modified = None
    if headers.get("Last-Modified"):
        try:
            last_modified = email.utils.parsedate_to_datetime(headers["Last-Modified"])
        except (TypeError, ValueError, IndexError):
            last_modified = None
        if last_modified is not None and last_modified.tzinfo is None:
            last_modified = last_modified.replace(tzinfo=dt.timezone.utc)
    cc = headers.get("Cache-Control", "")
    got = Response(url, doc, now, max_age(cc), last_modified, age=_age(headers.get("Age", "")))
    keep = cache_seconds(cc, headers.get("Age", ""))
    if keep > 0:
        _cache[url] = (monotonic() + keep, got)
    else:
        _cache.pop(url, None)
    return got


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


def jwks_kids(doc: Any, url: str) -> tuple[str, ...]:
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) and isinstance(k.get("kid"), str) for k in keys):
        raise IssuerError(f"{url}: is not a JWK set (a `keys` list of keys with a `kid`)")
    return tuple(k["kid"] for k in keys)


def public_keys(issuer: str, now: dt.datetime, timeout: float = TIMEOUT) -> PublicKeys:
    """The issuer's discovery document (which must name this issuer) and the JWKS its jwks_uri serves."""
    disc = fetch_json(discovery_url(issuer), DISCOVERY_TYPES, now, timeout)
    doc = disc.doc if isinstance(disc.doc, dict) else {}
    if doc.get("issuer") != issuer:
        raise IssuerError(
            f"{disc.url}: names the issuer {doc.get('issuer')!r}, not {issuer!r}; verifiers reject it "
            "(it must match service-account-issuer exactly)"
        )
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or urllib.parse.urlsplit(jwks_uri).scheme != "https":
        raise IssuerError(f"{disc.url}: has no https jwks_uri (got {jwks_uri!r})")
    jwks = fetch_json(jwks_uri, JWKS_TYPES, now, timeout)
    return PublicKeys(issuer, disc, jwks, jwks_kids(jwks.doc, jwks.url))
