"""The promote and prune verdicts as tables of literal cases: promote.py (which issuer, the JWKS hold) and
core/prune.py (grace, force, legacy Secrets, bound tokens, other servers). Pure: no network, no clock."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import pytest

from k3srotd.core import prune
from k3srotd.identity import promote

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
PUBLIC = "https://oidc.example.net/tenant/cluster"
H = dt.timedelta(hours=1)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# --- which issuer
UNREADABLE = promote.ClusterIssuer(None, "connection refused")
NO_DISCOVERY = promote.ClusterIssuer(None, None)


@pytest.mark.parametrize(
    ("verify", "override", "cluster", "url", "waits"),
    [
        ("auto", "", promote.ClusterIssuer(PUBLIC), PUBLIC, False),  # however K3s got it: flag, config, drop-in
        ("auto", "", promote.ClusterIssuer("https://kubernetes.default.svc.cluster.local"), None, False),
        ("auto", "", promote.ClusterIssuer("https://kubernetes.default.svc"), None, False),
        ("auto", "", NO_DISCOVERY, None, False),  # a non-https issuer: kube-apiserver serves no discovery
        ("auto", "", UNREADABLE, None, True),  # fail closed
        ("auto", PUBLIC, UNREADABLE, PUBLIC, False),  # oidc-issuer-url overrides; the cluster is not needed
        ("auto", PUBLIC, promote.ClusterIssuer("https://kubernetes.default.svc"), PUBLIC, False),
        ("false", PUBLIC, promote.ClusterIssuer(PUBLIC), None, False),
        ("false", "", UNREADABLE, None, False),
        ("true", "", promote.ClusterIssuer("https://kubernetes.default.svc"), "https://kubernetes.default.svc", False),
        ("true", "", NO_DISCOVERY, None, True),
        ("true", "", promote.ClusterIssuer("k3s"), None, True),
        ("true", "", UNREADABLE, None, True),
        ("true", PUBLIC, NO_DISCOVERY, PUBLIC, False),
    ],
)
def test_which_issuer_is_checked(
    verify: str, override: str, cluster: promote.ClusterIssuer, url: Optional[str], waits: bool
) -> None:
    ch = promote.choose(verify, override, cluster)
    assert ch.url == url
    assert bool(ch.wait) is waits
    assert bool(ch.why) is (url is None and not waits)  # an unchecked issuer always says why


def test_choice_texts_say_what_to_do() -> None:
    assert "set oidc-issuer-url" in promote.choose("auto", "", UNREADABLE).wait
    assert "connection refused" in promote.choose("auto", "", UNREADABLE).wait
    assert "in-cluster issuer" in promote.choose("auto", "", promote.ClusterIssuer("https://kubernetes")).why
    assert "not an https URL" in promote.choose("true", "", NO_DISCOVERY).wait


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://kubernetes.default.svc", True),
        ("https://kubernetes.default.svc.cluster.local", True),
        ("https://kubernetes.default.svc:443/", True),
        ("https://kubernetes.default", True),
        ("https://oidc.prod-aks.azure.com/abc/", False),
        ("https://kubernetes.example.com", False),
    ],
)
def test_in_cluster_defaults(url: str, inside: bool) -> None:
    assert promote.is_in_cluster_default(url) is inside


# --- the JWKS hold
def listing(
    kids: tuple[str, ...] = ("old", "new"), fetched: float = 0, max_age: float = 600, modified: Optional[float] = None
) -> promote.Listing:
    return promote.Listing(kids, at(fetched), max_age, None if modified is None else at(modified))


@pytest.mark.parametrize(
    ("case", "seen", "now", "kind", "until"),
    [
        # first sight now: the full max-age from now
        (listing(), None, 0, "cached", at(10)),
        # seen 9 minutes ago: one more minute
        (listing(fetched=9), 0, 9, "cached", at(10)),
        (listing(fetched=10), 0, 10, "", None),
        # Last-Modified later than first sight (the document changed again): from Last-Modified
        (listing(fetched=5, modified=5), 0, 5, "cached", at(15)),
        # Last-Modified earlier than first sight: still from first sight (a verifier fetched before we saw it)
        (listing(fetched=0, modified=-60), None, 0, "cached", at(10)),
        # Last-Modified in the future (a skewed server): counted from now, never beyond
        (listing(fetched=0, modified=120), None, 0, "cached", at(10)),
        # not cacheable: no hold
        (listing(max_age=0), None, 0, "", None),
        # not listed yet
        (listing(kids=("old",)), None, 0, "unlisted", None),
    ],
)
def test_jwks_hold(
    case: promote.Listing, seen: Optional[float], now: float, kind: str, until: Optional[dt.datetime]
) -> None:
    v = promote.jwks_verdict(PUBLIC, "new", case, None, None if seen is None else at(seen), at(now))
    assert v.kind == kind
    assert (v.detail is None) is (kind == "")
    if until is not None:
        assert v.detail is not None and f"until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}" in v.detail


def test_jwks_hold_remembers_first_sight_and_unreachable_says_why() -> None:
    assert promote.jwks_verdict(PUBLIC, "new", listing(fetched=3), None, None, at(4)).listed_since == at(3)
    assert promote.jwks_verdict(PUBLIC, "new", listing(fetched=3), None, at(1), at(4)).listed_since == at(1)
    v = promote.jwks_verdict(PUBLIC, "new", None, "HTTP 503 Service Unavailable", None, at(0))
    assert v.kind == "unreachable" and v.detail is not None and "HTTP 503" in v.detail


# --- the grace
RETIRED = [("k1", at(0)), ("k2", at(30)), ("k3", at(90))]


@pytest.mark.parametrize(
    ("now", "force", "due"),
    [
        (59, False, []),
        (60, False, ["k1"]),
        (90, False, ["k1", "k2"]),
        (150, False, ["k1", "k2", "k3"]),
        (0, True, ["k1", "k2", "k3"]),
    ],
)
def test_grace(now: float, force: bool, due: list[str]) -> None:
    assert prune.due(RETIRED, H, at(now), force) == due


def test_first_due_and_the_refusal() -> None:
    assert prune.first_due(RETIRED, H) == at(60)
    assert prune.first_due([], H) is None
    text = prune.grace_refusal("/k3s/server/tls/service.key", RETIRED, H)
    assert "the first, k1, retired at 2030-01-01T12:00:00Z, may be pruned from 2030-01-01T13:00:00Z" in text
    assert "grace-period (1h)" in text and "prune --force" in text


# --- bound tokens
@pytest.mark.parametrize(
    ("extend", "max_exp", "grace", "bound"),
    [
        (False, H, 24 * H, "proof"),
        (False, 24 * H - dt.timedelta(minutes=1), 24 * H, "proof"),
        (False, 24 * H, 24 * H, "counter"),  # the API accepts a token 60 s past its exp: past the grace-period
        (False, 25 * H, 24 * H, "counter"),  # config refuses this; the verdict stays safe anyway
        (None, H, 24 * H, "counter"),  # upstream's default: extend=true
        (True, H, 24 * H, "counter"),
        (None, None, 24 * H, "unbounded"),  # K3s's default
        (False, None, 24 * H, "unbounded"),
    ],
)
def test_bound_tokens(extend: Optional[bool], max_exp: Optional[dt.timedelta], grace: dt.timedelta, bound: str) -> None:
    assert prune.bound_tokens(extend, max_exp, grace) == bound


def test_bound_hints_are_settings_kube_apiserver_accepts() -> None:
    assert prune.bound_hint("proof", H) == ""
    counter = prune.bound_hint("counter", 24 * H)
    assert "extend-token-expiration=false, with service-account-max-token-expiration at most 23h 59m" in counter
    assert "max-token-expiration (1h to 23h 59m)" in prune.bound_hint("unbounded", 24 * H)
    short = prune.bound_hint("unbounded", dt.timedelta(seconds=5))  # never "set max-token-expiration to 5s"
    assert "raise grace-period (5s) to at least 1h 1m" in short
    assert "raise grace-period (1h) to at least 1h 1m" in prune.bound_hint("counter", H)


# --- the verdict
LEGACY = {"k1": ["default/old-token"], "k9": ["kube-system/other"]}


@pytest.mark.parametrize(
    ("bound", "evidence", "go", "words"),
    [
        ("proof", prune.Evidence(legacy={}), True, ""),
        ("proof", prune.Evidence(legacy=LEGACY), False, "default/old-token; re-issue them with `k3srotd prune"),
        ("proof", prune.Evidence(legacy={"k9": ["x/y"]}), True, ""),  # a Secret of a key not due: no hold
        ("proof", prune.Evidence(legacy_error="HTTP 403"), False, "cannot be read (HTTP 403)"),
        ("proof", prune.Evidence(legacy={}, counters="stale grew by 3"), True, ""),  # proof: counters do not gate
        ("counter", prune.Evidence(legacy={}, counters="stale grew by 3"), False, "stale grew by 3"),
        ("counter", prune.Evidence(legacy={}, counters="stale grew by 3"), False, "extend-token-expiration=false"),
        ("counter", prune.Evidence(legacy={}, others="server b: stale grew"), False, "server b: stale grew"),
        ("counter", prune.Evidence(legacy={}), True, ""),
        ("unbounded", prune.Evidence(legacy={}, counters="stale grew by 3"), True, ""),
        ("unbounded", prune.Evidence(legacy=LEGACY), False, "default/old-token"),
    ],
)
def test_prune_verdict(bound: prune.Bound, evidence: prune.Evidence, go: bool, words: str) -> None:
    v = prune.verdict(["k1", "k2"], bound, 24 * H, evidence)
    assert v.go is go
    assert words in v.reason
    assert prune.verdict(["k1", "k2"], bound, 24 * H, evidence, force=True).go  # --force skips every check


def test_prune_verdict_names_the_secrets_and_warns_when_nothing_bounds_tokens() -> None:
    v = prune.verdict(["k1"], "proof", H, prune.Evidence(legacy={"k1": ["b/two", "a/one"]}))
    assert v.secrets == ("a/one", "b/two")
    v = prune.verdict(["k1"], "unbounded", H, prune.Evidence(legacy={}))
    assert v.go and len(v.warnings) == 1 and "no service-account-max-token-expiration" in v.warnings[0]
    v = prune.verdict(["k1"], "proof", H, prune.Evidence())  # verify-api false: not read, said so
    assert v.go and "not read" in v.warnings[0]
