"""What status and doctor say about workload identity: the issuer, what promote or prune awaits and since when,
the evidence per key due for prune (the Secrets that hold it, the command that re-issues them), and what K3s's
token settings prove. Reads the cluster and gates.json; writes nothing. `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Literal, Optional, Sequence

from k3srotd.config import Config
from k3srotd.core import prune as core_prune
from k3srotd.core.durations import format_duration
from k3srotd.errors import K3srotdError
from k3srotd.identity import gates
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError

Level = Literal["PASS", "WARN", "FAIL", "SKIP"]  # as commands/checks.py's, which doctor runs these with
Check = tuple[Level, str]


def bound_row(cfg: Config) -> str:
    """What K3s's token settings prove about bound tokens signed by a retired key (status and doctor)."""
    k, b = cfg.k3s, gates.bound(cfg)
    grace = format_duration(cfg.grace_period)
    if b == "proof" and k.max_token_expiration is not None:
        return (
            f"proof: bound tokens live at most {format_duration(k.max_token_expiration)} (max-token-expiration, "
            f"extend-token-expiration=false), within grace-period {grace}"
        )
    if b == "counter":
        return (
            "the stale-token counter holds a prune while it grows (extend-token-expiration is not false, so "
            "admission-injected tokens live a year); service-account-extend-token-expiration=false turns this "
            "gate into proof"
        )
    return (
        "no service-account-max-token-expiration: nothing bounds a bound token's lifetime, so a prune goes after "
        f"the grace-period with a warning; {core_prune.bound_hint(b, cfg.grace_period)}"
    )


def legacy_rows(cfg: Config, k3s: K3s, retired: Sequence[str]) -> list[tuple[str, str]]:
    """The Secrets whose token a retired key signed, and the command that re-issues them."""
    if not retired or not cfg.verify_api:
        return []
    ev = gates.legacy_evidence(cfg, k3s)
    if ev.legacy_error is not None:
        return [("legacy tokens", f"the service-account-token Secrets cannot be read: {ev.legacy_error}")]
    holding = core_prune.legacy_holding(retired, ev.legacy or {})
    if not holding:
        return [("legacy tokens", "no service-account-token Secret holds a token signed by a retired key")]
    return [
        ("legacy tokens", f"{len(holding)} Secret(s) signed by retired keys hold their prune: {', '.join(holding)}"),
        ("", f"(re-issue them with `{core_prune.REISSUE}`)"),
    ]


def status_rows(cfg: Config, k3s: K3s, pending: Optional[str], retired: Sequence[str]) -> list[tuple[str, str]]:
    """Rows for the human status table: what promote or prune awaits and since when, and the token evidence."""
    rows: list[tuple[str, str]] = []
    book = gates.Book(cfg.state_dir).load()
    ch = gates.issuer_choice(cfg, k3s)
    if ch.url:
        rows.append(("issuer", ch.url))
    else:
        rows.append(("issuer", f"promote waits: {ch.wait}" if ch.wait else f"not checked before promote: {ch.why}"))
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
    rows.extend(legacy_rows(cfg, k3s, retired))
    rows.append(("bound tokens", bound_row(cfg)))
    return rows


