"""Are tokens signed by old keys still in use? kube-apiserver's service-account token counters on /metrics.

`serviceaccount_stale_tokens_total` counts projected tokens used past their intended expiry (alive only because of
service-account-extend-token-expiration); the legacy counters count Secret-based tokens, which never expire.
Neither says which key signed a token. The stale counter holds a prune only where K3s's settings give no proof
(core/prune.py); the legacy counters are only reported, since the Secret scan (evidence.py) names the key.

Counters restart at 0 with kube-apiserver (every K3s restart), so one reading says little: readings are kept in
<state-dir>/token-metrics.json (taken before and after every restart k3srotd makes, and at every prune check),
and growth is summed reading to reading, a lower value or a new `process_start_time_seconds` counting as a restart.
Increments a kube-apiserver made after the last reading before it stopped are not seen; k3srotd's own restarts are
read just before they happen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from k3srotd.core.model import parse_ts, ts
from k3srotd.node.kubeapi import APIError, KubeAPI
from k3srotd.node.store import JsonStore

STALE = "serviceaccount_stale_tokens_total"
LEGACY = (
    "serviceaccount_legacy_tokens_total",
    "serviceaccount_legacy_auto_token_uses_total",
    "serviceaccount_legacy_manual_token_uses_total",
)
START = "process_start_time_seconds"
FILE = "token-metrics.json"
KEEP = 500  # readings at most


class MetricsError(Exception):
    """/metrics could not be read or parsed. str() is one line."""


GATING = (STALE,)  # only the stale counter holds a prune; the legacy ones are reported (the Secret scan decides)


def _split_sample(line: str) -> tuple[str, str]:
    """`name{labels} value [timestamp]` -> (name, rest after the labels)."""
    brace = line.find("{")
    space = line.find(" ")
    if brace < 0 or (0 <= space < brace):
        name, _, rest = line.partition(" ")
        return name, rest
    i, quoted = brace + 1, False
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return line[:brace], line[i + 1 :]
        i += 1
    raise ValueError("unterminated label set")


def parse(text: str) -> dict[str, float]:
    """Prometheus text exposition: the sum over all series of each metric name (comments skipped)."""
    out: dict[str, float] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, rest = _split_sample(line)
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            raise MetricsError(f"/metrics line {n} is not a Prometheus sample") from None
        if not math.isnan(value):
            out[name] = out.get(name, 0.0) + value
    return out


@dataclasses.dataclass(frozen=True)
class Reading:
    at: dt.datetime
    start: Optional[float]  # kube-apiserver's process_start_time_seconds
    counters: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"at": ts(self.at), "start": self.start, "counters": self.counters}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reading:
        at = parse_ts(d["at"])
        if at is None:
            raise ValueError("reading without a time")
        start = d.get("start")
        return cls(at, None if start is None else float(start), {str(k): float(v) for k, v in d["counters"].items()})


def read(api: KubeAPI, now: dt.datetime) -> Reading:
    """One reading of the apiserver's /metrics (the admin client certificate may read it)."""
    try:
        status, body = api.request("GET", "/metrics")
    except APIError as e:
        raise MetricsError(str(e)) from None
    if status != 200:
        raise MetricsError(f"{api.server_url}/metrics: HTTP {status}")
    values = parse(body.decode("utf-8", "replace"))
    counters = {k: v for k, v in values.items() if k == STALE or k in LEGACY}
    return Reading(now, values.get(START), counters)


@dataclasses.dataclass(frozen=True)
class Growth:
    name: str
    amount: float
    since: dt.datetime  # the reading growth is counted from
    known: bool  # False: the counter was non-zero at the first reading, with no earlier one to tell when it grew
    value: float  # now


def _inc(a: Reading, b: Reading, name: str) -> float:
    va, vb = a.counters.get(name, 0.0), b.counters.get(name, 0.0)
    restarted = a.start is not None and b.start is not None and a.start != b.start
    return vb if restarted or vb < va else vb - va


def growth(history: Sequence[Reading], now: Reading, window_start: dt.datetime, name: str) -> Growth:
    """How much `name` grew from the last reading at or before window_start (else the first one) up to `now`."""
    seq = [*sorted((r for r in history if r.at <= now.at), key=lambda r: r.at), now]
    base = max((i for i in range(len(seq) - 1) if seq[i].at <= window_start), default=None)
    first = 0 if base is None else base
    amount = sum(_inc(seq[i - 1], seq[i], name) for i in range(first + 1, len(seq)))
    known = True
    if base is None:
        head = seq[0]
        started_inside = head.start is not None and head.start >= window_start.timestamp()
        if started_inside:
            amount += head.counters.get(name, 0.0)  # everything since that kube-apiserver started
        elif head.counters.get(name, 0.0) > 0:
            known = False
    return Growth(name, amount, seq[first].at, known, now.counters.get(name, 0.0))


class History:
    """<state-dir>/token-metrics.json: the readings of the last grace-period (and the last one before it)."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / FILE
        self.file: JsonStore[list[Reading]] = JsonStore(self.path, _decode, _encode)

    def load(self) -> list[Reading]:
        return self.file.load_or(list)

    def add(self, reading: Reading, keep_after: dt.datetime) -> None:
        old = [r for r in self.load() if r.at < reading.at]
        before = [r for r in old if r.at <= keep_after]
        kept = before[-1:] + [r for r in old if r.at > keep_after] + [reading]
        self.file.save(kept[-KEEP:])


def _decode(doc: Any) -> list[Reading]:
    return sorted((Reading.from_json(d) for d in doc["readings"]), key=lambda r: r.at)


def _encode(readings: list[Reading]) -> dict[str, Any]:
    return {"version": 1, "readings": [r.to_json() for r in readings]}


def verdict(history: Sequence[Reading], now: Reading, grace: dt.timedelta, names: Sequence[str]) -> Optional[str]:
    """None when no watched counter grew during the last grace-period; else which did, by how much."""
    present = [n for n in names if n in now.counters]
    if not present:
        return f"the apiserver's /metrics has none of {', '.join(names)}, so it cannot tell whether old tokens are used"
    grew, unknown = [], []
    for name in present:
        g = growth(history, now, now.at - grace, name)
        if g.amount > 0:
            grew.append(f"{name} grew by {g.amount:g} since {ts(g.since)}")
        elif not g.known:
            unknown.append(name)
    if grew:
        return (
            "; ".join(grew) + f" (within the last grace-period, {_short(grace)}): clients still use tokens that "
            "may be signed by the keys to prune"
        )
    if unknown:
        return (
            f"{', '.join(unknown)} counted uses before the first reading k3srotd has, and no reading from a "
            "grace-period ago tells when; this reading is kept, so the next attempt can tell"
        )
    return None


def _short(d: dt.timedelta) -> str:
    from k3srotd.core.durations import format_duration

    return format_duration(d)
