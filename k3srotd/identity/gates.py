"""Workload-identity gates: what the engine checks around steps so that tokens keep verifying (Entra included).

- step_checks(): objects with before_restart(step, target) and after_restart(step, target); the latter raises
  steps.VerifyFailed to fail the step (which is then rolled back). The token probe (probe.py) and the token
  counter readings (tokenmetrics.py) taken just before and after each restart.
- promote_gate(): None when the new key may start signing, else a one-line description of what is awaited. The
  verdict is promote.py's (which issuer, the JWKS hold); this module reads the cluster and the issuer for it.
- prune_gate(): None when the retired keys may go, else why not (a prune --force overrides it). The verdict is
  core/prune.py's; this module gathers its evidence: the service-account-token Secrets (evidence.py), the stale
  token counter (tokenmetrics.py) and, on a cluster, the other servers' answers.

What a gate waits for, and since when, is kept in <state-dir>/gates.json for `status`; journald hears it once when
the wait starts or its cause changes, and when it ends. report.py shows the same in status and doctor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from k3srotd.config import Config
from k3srotd.core import prune as core_prune
from k3srotd.core.durations import format_duration
from k3srotd.core.keys import KeyFile
from k3srotd.core.model import parse_ts, ts
from k3srotd.core.ports import Log
from k3srotd.errors import ConfigError, K3srotdError
from k3srotd.identity import promote
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import JsonStore, as_is, json_object

BOOK = "gates.json"


class StepCheck(Protocol):
    def before_restart(self, step: str, target: KeyFile) -> None: ...

    def after_restart(self, step: str, target: KeyFile) -> None: ...


# --- which issuer
def cluster_issuer(cfg: Config, k3s: K3s) -> promote.ClusterIssuer:
    """The cluster's own issuer, from its discovery document through the API (any way K3s was configured)."""
    if not cfg.verify_api:  # no API calls at all: K3s's config file is all there is
        return promote.ClusterIssuer(cfg.k3s.issuer, None, f"K3s's config ({cfg.k3s_config}; verify-api is false)")
    try:
        status, doc = k3s.api().call("GET", promote.DISCOVERY_PATH)
    except (APIError, K3srotdError) as e:
        return promote.ClusterIssuer(None, str(e))
    if status == 404:  # kube-apiserver installs it only for an https issuer
        return promote.ClusterIssuer(None, None)
    url = doc.get("issuer") if isinstance(doc, dict) else None
    if status != 200 or not isinstance(url, str):
        return promote.ClusterIssuer(None, f"{cfg.k3s_server_url}{promote.DISCOVERY_PATH}: HTTP {status}")
    return promote.ClusterIssuer(url)


def issuer_choice(cfg: Config, k3s: K3s) -> promote.Choice:
    if cfg.verify_issuer == "false":
        return promote.choose("false", "", promote.ClusterIssuer())
    cluster = promote.ClusterIssuer() if cfg.oidc_issuer_url else cluster_issuer(cfg, k3s)
    return promote.choose(cfg.verify_issuer, cfg.oidc_issuer_url, cluster)


def require_usable_issuer(cfg: Config, k3s: K3s) -> None:
    """verify-issuer true and the issuer known to be unusable: a config error before anything changes. (An issuer
    that cannot be read now is not: promote waits for it.)"""
    if cfg.verify_issuer != "true":
        return
    ch = issuer_choice(cfg, k3s)
    if ch.wait and "cannot be read" not in ch.wait:
        src = cfg.sources[-1] if cfg.sources else "config"
        raise ConfigError(f"{src}: key 'verify-issuer': {ch.wait}")


# --- <state-dir>/gates.json
class Book:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / BOOK
        self.file: JsonStore[dict[str, Any]] = JsonStore(self.path, json_object, as_is)

    def load(self) -> dict[str, Any]:
        return self.file.load_or(dict)

    def save(self, doc: dict[str, Any]) -> None:
        self.file.save(doc)

    def put(self, gate: str, entry: Optional[dict[str, Any]]) -> None:
        doc = self.load()
        if entry is None and gate not in doc:
            return
        if entry is None:
            doc.pop(gate)
        else:
            doc[gate] = entry
        self.save(doc)


# --- promote
def _listing(url: str, now: dt.datetime) -> tuple[Optional[promote.Listing], Optional[str]]:
    from k3srotd.identity import issuer  # imported where used: `status` needs no HTTPS client

    try:
        pub = issuer.public_keys(url, now)
    except issuer.IssuerError as e:
        return None, str(e)
    jw = pub.jwks
    kept = jw.fresh_until if jw.cached else None
    return promote.Listing(pub.kids, jw.fetched_at, jw.max_age, jw.last_modified, kept), None


