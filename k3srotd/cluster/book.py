"""What this server knows of its cluster between runs (<state-dir>/cluster.json), its own node name, the lease
duration, and the rows `status` shows. The decisions: core/rollout.py; the API objects: leases.py.
"""

from __future__ import annotations

import datetime as dt
import socket
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from k3srotd.cluster.leases import Cluster
from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.cluster import RESTART_LEASE, STEP_LEASE, Lease, Report, Server, Step
from k3srotd.core.model import State, ts
from k3srotd.core.rollout import awaited, join_refusal, members, not_serving, short
from k3srotd.core.rollout import shown_state as _shown
from k3srotd.errors import ConfigError
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import JsonStore, as_is, json_object

if TYPE_CHECKING:  # types only: the K3s seam is handed in
    from k3srotd.node.k3s import K3s

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
        nodes = cluster.servers()
        leases, apis = cluster.snapshot()
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
    servers, disagree = members(nodes, apis, reports)
    servers = servers or nodes
    rows = [("servers", f"{len(servers)} ({', '.join(s.name for s in servers)}); this is {me}")]
    if disagree is not None:
        rows.append(("server count", f"refused: {disagree}"))
    down = not_serving(servers, reports, me, now)
    if down:  # a step starts (and a restart begins) only when every other server is up and serving
        rows.append(("not serving", ", ".join(down)))
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


# --- what this server tells the others about itself (in every report)
def identity(cfg: Config, k3s: K3s, version: str) -> dict[str, Any]:
    """host, K3s version, join URL, its own addresses and what the join URL resolves to (core.rollout.join_target)."""
    port = urllib.parse.urlsplit(cfg.k3s_server_url).port or 6443
    join = join_url(cfg, k3s)
    return {
        "host": socket.gethostname().lower(),
        "version": version,
        "join": join,
        "addrs": tuple(sorted(f"{ip}:{port}" for ip in _local_ips())),
        "join_addrs": _resolve(join) if join else (),
    }


def join_url(cfg: Config, k3s: K3s) -> str:
    """K3s's join URL as K3s takes it: `--server`/`-s` on its command line, else `server:` in its config
    (config.yaml and config.yaml.d), else K3S_URL in the installer's environment file."""
    proc = k3s.server_process()
    if proc is not None:
        try:
            import psutil

            tokens = psutil.Process(proc.pid).cmdline()
        except Exception:  # noqa: BLE001 - gone, or not ours to read: the files below say it too
            tokens = []
        for i, t in enumerate(tokens):
            if t in ("--server", "-s") and i + 1 < len(tokens):
                return tokens[i + 1]
            if t.startswith("--server="):
                return t.split("=", 1)[1]
    from k3srotd.config import SYSTEMD_DIR, _layered

    try:
        raw, _ = _layered(Path(cfg.k3s_config))
    except ConfigError:
        raw = {}
    value = raw.get("server", ("", ""))[0]
    if isinstance(value, str) and value:
        return value
    env = Path(SYSTEMD_DIR) / f"{cfg.k3s_service}.service.env"
    try:
        for line in env.read_text().splitlines():
            key, sep, val = line.partition("=")
            if sep and key.strip() == "K3S_URL":
                return val.strip().strip("'\"")
    except OSError:
        pass
    return ""


def _local_ips() -> list[str]:
    import psutil

    families = (socket.AF_INET, socket.AF_INET6)
    try:
        found = psutil.net_if_addrs()  # getifaddrs: a netlink socket, which the unit allows for this
    except OSError:  # netlink forbidden (a stricter drop-in): no addresses; a join URL then names none of ours
        return []
    return [a.address.split("%")[0] for ads in found.values() for a in ads if a.family in families]


def _resolve(url: str) -> tuple[str, ...]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 6443
    try:
        found = {f"{ai[4][0]}:{port}" for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        found = {f"{host}:{port}"}
    return tuple(sorted(found))


def k3s_version(cluster: Cluster) -> str:
    try:
        return cluster.version()
    except APIError:
        return ""


def count_servers(
    cluster: Cluster, nodes: list[Server], me: str, ident: dict[str, Any]
) -> tuple[list[Server], Optional[str]]:
    """The servers by their kube-apiservers and Nodes (core.rollout.members), this server's own report as it is
    about to write it when it has none yet. Once per run: the coordinator keeps this answer."""
    leases, apis = cluster.snapshot()
    reports = Cluster.reports(leases)
    if me not in reports:
        reports[me] = Report(me, [], "", "", "", "", None, None, **ident)
    servers, disagree = members(nodes, apis, reports)
    return (servers or nodes), disagree


def doctor(cfg: Config, k3s: K3s, clock: Clock) -> tuple[str, str]:
    """doctor's `servers` line: PASS with the count; FAIL when the counts of servers disagree, or when K3s without
    PR #11844 joins a server through a load balancer (core.rollout.join_refusal)."""
    if not cfg.verify_api:
        return "SKIP", "servers: verify-api is false, the cluster is not asked"
    me = node_name(cfg)
    cluster = Cluster(k3s.api(), me, clock, lease_seconds(cfg))
    try:
        nodes = cluster.servers()
        ident = identity(cfg, k3s, k3s_version(cluster))
        servers, disagree = count_servers(cluster, nodes, me, ident)
        reports = Cluster.reports(cluster.leases())
    except (APIError, ConfigError) as e:
        return "FAIL", f"servers: the cluster cannot say how many servers it has: {e}"
    reports.setdefault(me, Report(me, [], "", "", "", "", None, None, **ident))
    if disagree is not None:
        return "FAIL", f"servers: {disagree}"
    refusal = join_refusal(servers, reports)
    if refusal is not None:
        return "FAIL", f"servers: {refusal}"
    return "PASS", f"servers: {len(servers)} ({', '.join(s.name for s in servers)})"
