"""Config values: one checker per kind of value. Each returns the value as k3srotd uses it, or raises ValueError
(or ConfigError) with a text that config.py puts after the key and the file."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

from k3srotd.core.durations import parse_duration
from k3srotd.core.text import show

MAX_DURATION = dt.timedelta(days=36500)  # 100 years: beyond it, date arithmetic overflows somewhere


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _path(v: Any) -> str:
    s = _str(v)
    if s and not s.startswith("/"):
        raise ValueError(f"{show(s)} is not an absolute path")
    if "\0" in s:
        raise ValueError("holds a NUL byte")
    return s


def _nonempty_path(v: Any) -> str:
    s = _path(v)
    if not s:
        raise ValueError("must not be empty")
    return s


def _duration(v: Any) -> dt.timedelta:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"expected a duration such as 24h, got {type(v).__name__}")
    d = parse_duration(str(v) + ("s" if isinstance(v, int) and v != 0 else ""))
    if d.total_seconds() < 0:
        raise ValueError("must not be negative")
    if d > MAX_DURATION:
        raise ValueError(f"{show(v)} is longer than 100 years")
    return d


def _positive_duration(v: Any) -> dt.timedelta:
    d = _duration(v)
    if d.total_seconds() <= 0:
        raise ValueError("must be longer than 0s")
    return d


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {show(v)}")
    return v


def _choice(*allowed: Any) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        # 2048.0 == 2048 in Python: the type must match too
        if not any(type(v) is type(a) and v == a for a in allowed):
            raise ValueError(f"{show(v)} is not one of {', '.join(str(a) for a in allowed)}")
        return v

    return check


def _argv(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError("expected a non-empty list of strings (an argv), e.g. [systemctl, restart, k3s]")
    return tuple(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a whole number of at least 1, got {show(v)}")
    return v


def _window(v: Any) -> Any:
    if v is None:
        return None
    from k3srotd.core.window import MaintenanceWindow

    return MaintenanceWindow.parse(v)


def _url(v: Any) -> str:
    from urllib.parse import urlsplit

    s = _str(v)
    if not s.startswith("https://"):
        raise ValueError(f"{show(s)} is not an https:// URL")
    try:
        parts = urlsplit(s)
        parts.port  # noqa: B018 - raises on a port that is no number or out of range
    except ValueError:
        raise ValueError(f"{show(s)} is not a valid URL") from None
    if not parts.hostname or any(c.isspace() for c in s):
        raise ValueError(f"{show(s)} is not a valid URL (write https://HOST[:PORT])")
    return s


def _optional_url(v: Any) -> str:
    return "" if v in ("", None) else _url(v)


def _tristate(v: Any) -> str:
    """auto | true | false; YAML's bare true/false are accepted too."""
    if isinstance(v, bool):
        return "true" if v else "false"
    result: str = _choice("auto", "true", "false")(v)
    return result