def _promote_verdict(
    cfg: Config, k3s: K3s, kid: str, entry: dict[str, Any], now: dt.datetime
) -> tuple[str, Optional[promote.Verdict]]:
    """(the issuer named in logs, the verdict), or ("", None) when no issuer is checked."""
    ch = issuer_choice(cfg, k3s)
    if ch.url is None and not ch.wait:
        return "", None
    if ch.url is None:
        return "(unknown)", promote.Verdict(f"{ch.wait} (last tried {ts(now)})", "unknown-issuer")
    listing, error = _listing(ch.url, now)
    return ch.url, promote.jwks_verdict(ch.url, kid, listing, error, parse_ts(entry.get("listed_since")), now)


def promote_gate(cfg: Config, k3s: K3s, log: Log, new_kid: str, now: dt.datetime) -> Optional[str]:
    book = Book(cfg.state_dir)
    entry = book.load().get("promote") or {}
    if entry.get("kid") != new_kid:
        entry = {}
    url, v = _promote_verdict(cfg, k3s, new_kid, entry, now)
    if v is None or v.detail is None:
        if entry and v is not None:
            log.info(
                "promote.gate-open",
                msg=f"the public issuer {url} lists {new_kid}; promote may go (awaited since {entry.get('since')})",
                kid=new_kid,
                issuer=url,
            )
        book.put("promote", None)
        return None
    detail, kind = v.detail, v.kind
    since = entry.get("since") or ts(now)
    if entry.get("kind") != kind:
        log.warning(
            "promote.awaiting",
            msg=f"promote of {new_kid} waits (since {since}): {detail}",
            kid=new_kid,
            issuer=url,
            since=since,
        )
    warned = bool(entry.get("warned"))
    waited = now - (parse_ts(since) or now)
    if not warned and waited >= cfg.issuer_wait_warn:
        # loud once per wait (daemon and rotate-now alike, counted from the book across runs); it keeps waiting:
        # a signer the public issuer does not list breaks every workload's identity
        warned = True
        log.warning(
            "promote.waiting",
            msg=f"promote of {new_kid} has waited {format_duration(waited)} (issuer-wait-warn "
            f"{format_duration(cfg.issuer_wait_warn)}) for: {detail}; still waiting. The new key stays published and "
            "the old one signs; fix the issuer, or set verify-issuer: false to promote without it",
            kid=new_kid,
            issuer=url,
            since=since,
        )
    new = {"kid": new_kid, "issuer": url, "since": since, "checked_at": ts(now), "kind": kind, "detail": detail}
    if v.listed_since is not None:
        new["listed_since"] = v.listed_since.isoformat()  # full precision: the hold is counted from it
    book.put("promote", {**new, "warned": warned})
    return f"{detail}; awaited since {since}"


# --- prune
def bound(cfg: Config) -> core_prune.Bound:
    k = cfg.k3s
    return core_prune.bound_tokens(k.extend_token_expiration, k.max_token_expiration, cfg.grace_period)


def counters_verdict(cfg: Config, k3s: K3s, drop: Sequence[str], now: dt.datetime, save: bool) -> Optional[str]:
    """The stale-token counter's growth during the last grace-period on this kube-apiserver, or why it cannot
    tell; None: no growth. The reading is kept (save) so the next answer can tell more."""
    from k3srotd.identity import tokenmetrics  # imported where used: `status` needs neither

    try:
        reading = tokenmetrics.read(k3s.api(), now)
    except (tokenmetrics.MetricsError, K3srotdError) as e:
        return (
            f"the apiserver's /metrics cannot be read ({e}), so k3srotd cannot tell whether tokens signed by "
            f"{', '.join(drop) or 'the retired keys'} are still in use"
        )
    history = tokenmetrics.History(cfg.state_dir)
    past = history.load()
    if save:
        history.add(reading, keep_after=now - cfg.grace_period)
    return tokenmetrics.verdict(past, reading, cfg.grace_period, tokenmetrics.GATING)


def token_counters_verdict(cfg: Config, k3s: K3s, now: dt.datetime) -> Optional[str]:
    """This kube-apiserver's answer to another server's token check: None when the stale-token counter did not
    grow during the last grace-period, else what grew. The asking server asks only where its settings need it
    (core/prune.py), so the answer does not depend on this server's. The reading is kept."""
    if not (cfg.prune_token_metrics and cfg.verify_api):
        return None
    return counters_verdict(cfg, k3s, (), now, save=True)


def _keep_reading(cfg: Config, k3s: K3s, now: dt.datetime) -> None:
    """The legacy counters no longer gate, but are still reported: keep a reading for status and doctor."""
    from k3srotd.identity import tokenmetrics

    with contextlib.suppress(tokenmetrics.MetricsError, K3srotdError, OSError):
        record_token_metrics(cfg, k3s, now)


