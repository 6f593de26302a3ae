"""Whether the published key may start signing, as seen by verifiers outside the cluster: pure, `now` passed in.

Two decisions, each from what the callers read (gates.py does the reading, the logging and the book):
- which issuer to check: `oidc-issuer-url` if set, else the `issuer` of the cluster's own
  /.well-known/openid-configuration (so a `--service-account-issuer` given anywhere, a K3s config file or the
  installer's INSTALL_K3S_EXEC, counts). `verify-issuer: auto` checks it when it is an https URL that is not an
  in-cluster default; `true` always; `false` never. When the cluster's issuer cannot be read, promote waits.
- whether the public issuer's JWKS lets the new key sign: it must list the kid, and a verifier's cached copy
  without it must have expired: the JWKS's full Cache-Control max-age, counted from when k3srotd first saw the kid
  listed, or from its Last-Modified if later (never shortened by an Age header: a verifier may ignore Age).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from typing import Optional

from k3srotd.core.model import ts

DISCOVERY_PATH = "/.well-known/openid-configuration"
IN_CLUSTER_HOSTS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")


def is_in_cluster_default(url: str) -> bool:
    """https://kubernetes.default.svc and the like: an issuer no verifier outside the cluster can reach."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in IN_CLUSTER_HOSTS or host.startswith("kubernetes.default.svc.")


@dataclasses.dataclass(frozen=True)
class ClusterIssuer:
    """What the cluster says its issuer is. `url` None with `error` None: it serves no discovery document
    (kube-apiserver installs one only for an https issuer)."""

    url: Optional[str] = None
    error: Optional[str] = None
    source: str = "the cluster's /.well-known/openid-configuration"


@dataclasses.dataclass(frozen=True)
class Choice:
    url: Optional[str]  # the public issuer to check; None: none is checked (see `why`) or it is unknown (`wait`)
    why: str = ""  # why none is checked
    wait: str = ""  # fail closed: why promote must wait although no issuer can be checked


def choose(verify: str, override: str, cluster: ClusterIssuer) -> Choice:
    """Which public issuer promote waits for. verify: auto | true | false; override: oidc-issuer-url or ''."""
    if verify == "false":
        return Choice(None, "verify-issuer is false")
    if not override and cluster.error is not None:
        return Choice(
            None,
            wait=f"the cluster's issuer cannot be read ({cluster.error}); set oidc-issuer-url to "
            "name the public issuer, or verify-issuer: false if no verifier outside the cluster is used",
        )
    url = override or cluster.url or ""
    src = "oidc-issuer-url" if override else cluster.source
    if verify == "true":
        if not url.startswith("https://"):
            what = f"is {url!r}" if url else "serves no discovery document (its issuer is not an https URL)"
            return Choice(
                None,
                wait=f"verify-issuer is true, but {src} {what}; set oidc-issuer-url or "
                "service-account-issuer to an https URL",
            )
        return Choice(url)
    if not url:
        return Choice(
            None,
            f"{src} serves no discovery document: the cluster's issuer is not an https URL, which "
            "no verifier outside the cluster can use",
        )
    if not url.startswith("https://") or is_in_cluster_default(url):
        return Choice(None, f"{url} (from {src}) is an in-cluster issuer, not a public one")
    return Choice(url)


@dataclasses.dataclass(frozen=True)
class Listing:
    """One reading of the public issuer's JWKS, as far as the verdict needs it."""

    kids: tuple[str, ...]
    fetched_at: dt.datetime  # when that copy came from the network
    max_age: float  # its Cache-Control max-age, seconds (0: not cacheable)
    last_modified: Optional[dt.datetime] = None
    kept_until: Optional[dt.datetime] = None  # this process's cache keeps it until then (None: not cached)


@dataclasses.dataclass(frozen=True)
class Verdict:
    detail: Optional[str]  # None: promote may go; else what is awaited, one line
    kind: str = ""  # unreachable | unlisted | cached | unknown-issuer
    listed_since: Optional[dt.datetime] = None  # to remember: the hold counts from it


def jwks_verdict(
    url: str,
    kid: str,
    listing: Optional[Listing],
    error: Optional[str],
    listed_since: Optional[dt.datetime],
    now: dt.datetime,
) -> Verdict:
    """May `kid` sign? `listed_since`: when an earlier check first saw it listed (None: not yet)."""
    if listing is None:
        return Verdict(f"the public issuer {url} cannot be checked: {error} (last tried {ts(now)})", "unreachable")
    fetched = f"last fetched {ts(listing.fetched_at)}"
    if listing.kept_until is not None:
        fetched += f", kept until {ts(listing.kept_until)} as its Cache-Control allows"
    if kid not in listing.kids:
        return Verdict(f"the public issuer {url} does not list kid {kid} yet ({fetched})", "unlisted")
    seen = min(listed_since or listing.fetched_at, now)
    modified = min(listing.last_modified, now) if listing.last_modified is not None else seen
    since = max(seen, modified)
    hold_until = since + dt.timedelta(seconds=listing.max_age)
    if now < hold_until:
        return Verdict(
            f"the public issuer {url} lists kid {kid} since {ts(since)}, but verifiers may keep its JWKS without it "
            f"until {ts(hold_until)} (Cache-Control max-age={listing.max_age:g}s)",
            "cached",
            seen,
        )
    return Verdict(None, "", seen)
