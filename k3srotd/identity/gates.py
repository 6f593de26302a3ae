"""Workload-identity gates: what the engine checks around steps so that tokens keep verifying (Entra included).

- step_checks(): objects with before_restart(step, target) and after_restart(step, target); the latter raises
  steps.VerifyFailed to fail the step (which is then rolled back). The token probe (probe.py) and the token
  counter readings (tokenmetrics.py) taken just before and after each restart.
- promote_gate(): None when the new key may start signing, else a one-line description of what is awaited: the
  public OIDC issuer (issuer.py) must list the new kid, and a verifier's cached copy of its JWKS without that kid
  must have expired (the JWKS's Cache-Control max-age, counted from when the kid appeared).
- prune_gate(): None when the retired keys may go, else why not (a prune --force overrides it): the apiserver's
  stale or legacy token counters grew during the last grace-period.

What a gate waits for, and since when, is kept in <state-dir>/gates.json for `status`; journald hears it once when
the wait starts or its cause changes, and when it ends. status_rows() and doctor_checks() show the same.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from k3srotd.config import Config
from k3srotd.core.durations import format_duration
from k3srotd.core.keys import KeyFile
from k3srotd.core.model import parse_ts, ts
from k3srotd.errors import ConfigError, K3srotdError
from k3srotd.node.store import ensure_private_dir, write_atomic

BOOK = "gates.json"


class StepCheck(Protocol):
    def before_restart(self, step: str, target: KeyFile) -> None: ...

    def after_restart(self, step: str, target: KeyFile) -> None: ...


# --- which issuer
IN_CLUSTER_HOSTS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")


def is_in_cluster_default(url: str) -> bool:
    """https://kubernetes.default.svc and the like: an issuer no verifier outside the cluster can reach."""
    import urllib.parse

    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in IN_CLUSTER_HOSTS or host.startswith("kubernetes.default.svc.")


def issuer_url(cfg: Config) -> Optional[str]:
    """The public issuer to check before promote, or None when it is not checked. ConfigError when verify-issuer
    is true and no usable URL is known."""
    url = cfg.oidc_issuer_url or cfg.k3s.issuer or ""
    if cfg.verify_issuer == "false":
        return None
    if cfg.verify_issuer == "true":
        src = cfg.sources[-1] if cfg.sources else "config"
        if not url:
            raise ConfigError(
                f"{src}: key 'verify-issuer' is true, but no issuer URL is known; set oidc-issuer-url, or "
                f"service-account-issuer in kube-apiserver-arg of {cfg.k3s_config}"
            )
        if not url.startswith("https://"):
            raise ConfigError(f"{src}: key 'verify-issuer' is true, but the issuer {url!r} is not an https URL")
        return url
    if not url.startswith("https://") or is_in_cluster_default(url):
        return None
    return url


def _why_unchecked(cfg: Config) -> str:
    url = cfg.oidc_issuer_url or cfg.k3s.issuer
    if cfg.verify_issuer == "false":
        return "verify-issuer is false"
    if not url:
        return "no issuer URL is known (oidc-issuer-url, K3s's service-account-issuer)"
    return f"{url} is an in-cluster issuer, not a public one"


# --- <state-dir>/gates.json
class Book:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / BOOK

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def save(self, doc: dict[str, Any]) -> None:
        ensure_private_dir(self.path.parent)
        write_atomic(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o600)

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
def _issuer_verdict(
    url: str, kid: str, entry: dict[str, Any], now: dt.datetime
) -> tuple[Optional[str], str, dict[str, Any]]:
    """(what is awaited or None, its kind, what to remember)."""
    from k3srotd.identity import issuer  # imported where used: `status` needs neither

    try:
        pub = issuer.public_keys(url, now)
    except issuer.IssuerError as e:
        return f"the public issuer {url} cannot be checked: {e} (last tried {ts(now)})", "unreachable", {}
    jw = pub.jwks
    fetched = f"last fetched {ts(jw.fetched_at)}"
    if jw.cached:
        fetched += f", kept until {ts(jw.fresh_until)} as its Cache-Control allows"
    if kid not in pub.kids:
        return f"the public issuer {url} does not list kid {kid} yet ({fetched})", "unlisted", {}
    listed = parse_ts(entry.get("listed_since")) or min(jw.last_modified or now, now)
    hold_until = listed + dt.timedelta(seconds=jw.max_age)
    if now < hold_until:
        reason = (
            f"the public issuer {url} lists kid {kid} since {ts(listed)}, but verifiers may keep its JWKS without it "
            f"until {ts(hold_until)} (Cache-Control max-age={jw.max_age:g}s)"
        )
        return reason, "cached", {"listed_since": listed.isoformat()}  # full precision: the hold is counted from it
    return None, "", {}