def doctor_checks(cfg: Config, k3s: K3s, now: Callable[[], dt.datetime]) -> list[Callable[[], Check]]:
    seen: dict[str, Any] = {}

    def public_issuer() -> Check:
        from k3srotd.identity import issuer  # imported where used: `status` needs no HTTPS client

        ch = gates.issuer_choice(cfg, k3s)
        if ch.wait:
            return "FAIL", f"public issuer: {ch.wait}; promote would wait"
        if ch.url is None:
            return "SKIP", f"public issuer: not checked before promote: {ch.why}"
        try:
            pub = issuer.public_keys(ch.url, now())
        except issuer.IssuerError as e:
            return "FAIL", f"public issuer: {e}; promote would wait for it"
        seen["pub"] = pub
        age = f", Cache-Control max-age={pub.jwks.max_age:g}s" if pub.jwks.max_age else ""
        return "PASS", f"public issuer: {ch.url} reachable, its JWKS lists {len(pub.kids)} key(s){age}"

    def consistent() -> Check:
        pub = seen.get("pub")
        if pub is None:
            return "SKIP", "public issuer consistency: not checked (no public issuer read)"
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
        if signer and signer not in pub.kids:
            return "FAIL", f"public issuer consistency: the public JWKS lacks the signer {signer}; its tokens fail"
        missing = [k for k in kids if k not in pub.kids]
        extra = [k for k in pub.kids if k not in kids]
        notes = [f"lacks {', '.join(missing)} (promote waits for a published key)"] if missing else []
        notes += [f"still lists {', '.join(extra)}, which the cluster no longer has"] if extra else []
        if notes:
            return "WARN", "public issuer consistency: the public JWKS " + "; ".join(notes)
        return "PASS", f"public issuer consistency: same issuer, the same {len(kids)} kid(s)"

    def legacy_tokens() -> Check:
        return legacy_check(cfg, k3s, now())

    return [public_issuer, consistent, legacy_tokens]


def legacy_uses(cfg: Config, k3s: K3s, now: dt.datetime) -> str:
    """The legacy-token counters, reported only (the Secret scan decides): '' when not read."""
    from k3srotd.identity import tokenmetrics

    if not (cfg.prune_token_metrics and cfg.verify_api):
        return ""
    try:
        reading = tokenmetrics.read(k3s.api(), now)
    except (tokenmetrics.MetricsError, K3srotdError):
        return ""
    history = tokenmetrics.History(cfg.state_dir).load()
    start = now - cfg.grace_period
    used = sum(tokenmetrics.growth(history, reading, start, n).amount for n in tokenmetrics.LEGACY[:1])
    return f"; kube-apiserver counted {used:g} legacy token use(s) during the last grace-period (reported only)"


def legacy_check(cfg: Config, k3s: K3s, now: dt.datetime) -> Check:
    if not cfg.verify_api:
        return "SKIP", "legacy tokens: verify-api is false; the service-account-token Secrets are not read"
    ev = gates.legacy_evidence(cfg, k3s)
    if ev.legacy_error is not None:
        why = ev.legacy_error
        return "FAIL", f"legacy tokens: the service-account-token Secrets cannot be read ({why}); a prune would wait"
    signer = k3s.current_kid()
    others = sorted({ref for kid, refs in (ev.legacy or {}).items() if kid != signer for ref in refs})
    if others:
        return "WARN", (
            f"legacy tokens: {len(others)} service-account-token Secret(s) signed by a key that no longer signs "
            f"hold its prune: {', '.join(others[:10])}; re-issue them with `{core_prune.REISSUE}`"
            + legacy_uses(cfg, k3s, now)
        )
    total = sum(len(v) for v in (ev.legacy or {}).values())
    return "PASS", (
        f"legacy tokens: {total} service-account-token Secret(s), all signed by the signer" + legacy_uses(cfg, k3s, now)
    )


def bound_check(cfg: Config, k3s: K3s, now: dt.datetime) -> Check:
    b = gates.bound(cfg)
    if b == "unbounded":
        return "WARN", f"bound tokens: {bound_row(cfg)}"
    if b == "proof":
        return "PASS", f"bound tokens: {bound_row(cfg)}"
    if not (cfg.prune_token_metrics and cfg.verify_api):
        return "SKIP", "bound tokens: the stale-token counter is not read (prune-token-metrics or verify-api is false)"
    detail = gates.counters_verdict(cfg, k3s, ["retired keys"], now, save=False)
    if detail is None:
        return "PASS", (
            f"bound tokens: no stale token use during the last grace-period ({format_duration(cfg.grace_period)}); "
            "service-account-extend-token-expiration=false would turn this gate into proof"
        )
    return "WARN", f"bound tokens: a prune now would be delayed: {detail}"