def legacy_evidence(cfg: Config, k3s: K3s) -> core_prune.Evidence:
    """The Secret scan, as core/prune.py's Evidence (no counters)."""
    from k3srotd.identity import evidence

    if not cfg.verify_api:
        return core_prune.Evidence()
    try:
        return core_prune.Evidence(legacy=evidence.by_kid(evidence.scan(k3s.api())))
    except (evidence.EvidenceError, K3srotdError) as e:
        return core_prune.Evidence(legacy_error=str(e))


def prune_evidence(
    cfg: Config, k3s: K3s, drop: Sequence[str], now: dt.datetime, others: Optional[Callable[[], Optional[str]]]
) -> core_prune.Evidence:
    ev = legacy_evidence(cfg, k3s)
    counters = other = None
    if cfg.prune_token_metrics and cfg.verify_api:
        if bound(cfg) == "counter":
            counters = counters_verdict(cfg, k3s, drop, now, save=True)
            if counters is None and others is not None:
                other = others()
        else:
            _keep_reading(cfg, k3s, now)
    return core_prune.Evidence(ev.legacy, ev.legacy_error, counters, other)


def prune_gate(
    cfg: Config,
    k3s: K3s,
    log: Log,
    drop: Sequence[str],
    now: dt.datetime,
    others: Optional[Callable[[], Optional[str]]] = None,
) -> Optional[str]:
    """None when the keys may go; else why not. `others` (multi-server): the other kube-apiservers' answers."""
    book = Book(cfg.state_dir)
    v = core_prune.verdict(drop, bound(cfg), cfg.grace_period, prune_evidence(cfg, k3s, drop, now, others))
    entry = book.load().get("prune") or {}
    if v.go:
        if entry:
            log.info("prune.gate-open", msg=f"prune of {', '.join(drop)} may go (delayed since {entry['since']})")
        book.put("prune", None)
        return None
    since = entry.get("since") or ts(now)
    if entry.get("detail") != v.reason:
        fields: dict[str, Any] = {"kids": list(drop), "since": since}
        if v.secrets:
            fields.update(secrets=list(v.secrets), reissue=core_prune.REISSUE)
        log.warning("prune.delayed", msg=f"prune of {', '.join(drop)} delayed: {v.reason}", **fields)
    keep = {"since": since, "checked_at": ts(now), "kids": list(drop), "detail": v.reason, "secrets": list(v.secrets)}
    book.put("prune", keep)
    return v.reason


def token_lifetime_warning(cfg: Config, step: str) -> Optional[str]:
    """What a step that drops keys must say about bound tokens (only when it is true): with no max expiration,
    nothing bounds them and no counter says which key signed them."""
    if step != "prune" or bound(cfg) != "unbounded":
        return None
    hint = core_prune.bound_hint("unbounded", cfg.grace_period)
    return (
        "prune: bound tokens signed by the pruned keys may still be in use: K3s sets no "
        f"service-account-max-token-expiration, so nothing bounds their lifetime; {hint}"
    )


# --- around restarts
class MetricsReader:
    """Reads the token counters just before a restart (which sets them to 0) and just after it."""

    def __init__(self, cfg: Config, k3s: K3s, log: Log, now: Callable[[], dt.datetime]) -> None:
        self.cfg, self.k3s, self.log, self.now = cfg, k3s, log, now

    def _read(self, step: str) -> None:
        from k3srotd.identity import tokenmetrics  # imported where used: `status` needs neither

        try:
            record_token_metrics(self.cfg, self.k3s, self.now())
        except (tokenmetrics.MetricsError, K3srotdError, OSError) as e:
            self.log.debug("token-metrics", msg=f"{step}: token counters not read: {e}", step=step)

    def before_restart(self, step: str, target: KeyFile) -> None:
        self._read(step)

    def after_restart(self, step: str, target: KeyFile) -> None:
        self._read(step)


def record_token_metrics(cfg: Config, k3s: K3s, now: dt.datetime) -> None:
    """Keep one reading of the token counters (the daemon may call this now and then for finer history)."""
    from k3srotd.identity import tokenmetrics  # imported where used: `status` needs neither

    reading = tokenmetrics.read(k3s.api(), now)
    tokenmetrics.History(cfg.state_dir).add(reading, keep_after=now - cfg.grace_period)


def step_checks(cfg: Config, k3s: K3s, log: Log, now: Optional[Callable[[], dt.datetime]] = None) -> list[StepCheck]:
    """`now`: the engine's clock (default: the wall clock, through core.clock)."""
    if now is None:
        from k3srotd.core.clock import Clock

        now = Clock().now
    checks: list[StepCheck] = []
    if cfg.verify_api and cfg.verify_tokens:
        from k3srotd.identity.probe import TokenProbe

        checks.append(TokenProbe(cfg, k3s, log))
    if cfg.verify_api and cfg.prune_token_metrics:
        checks.append(MetricsReader(cfg, k3s, log, now))
    return checks
