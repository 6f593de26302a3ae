"""What this server knows of its cluster between runs (<state-dir>/cluster.json), its own node name, the lease
duration, and the rows `status` shows. The decisions: core/rollout.py; the API objects: leases.py.
"""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any, Optional

from k3srotd.cluster.leases import Cluster
from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.cluster import RESTART_LEASE, STEP_LEASE, Lease, Step
from k3srotd.core.model import State, ts
from k3srotd.core.rollout import awaited, short
from k3srotd.core.rollout import shown_state as _shown
from k3srotd.errors import ConfigError
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import JsonStore, as_is, json_object

BOOK = "cluster.json"


def node_name(cfg: Config) -> str:
    """This server's Node name, as K3s picks it: resolved when the config loaded (node-name, K3s's node-name, the
    installer's K3S_NODE_NAME), else the hostname in lower case."""
    return cfg.server_name or socket.gethostname().lower()


def lease_seconds(cfg: Config, override: Optional[float] = None) -> int:
    """Long enough to cover a restart and its verification (each up to restart-timeout): a server cannot renew
    while its own API is down. `override`: the tests' short leases."""
    if override:
        return max(1, int(override))
    return int(2 * cfg.restart_timeout.total_seconds()) + 60


# --- <state-dir>/cluster.json: what this server knows of its cluster between runs
class Book:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / BOOK
        self.file: JsonStore[dict[str, Any]] = JsonStore(self.path, json_object, as_is)

    def load(self) -> dict[str, Any]:
        return self.file.load_or(dict)

    def servers(self) -> list[str]:
        """The control-plane Nodes this server last saw; more than one means it is one of several."""
        known = self.load().get("servers") or []
        return [str(n) for n in known] if isinstance(known, list) else []

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.load()
        new = {**data, **changes}
        if new != data:
            self.file.save(new)
        return new


def shown_state(state_dir: str, state: State) -> State:
    """The state as it will commit while a step rolls out (core.rollout.shown_state), from this server's book."""
    return _shown(state, Book(state_dir).load().get("following"))


# --- status
def status(cfg: Config, clock: Clock) -> tuple[list[tuple[str, str]], list[str]]:
    """Rows and a server table for `status`, when this server knows it is one of several (no API call otherwise)."""
    known = Book(cfg.state_dir).servers()
    if len(known) <= 1:
        return [], []
    from k3srotd.node.kubeapi import KubeAPI

    me = node_name(cfg)
    cluster = Cluster(KubeAPI(cfg.kubeconfig, cfg.k3s_server_url, timeout=5.0), me, clock, lease_seconds(cfg))
    try:
        servers = cluster.servers()
        leases = cluster.leases()
    except (APIError, ConfigError) as e:
        return [
            (
                "servers",
                f"cannot reach the API ({e}); this server ({me}) is one of {len(known)} ({', '.join(known)}) and "
                "takes no step and restarts nothing until it can",
            )
        ], []
    now = clock.now()
    step = Step.from_lease(leases.get(STEP_LEASE))
    reports = Cluster.reports(leases)
    rows = [("servers", f"{len(servers)} ({', '.join(s.name for s in servers)}); this is {me}")]
    for name, label in ((STEP_LEASE, "step lease"), (RESTART_LEASE, "restart lease")):
        rows.append((label, _lease_text(leases.get(name), now)))
    if step is not None:
        rows.append(
            (
                "cluster step",
                f"{step.step} ({step.id}) by {step.driver}: {step.outcome}; target {', '.join(step.target_kids)}",
            )
        )
        waiting, failed = awaited(servers, step, reports, now) if step.open else ([], [])
        for name, why in waiting:
            rows.append(("awaiting", f"{name}: {why}"))
        for name, err in failed:
            rows.append(("failed", f"{name}: {err}"))
    table = [("SERVER", "READY", "LIVE KEYS", "ON STEP", "REPORTED")]
    for srv in servers:
        r = reports.get(srv.name)
        on = "-"
        if step is not None and r is not None:
            on = {"ok": "yes", "failed": "failed"}.get(r.result, "no") if r.step_id == step.id else "no"
        reported = "never" if r is None or r.at is None else _ago(now - r.at)
        table.append((srv.name, srv.ready or "?", short(r.live_kids) if r else "?", on, reported))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
    return rows, lines


def _ago(delta: dt.timedelta) -> str:
    from k3srotd.core.durations import format_duration

    return f"{format_duration(max(delta, dt.timedelta(0)))} ago"


def _lease_text(lease: Optional[Lease], now: dt.datetime) -> str:
    if lease is None or not lease.held(now):
        return "free"
    exp = lease.expires
    return f"held by {lease.holder}" + (f" (until {ts(exp)} unless renewed)" if exp else "")