def promote_gate(cfg: Config, k3s: Any, log: Any, new_kid: str, now: dt.datetime) -> Optional[str]:
    url = issuer_url(cfg)
    book = Book(cfg.state_dir)
    entry = book.load().get("promote") or {}
    if entry.get("kid") != new_kid:
        entry = {}
    if url is None:
        book.put("promote", None)
        return None
    detail, kind, keep = _issuer_verdict(url, new_kid, entry, now)
    if detail is None:
        if entry:
            log.info(
                "promote.gate-open",
                msg=f"the public issuer {url} lists {new_kid}; promote may go (awaited since {entry.get('since')})",
                kid=new_kid,
                issuer=url,
            )
        book.put("promote", None)
        return None
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
    new = {
        "kid": new_kid,
        "issuer": url,
        "since": since,
        "checked_at": ts(now),
        "kind": kind,
        "detail": detail,
        "warned": warned,
    }
    book.put("promote", {**new, **keep})
    return f"{detail}; awaited since {since}"


# --- prune
def token_counters_verdict(cfg: Config, k3s: Any, now: dt.datetime) -> Optional[str]:
    """This kube-apiserver's answer: None when no watched token counter grew during the last grace-period, else
    what grew (or why it cannot tell). The reading is kept for the next answer."""
    return _counters_verdict(cfg, k3s, (), now, save=True)


def _counters_verdict(cfg: Config, k3s: Any, drop: Sequence[str], now: dt.datetime, save: bool) -> Optional[str]:
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
    return tokenmetrics.verdict(past, reading, cfg.grace_period, tokenmetrics.watched(cfg.k3s.extend_token_expiration))


def safe_on_time_hint(cfg: Config) -> str:
    return (
        "set kube-apiserver-arg service-account-extend-token-expiration=false and service-account-max-token-"
        f"expiration (at most grace-period, {format_duration(cfg.grace_period)}) in {cfg.k3s_config} to make the "
        "prune safe on time"
    )


def prune_gate(
    cfg: Config,
    k3s: Any,
    log: Any,
    drop: Sequence[str],
    now: dt.datetime,
    others: Optional[Callable[[], Optional[str]]] = None,
) -> Optional[str]:
    """None when the keys may go; else why not. `others` (multi-server): the other kube-apiservers' answers."""
    book = Book(cfg.state_dir)
    if not (cfg.prune_token_metrics and cfg.verify_api):
        book.put("prune", None)
        return None
    detail = _counters_verdict(cfg, k3s, drop, now, save=True)
    if detail is None and others is not None:
        detail = others()
    entry = book.load().get("prune") or {}
    if detail is None:
        if entry:
            log.info(
                "prune.gate-open", msg=f"token counters no longer grow; prune may go (delayed since {entry['since']})"
            )
        book.put("prune", None)
        return None
    since = entry.get("since") or ts(now)
    if not entry:
        log.warning("prune.delayed", msg=f"prune of {', '.join(drop)} delayed: {detail}", kids=list(drop), since=since)
    book.put("prune", {"since": since, "checked_at": ts(now), "kids": list(drop), "detail": detail})
    return detail


# --- around restarts
class MetricsReader:
    """Reads the token counters just before a restart (which sets them to 0) and just after it."""

    def __init__(self, cfg: Config, k3s: Any, log: Any) -> None:
        self.cfg, self.k3s, self.log = cfg, k3s, log

    def _read(self, step: str) -> None:
        from k3srotd.core.clock import Clock
        from k3srotd.identity import tokenmetrics  # imported where used: `status` needs neither

        try:
            record_token_metrics(self.cfg, self.k3s, Clock().now())
        except (tokenmetrics.MetricsError, K3srotdError, OSError) as e:
            self.log.debug("token-metrics", msg=f"{step}: token counters not read: {e}", step=step)

    def before_restart(self, step: str, target: KeyFile) -> None:
        self._read(step)

    def after_restart(self, step: str, target: KeyFile) -> None:
        self._read(step)


def record_token_metrics(cfg: Config, k3s: Any, now: dt.datetime) -> None:
    """Keep one reading of the token counters (the daemon may call this now and then for finer history)."""
    from k3srotd.identity import tokenmetrics  # imported where used: `status` needs neither

    reading = tokenmetrics.read(k3s.api(), now)
    tokenmetrics.History(cfg.state_dir).add(reading, keep_after=now - cfg.grace_period)


def step_checks(cfg: Config, k3s: Any, log: Any) -> list[StepCheck]:
    checks: list[StepCheck] = []
    if cfg.verify_api and cfg.verify_tokens:
        from k3srotd.identity.probe import TokenProbe

        checks.append(TokenProbe(cfg, k3s, log))
    if cfg.verify_api and cfg.prune_token_metrics:
        checks.append(MetricsReader(cfg, k3s, log))
    return checks


