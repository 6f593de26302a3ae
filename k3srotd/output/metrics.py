"""Prometheus textfile-collector output (`metrics-file`), written atomically after every step and decision.

node_exporter's textfile collector reads `*.prom` files in its directory; the file is written as a hidden
temporary file in the same directory, fsynced, made 0644 and renamed over the old one, so a scrape sees the
old file or the new one, never half of one. The metrics::

    k3srotd_signer_key_age_seconds                  gauge  age of the signing key (absent when unknown)
    k3srotd_keys{role="signer"|"verify"}            gauge  keys in the live file by role
    k3srotd_last_success_timestamp_seconds{step}    gauge  unix time each step last succeeded (absent: never)
    k3srotd_step_failures_total{step}               counter failed steps, every step listed (0 included)
    k3srotd_next_action_timestamp_seconds{action}   gauge  when the next action is due (absent: nothing due)
    k3srotd_phase{phase}                            gauge  1 for the current phase, 0 for the others

Steps: publish, promote, prune, rollback, rotate; actions: publish, promote, prune, rotate.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

STEPS = ("publish", "promote", "prune", "rollback", "rotate")
ACTIONS = ("publish", "promote", "prune", "rotate")
ROLES = ("signer", "verify")
PHASES = ("idle", "published", "promoted")


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the metrics say at one moment. Timestamps are unix seconds."""

    phase: str
    signer_key_age_seconds: Optional[float] = None
    keys: Mapping[str, int] = field(default_factory=dict)  # role -> count
    last_success: Mapping[str, float] = field(default_factory=dict)  # step -> timestamp
    failures: Mapping[str, int] = field(default_factory=dict)  # step -> count since the state began
    next_action: Mapping[str, float] = field(default_factory=dict)  # action -> timestamp

    def __post_init__(self) -> None:
        _check("phase", [self.phase], PHASES)
        _check("role", self.keys, ROLES)
        _check("step", self.last_success, STEPS)
        _check("step", self.failures, STEPS)
        _check("action", self.next_action, ACTIONS)


def _check(what: str, values: Iterable[str], allowed: tuple[str, ...]) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {what} {v!r}; one of {', '.join(allowed)}")


def _number(v: float) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return repr(f)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(snapshot: MetricsSnapshot) -> str:
    """The exposition text (format 0.0.4)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]], label: str = "") -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for value_label, value in samples:
            labels = f'{{{label}="{_label(value_label)}"}}' if label else ""
            out.append(f"{name}{labels} {_number(value)}")

    age = snapshot.signer_key_age_seconds
    family(
        "k3srotd_signer_key_age_seconds",
        "gauge",
        "Age of the service-account signing key in seconds.",
        [("", age)] if age is not None else [],
    )
    family(
        "k3srotd_keys",
        "gauge",
        "Keys in the live service-account key file, by role.",
        [(r, snapshot.keys.get(r, 0)) for r in ROLES],
        "role",
    )
    family(
        "k3srotd_last_success_timestamp_seconds",
        "gauge",
        "Unix time at which each step last succeeded.",
        [(s, snapshot.last_success[s]) for s in STEPS if s in snapshot.last_success],
        "step",
    )
    family(
        "k3srotd_step_failures_total",
        "counter",
        "Failed steps, by step.",
        [(s, snapshot.failures.get(s, 0)) for s in STEPS],
        "step",
    )
    family(
        "k3srotd_next_action_timestamp_seconds",
        "gauge",
        "Unix time at which the next action is due, by action.",
        [(a, snapshot.next_action[a]) for a in ACTIONS if a in snapshot.next_action],
        "action",
    )
    family(
        "k3srotd_phase",
        "gauge",
        "Rotation phase: 1 for the current one.",
        [(p, 1 if p == snapshot.phase else 0) for p in PHASES],
        "phase",
    )
    return "\n".join(out) + "\n"


def write_metrics(path: Union[str, os.PathLike[str]], snapshot: MetricsSnapshot) -> None:
    """Replace `path` atomically with the snapshot's metrics, mode 0644. OSError if the directory is not
    writable; the caller logs it (metrics never fail a step)."""
    target = Path(path)
    data = render(snapshot).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
