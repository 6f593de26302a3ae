"""Multi-server coordination, the pure and read-only parts: which servers a step awaits, whether a new step may
start, what a server owes the published step (tables in tests/cluster/test_decisions.py), what this server knows
of its cluster between runs (<state-dir>/cluster.json), and the rows `status` shows. The orchestration that acts
on these is rolling.py; the API objects are cluster.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from k3srotd.cluster.leases import RESTART_LEASE, STEP_LEASE, Cluster, Lease, Report, Server, Step
from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.model import State, parse_ts, ts
from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import ensure_private_dir, write_atomic

LEASE_ENV = "K3SROTD_TEST_LEASE_SECONDS"  # test hook: a short lease duration
BOOK = "cluster.json"


SYSTEMD_DIR = "/etc/systemd/system"


def node_name(cfg: Config, unit_dir: str = SYSTEMD_DIR) -> str:
    """This server's Node name, as K3s picks it: node-name (k3srotd's, then K3s's config), then K3S_NODE_NAME in
    the environment file the K3s installer writes beside the unit, then the hostname in lower case."""
    return cfg.node_name or cfg.k3s.node_name or _installer_node_name(cfg, unit_dir) or socket.gethostname().lower()


def _installer_node_name(cfg: Config, unit_dir: str) -> Optional[str]:
    env = Path(unit_dir) / f"{cfg.k3s_service}.service.env"
    try:
        lines = env.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:  # KEY=value or KEY='value'; only this key is read (the file also holds K3s's token)
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "K3S_NODE_NAME":
            name = value.strip().strip("'\"")
            if name:
                return name
    return None


def lease_seconds(cfg: Config) -> int:
    """Long enough to cover a restart and its verification (each up to restart-timeout): a server cannot renew
    while its own API is down."""
    override = os.environ.get(LEASE_ENV)
    if override:
        return max(1, int(float(override)))
    return int(2 * cfg.restart_timeout.total_seconds()) + 60


def short(kids: Sequence[str]) -> str:
    return ",".join(k[:8] for k in kids) or "-"


# --- pure decisions
def awaited(
    servers: Sequence[Server], step: Step, reports: dict[str, Report], now: dt.datetime
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(servers still awaited with why, servers that failed the step with their error)."""
    waiting: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    for srv in servers:
        r = reports.get(srv.name)
        if r is not None and r.step_id == step.id and r.live_sha == step.target_sha and r.result == "ok":
            continue
        if r is not None and r.step_id == step.id and r.result == "failed":
            failed.append((srv.name, r.error or "failed"))
            continue
        why = []
        if srv.ready and srv.ready != "True":
            why.append(f"Node Ready {srv.ready}" + (f" ({srv.reason})" if srv.reason else ""))
        if r is None:
            why.append("its k3srotd has never reported (is `k3srotd run` running there?)")
        else:
            why.append(f"runs {short(r.live_kids)}, not yet {short(step.target_kids)}")
            if r.valid_until is not None and r.valid_until < now and r.at is not None:
                why.append(f"its k3srotd has not reported since {ts(r.at)}")
        waiting.append((srv.name, "; ".join(why)))
    return waiting, failed


def out_of_step(
    servers: Sequence[Server], step: Optional[Step], reports: dict[str, Report], me: str, my_sha: str
) -> Optional[str]:
    """None when a new step may start here: no step of another server is open and every server runs this server's
    key set. Else what is awaited."""
    if step is not None and step.open and step.driver != me:
        return f"{step.driver} drives {step.step} ({step.id}) onto {short(step.target_kids)}"
    behind = []
    for srv in servers:
        if srv.name == me:
            continue
        r = reports.get(srv.name)
        if r is None:
            behind.append(f"{srv.name} (its k3srotd has never reported)")
        elif r.live_sha != my_sha:
            behind.append(f"{srv.name} (runs {short(r.live_kids)})")
    if behind:
        return "every server must run this server's key set first: " + ", ".join(behind)
    return None


def orphaned(
    step: Optional[Step],
    step_lease: Optional[Lease],
    servers: Sequence[Server],
    reports: dict[str, Report],
    me: str,
    now: dt.datetime,
) -> bool:
    """A step whose driver stopped renewing k3srotd-step while every server reports it done: any other server may
    commit it for the cluster, so that a driver that died for good does not block every later step. (A rollback,
    or a step some server failed, waits for its driver: only it holds the backup to roll back to.)"""
    if step is None or not step.open or step.driver == me or step.step == "rollback":
        return False
    if step_lease is not None and step_lease.held(now):
        return False
    waiting, failed = awaited(servers, step, reports, now)
    return not waiting and not failed


def my_turn(step: Optional[Step], my_sha: str, mine: Optional[Report], tried: dict[str, str]) -> str:
    """restart | verify | "" : what this server owes the published step. A result it reported stands; a restart is
    tried once per step (no restart loop); a server found on the published set (it restarted meanwhile, or came
    back after a failure it could not report) is checked and reports."""
    if step is None:
        return ""
    if mine is not None and mine.step_id == step.id and mine.result in ("ok", "failed"):
        return ""
    if my_sha == step.target_sha:
        return "verify"
    return "" if step.id in tried else "restart"


def direct_refused(names: Sequence[str]) -> SafetyRefusal:
    return SafetyRefusal(
        f"strategy direct is refused on a cluster of {len(names)} servers ({', '.join(names)}): the new key would "
        "sign on the first server restarted while the others cannot verify its tokens yet. Use strategy "
        "staged (the default): it publishes the key on every server before any server signs with it"
    )


def held_by_window(step: Step, window: Any, now: dt.datetime) -> Optional[str]:
    """Why this server's restart onto the published step waits for its maintenance window, or None. A rollback
    repairs and is never held; nor is a step its driver started with --ignore-window (an incident)."""
    if window is None or step.step == "rollback" or step.window == "ignored" or window.contains(now):
        return None
    return f"maintenance-window ({window}) is closed; it opens next at {ts(window.next_start(now))}"


# --- <state-dir>/cluster.json: what this server knows of its cluster between runs
class Book:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / BOOK

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def servers(self) -> list[str]:
        """The control-plane Nodes this server last saw; more than one means it is one of several."""
        known = self.load().get("servers") or []
        return [str(n) for n in known] if isinstance(known, list) else []

    def update(self, **changes: Any) -> dict[str, Any]:
        data = self.load()
        new = {**data, **changes}
        if new != data:
            ensure_private_dir(self.path.parent)
            write_atomic(self.path, json.dumps(new, indent=1, sort_keys=True).encode() + b"\n")
        return new


def shown_state(state_dir: str, state: State) -> State:
    """The state as `status` and the metrics show it while a step rolls out: as it will commit. The driver has its
    intent (stage rolling); a follower that restarted onto the published set has `following` in its book until
    it adopts the driver's committed state."""
    from k3srotd.core import planner

    intent = state.intent
    if intent is not None and intent.stage == "rolling":
        if intent.step == "rollback":
            return state
        return planner.committed(state, intent.step, intent.before_kids, intent.target_kids, intent.started_at)
    f = Book(state_dir).load().get("following")
    if intent is not None or not isinstance(f, dict) or f.get("step") in (None, "rollback"):
        return state
    at = parse_ts(f.get("at"))
    before, target = f.get("before"), f.get("target")
    if at is None or not isinstance(before, list) or not isinstance(target, list):
        return state
    return planner.committed(state, str(f["step"]), before, target, at)


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
