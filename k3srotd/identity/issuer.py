"""The public OIDC issuer as a verifier such as Microsoft Entra sees it: the discovery document, then its JWKS.

Plain urllib, so the standard proxy variables apply (`https_proxy`, `no_proxy`, ...). TLS is verified against
OpenSSL's default trust store, the system's CAs; the standard `SSL_CERT_FILE` / `SSL_CERT_DIR` variables point
it elsewhere. Every request has a timeout, follows redirects to https URLs only, reads at most 1 MiB and must
come with a JSON content type. Answers are cached in this process for as long as their Cache-Control max-age
(less their Age) allows, as a caching verifier would keep them; `no-store`, `no-cache` or no max-age: not cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Optional

from k3srotd import __version__
from k3srotd.identity.gates import IN_CLUSTER_HOSTS, is_in_cluster_default  # noqa: F401 - the rule lives where status reads it

TIMEOUT = 10.0
MAX_BYTES = 1 << 20
DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TYPES = ("application/json",)
JWKS_TYPES = ("application/json", "application/jwk-set+json")


class IssuerError(Exception):
    """The issuer cannot be read, or what it serves is unusable. str() is one line."""


@dataclasses.dataclass(frozen=True)
class Response:
    url: str
    doc: Any
    fetched_at: dt.datetime  # when it came from the network
    max_age: float  # seconds a cache may keep it; 0: not cacheable
    last_modified: Optional[dt.datetime]
    cached: bool = False  # served from this process's cache

    @property
    def fresh_until(self) -> dt.datetime:
        return self.fetched_at + dt.timedelta(seconds=self.max_age)


@dataclasses.dataclass(frozen=True)
class PublicKeys:
    issuer: str
    discovery: Response
    jwks: Response
    kids: tuple[str, ...]


_cache: dict[str, tuple[float, Response]] = {}


def clear_cache() -> None:
    _cache.clear()


def cache_seconds(cache_control: str, age: str = "") -> float:
    """How long a private cache may keep an answer with these headers (RFC 9111: max-age less Age)."""
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    try:
        max_age = float(int(directives["max-age"]))
    except (KeyError, ValueError):
        return 0.0
    with contextlib.suppress(ValueError):
        max_age -= max(0, int(age))
    return max(0.0, max_age)


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Optional[urllib.request.Request]:
        if urllib.parse.urlsplit(newurl).scheme != "https":
            raise IssuerError(f"{req.full_url}: redirects to {newurl}, which is not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """Built per request, so proxy variables are read as they are now. build_opener adds the ProxyHandler."""
    ctx = ssl.create_default_context()  # OpenSSL's default paths: the system CAs, or SSL_CERT_FILE/SSL_CERT_DIR
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _HttpsOnlyRedirects())


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
        with _opener().open(req, timeout=timeout) as resp:
            headers = resp.headers
            body = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise IssuerError(f"{url}: {_why(e, timeout)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise IssuerError(f"{url}: {_why(e, timeout)}") from None
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
    max_age = cache_seconds(headers.get("Cache-Control", ""), headers.get("Age", ""))
    got = Response(url, doc, now, max_age, last_modified)
    if max_age > 0:
        _cache[url] = (monotonic() + max_age, got)
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
