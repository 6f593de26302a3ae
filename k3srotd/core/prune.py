"""Whether retired keys may be pruned: every rule in one place, pure, `now` passed in.

- grace:  a retired key may go a grace-period after it retired; `--force` drops every retired key at once.
- legacy tokens:  a service-account-token Secret whose token a key due for prune signed holds that key's prune
  (such tokens never expire); `prune --reissue-legacy` has the token controller sign them again.
- bound tokens:  with service-account-extend-token-expiration=false and a service-account-max-token-expiration
  within the grace-period, every bound token the key signed has expired by then: proof, nothing else gates.
  With a max expiration but extend not false, admission-injected tokens live a year: the stale-token counter
  gates (this server's, and on a cluster every other server's answer). With no max expiration at all, nothing
  bounds a bound token and no counter says which key signed it: the prune goes after the grace, with a warning.

Callers gather the evidence (the Secret scan, the counters, the other servers); this module only judges it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal, Mapping, Optional, Sequence

from k3srotd.core.durations import format_duration
from k3srotd.core.model import ts

Retired = Sequence[tuple[str, dt.datetime]]  # (kid, retired at), file order
# kube-apiserver accepts a token up to 60 s past its exp (pkg/serviceaccount/claims.go: leeway): a token whose exp
# is the end of the grace-period still works for that long
LEEWAY = dt.timedelta(seconds=60)
Bound = Literal["proof", "counter", "unbounded"]
REISSUE = "k3srotd prune --reissue-legacy"


# --- the grace
def past_grace(retired: Retired, grace: dt.timedelta, at: dt.datetime) -> list[str]:
    """The kids whose grace-period has passed at `at`, in file order."""
    return [kid for kid, when in retired if when + grace <= at]


def first_due(retired: Retired, grace: dt.timedelta) -> Optional[dt.datetime]:
    """When the first retired key's grace-period ends (None: nothing retired)."""
    if not retired:
        return None
    return min(when for _, when in retired) + grace


def due(retired: Retired, grace: dt.timedelta, now: dt.datetime, force: bool) -> list[str]:
    """What a prune drops: every retired key with --force, else those past their grace-period."""
    return [kid for kid, _ in retired] if force else past_grace(retired, grace, now)


def grace_refusal(path: str, retired: Retired, grace: dt.timedelta) -> str:
    kid, at = min(retired, key=lambda r: r[1])
    return (
        f"{path}: no retired key has passed its grace-period ({format_duration(grace)}); the first, {kid}, "
        f"retired at {ts(at)}, may be pruned from {ts(at + grace)}. Wait, or after a leak use `prune --force`"
    )


# --- bound tokens
def bound_tokens(extend: Optional[bool], max_expiration: Optional[dt.timedelta], grace: dt.timedelta) -> Bound:
    """What K3s's token settings prove about bound tokens signed by a key a grace-period retired."""
    if max_expiration is None:
        return "unbounded"
    if extend is False and max_expiration + LEEWAY <= grace:
        return "proof"
    return "counter"


def bound_hint(bound: Bound, grace: dt.timedelta) -> str:
    """What an operator can set in K3s to turn the bound-token check into proof; empty when it is proof."""
    if bound == "proof":
        return ""
    floor = dt.timedelta(hours=1) + LEEWAY  # kube-apiserver refuses a max expiration under 1 h
    if grace < floor:
        return (
            f"raise grace-period ({format_duration(grace)}) to at least {format_duration(floor)}, then set "
            "kube-apiserver-arg service-account-max-token-expiration (1h to 1m less than grace-period) and "
            "service-account-extend-token-expiration=false in K3s's config to make the prune safe on time"
        )
    top = format_duration(grace - LEEWAY)  # the API's 60 s leeway past exp must end within the grace-period too
    if bound == "unbounded":
        what = f"service-account-max-token-expiration (1h to {top}) and service-account-extend-token-expiration=false"
    else:
        what = f"service-account-extend-token-expiration=false, with service-account-max-token-expiration at most {top}"
    return f"set kube-apiserver-arg {what} in K3s's config (a K3s restart on every server) to make the prune proof"


# --- the verdict
@dataclasses.dataclass(frozen=True)
class Evidence:
    """What the callers found. `legacy`: kid -> the Secrets ("namespace/name") whose token it signed, None when
    the Secrets were not read (verify-api false); `legacy_error`: why they could not be read. `counters`: the
    stale-token counter's growth on this server, `others`: the other servers' answers (None: no growth)."""

    legacy: Optional[Mapping[str, Sequence[str]]] = None
    legacy_error: Optional[str] = None
    counters: Optional[str] = None
    others: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    go: bool
    reason: str = ""  # why not, one line
    secrets: tuple[str, ...] = ()  # the Secrets that hold it
    warnings: tuple[str, ...] = ()  # true, but not holding it


def legacy_holding(drop: Sequence[str], legacy: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    return tuple(sorted({s for kid in drop for s in legacy.get(kid, ())}))


def verdict(drop: Sequence[str], bound: Bound, grace: dt.timedelta, ev: Evidence, force: bool = False) -> Verdict:
    """May `drop` (keys past their grace-period) go now? --force skips every check."""
    if force:
        return Verdict(True)
    keys = ", ".join(drop)
    if ev.legacy_error is not None:
        return Verdict(
            False,
            f"the service-account-token Secrets cannot be read ({ev.legacy_error}), so k3srotd "
            f"cannot tell whether {keys} signed a token that never expires",
        )
    warnings: list[str] = []
    holding: tuple[str, ...] = ()
    if ev.legacy is None:
        warnings.append("verify-api is false: the service-account-token Secrets were not read")
    else:
        holding = legacy_holding(drop, ev.legacy)
    if holding:
        shown = ", ".join(holding[:10]) + (f" and {len(holding) - 10} more" if len(holding) > 10 else "")
        return Verdict(
            False,
            f"{len(holding)} service-account-token Secret(s) hold tokens signed by {keys}, which "
            f"never expire: {shown}; re-issue them with `{REISSUE}`",
            holding,
            tuple(warnings),
        )
    if bound == "counter":
        grew = "; ".join(x for x in (ev.counters, ev.others) if x)
        if grew:
            hint = bound_hint(bound, grace)
            return Verdict(False, f"{grew} ({hint})", (), tuple(warnings))
    elif bound == "unbounded":
        warnings.append(
            f"bound tokens signed by {keys} may still be in use: K3s sets no service-account-max-token-expiration, "
            f"so nothing bounds their lifetime; {bound_hint(bound, grace)}"
        )
    return Verdict(True, "", (), tuple(warnings))
