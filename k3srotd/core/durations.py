"""Durations as operators write them in config: `90d`, `24h`, `10m`, `30s`, `1h30m`.

K3s's own Go-style durations (`service-account-max-token-expiration=24h`, `3600s`, `1h0m0s`, `500ms`) use the
same parser.
"""

from __future__ import annotations

import datetime as dt
import re

from k3srotd.core.text import show

_UNITS = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
    "us": 0.000001,
    "µs": 0.000001,
    "ns": 0.000000001,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|d|h|m|s)")


def parse_duration(text: str) -> dt.timedelta:
    """Parse `1h30m`-style text; raise ValueError with a readable reason."""
    s = str(text).strip()
    if not s:
        raise ValueError("empty duration")
    if s == "0":
        return dt.timedelta(0)
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"{show(text)} is not a duration (write e.g. 90d, 24h, 10m, 30s or 1h30m)")
    try:
        return dt.timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"{show(text)} is too long a duration") from None


def format_duration(delta: dt.timedelta) -> str:
    """Short human form, largest units first: `89d 23h`, `4m 10s`, `0s`."""
    secs = round(abs(delta.total_seconds()))
    sign = "-" if delta.total_seconds() < 0 else ""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
        if len(parts) == 2:
            break
    return sign + (" ".join(parts) if parts else "0s")