# --- status and doctor
def status_rows(cfg: Config, pending: Optional[str], retired: Sequence[str]) -> list[tuple[str, str]]:
    """Rows for the human status table: what promote or prune awaits and since when, and the token settings."""
    rows: list[tuple[str, str]] = []
    book = Book(cfg.state_dir).load()
    try:
        url = issuer_url(cfg)
        rows.append(("issuer", url if url else f"not checked before promote: {_why_unchecked(cfg)}"))
    except ConfigError as e:
        rows.append(("issuer", str(e)))
    p = book.get("promote")
    if isinstance(p, dict) and pending and p.get("kid") == pending:
        rows.append(("awaiting", f"promote of {pending} waits since {p.get('since')}: {p.get('detail')}"))
        rows.append(("", f"(last checked {p.get('checked_at')})"))
    q = book.get("prune")
    if isinstance(q, dict) and set(q.get("kids") or ()) & set(retired):  # a delay of keys still published
        rows.append(("prune delayed", f"since {q.get('since')}: {q.get('detail')}"))
        rows.append(
            ("", f"(last checked {q.get('checked_at')}; retried at the next due time; `prune --force` overrides)")
        )
    if cfg.k3s.tokens_may_outlive_grace:
        rows.append(("token lifetime", f"tokens may outlive grace-period: {safe_on_time_hint(cfg)}"))
    return rows


Check = tuple[str, str]


def doctor_checks(cfg: Config, k3s: Any) -> list[Callable[[], Check]]:
    from k3srotd.core.clock import Clock

    seen: dict[str, Any] = {}

    def public_issuer() -> Check:
        from k3srotd.identity import issuer  # imported where used: `status` needs neither

        try:
            url = issuer_url(cfg)
        except ConfigError as e:
            return "FAIL", f"public issuer: {e}"
        if url is None:
            return "SKIP", f"public issuer: not checked before promote: {_why_unchecked(cfg)}"
        try:
            pub = issuer.public_keys(url, Clock().now())
        except issuer.IssuerError as e:
            return "FAIL", f"public issuer: {e}; promote would wait for it"
        seen["pub"] = pub
        age = f", Cache-Control max-age={pub.jwks.max_age:g}s" if pub.jwks.max_age else ""
        return "PASS", f"public issuer: {url} reachable, its JWKS lists {len(pub.kids)} key(s){age}"

    def consistent() -> Check:
        from k3srotd.node.kubeapi import APIError

        pub = seen.get("pub")
        if pub is None:
            return "SKIP", "public issuer consistency: not checked (no public issuer read)"
        if not cfg.verify_api:
            return "WARN", "public issuer consistency: verify-api is false; the cluster's own documents are not read"
        api = k3s.api()
        try:
            own = api.get_json("/.well-known/openid-configuration")
            kids = list(dict.fromkeys(api.jwks_kids()))
        except (APIError, K3srotdError) as e:
            return "FAIL", f"public issuer consistency: the cluster's discovery document cannot be read: {e}"
        own_issuer = own.get("issuer") if isinstance(own, dict) else None
        if own_issuer != pub.issuer:
            return "FAIL", (
                f"public issuer consistency: the cluster names the issuer {own_issuer!r}, the public document "
                f"{pub.issuer!r}; its tokens carry the cluster's"
            )
        signer = k3s.current_kid()
        missing = [k for k in kids if k not in pub.kids]
        extra = [k for k in pub.kids if k not in kids]
        if signer and signer not in pub.kids:
            return (
                "FAIL",
                f"public issuer consistency: the public JWKS lacks the signer {signer}; its tokens fail there",
            )
        if missing or extra:
            return "WARN", (
                "public issuer consistency: the public JWKS "
                + "; ".join(
                    x
                    for x in (
                        f"lacks {', '.join(missing)} (promote waits for a published key)" if missing else "",
                        f"still lists {', '.join(extra)}, which the cluster no longer has" if extra else "",
                    )
                    if x
                )
            )
        return "PASS", f"public issuer consistency: same issuer, the same {len(kids)} kid(s)"

    def token_counters() -> Check:
        if not (cfg.prune_token_metrics and cfg.verify_api):
            return "SKIP", "token counters: not read (prune-token-metrics or verify-api is false)"
        now = Clock().now()
        detail = _counters_verdict(cfg, k3s, ["retired keys"], now, save=False)
        if detail is None:
            return (
                "PASS",
                f"token counters: no stale or legacy token use during the last grace-period "
                f"({format_duration(cfg.grace_period)})",
            )
        return "WARN", f"token counters: a prune now would be delayed: {detail}"

    return [public_issuer, consistent, token_counters]
