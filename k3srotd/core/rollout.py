"""Rollout decisions on a cluster of servers, pure (tables in tests/cluster/test_decisions.py): which servers a
step awaits, whether a new step may start here, what this server owes the published step, whether an orphaned
step may be committed by another server, whether a server's restart waits for its window, and the state as a step
rolling out will commit it. The book and the API: cluster/.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, Optional, Sequence

from k3srotd.core import planner, versions
from k3srotd.core.cluster import Apiserver, Lease, Report, Server, Step
from k3srotd.core.model import State, parse_ts, ts
from k3srotd.core.window import MaintenanceWindow
from k3srotd.errors import SafetyRefusal

Turn = Literal["restart", "verify", ""]


def short(kids: Sequence[str]) -> str:
    return ",".join(k[:8] for k in kids) or "-"


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


def my_turn(step: Optional[Step], my_sha: str, mine: Optional[Report], tried: dict[str, str]) -> Turn:
    """restart | verify | "" : what this server owes the published step. A result it reported stands; a restart is
    tried once per step (no restart loop); a server found on the published set (it restarted meanwhile, or came
    back after a failure it could not report) is checked and reports."""
    if step is None:
        return ""
    if mine is not None and mine.step_id == step.id and mine.result in ("ok", "failed"):
        return ""
    if my_sha == step.target_sha and step.step != "rehearse":  # a rehearsal's target is every live set: restart
        return "verify"
    return "" if step.id in tried else "restart"


def direct_refused(names: Sequence[str]) -> SafetyRefusal:
    return SafetyRefusal(
        f"strategy direct is refused on a cluster of {len(names)} servers ({', '.join(names)}): the new key would "
        "sign on the first server restarted while the others cannot verify its tokens yet. Use strategy "
        "staged (the default): it publishes the key on every server before any server signs with it"
    )


def held_by_window(step: Step, window: Optional[MaintenanceWindow], now: dt.datetime) -> Optional[str]:
    """Why this server's restart onto the published step waits for its maintenance window, or None. A rollback
    repairs and is never held; nor is a step its driver started with --ignore-window (an incident)."""
    if window is None or step.step == "rollback" or step.window == "ignored" or window.contains(now):
        return None
    return f"maintenance-window ({window}) is closed; it opens next at {ts(window.next_start(now))}"


def shown_state(state: State, following: object) -> State:
    """The state as `status` and the metrics show it while a step rolls out: as it will commit. The driver has its
    intent (stage rolling); a follower that restarted onto the published set has `following` (from its book)
    until it adopts the driver's committed state."""
    intent = state.intent
    if intent is not None and intent.stage == "rolling":
        if intent.step == "rollback":
            return state
        return planner.committed(state, intent.step, intent.before_kids, intent.target_kids, intent.started_at)
    f = following
    if intent is not None or not isinstance(f, dict) or f.get("step") in (None, "rollback"):
        return state
    at = parse_ts(f.get("at"))
    before, target = f.get("before"), f.get("target")
    if at is None or not isinstance(before, list) or not isinstance(target, list):
        return state
    return planner.committed(state, str(f["step"]), before, target, at)


# --- who the servers are (issue 11: count by kube-apiservers), whether the others are up, the restart order
def members(
    nodes: Sequence[Server], apis: Sequence[Apiserver], reports: dict[str, Report]
) -> tuple[list[Server], Optional[str]]:
    """The cluster's servers: one per kube-apiserver (its identity Lease), named as its k3srotd reports (node
    name, or its hostname, which the Lease's label carries), and every control-plane Node. Without identity Leases
    (Kubernetes before 1.26) the Nodes alone. With why, when the counts cannot be explained: a kube-apiserver
    whose k3srotd never reported (counted by its hostname)."""
    if not apis:
        return sorted(nodes, key=lambda s: s.name), None
    named: dict[str, str] = {}
    for r in reports.values():
        for h in (r.host, r.node):
            if h:
                named[h] = r.node
    by_node = {n.name: n for n in nodes}
    out: dict[str, Server] = {}
    unknown = []
    for a in sorted(apis, key=lambda a: a.host):
        name = named.get(a.host)
        if name is None:
            unknown.append(a.host)
            name = a.host
        n = by_node.get(name)
        out[name] = Server(name, n.ready if n else "", n.reason if n else "", node=n is not None, api=a)
    for n in nodes:
        out.setdefault(n.name, n)  # a Node without a running kube-apiserver: a server that is down
    servers = [out[k] for k in sorted(out)]
    if unknown:
        return servers, (
            f"counted {len(apis)} kube-apiservers (identity Leases of {', '.join(sorted(a.host for a in apis))}), "
            f"{len(reports)} k3srotd reports ({', '.join(sorted(reports)) or 'none'}) and {len(nodes)} control-plane "
            f"Nodes ({', '.join(sorted(by_node)) or 'none'}): the kube-apiserver on {', '.join(unknown)} has no "
            "k3srotd report. Run k3srotd on every server (each reports within seconds of starting)"
        )
    return servers, None


def not_serving(
    servers: Sequence[Server], reports: dict[str, Report], me: str, now: dt.datetime, reported: bool = True
) -> list[str]:
    """The OTHER servers that are not up and serving, each with why: its kube-apiserver renews its identity Lease,
    its Node is Ready (where it has one) and (`reported`: before a step starts) its k3srotd's report is fresh. A
    restart waits for the first two only: a k3srotd that stopped in the middle of a step takes no K3s down."""
    by_identity = any(s.api is not None for s in servers)
    out = []
    for srv in servers:
        if srv.name == me:
            continue
        why = []
        if srv.api is not None and not srv.api.fresh(now):
            when = ts(srv.api.renew) if srv.api.renew else "never"
            why.append(f"its kube-apiserver has not renewed its identity Lease since {when}")
        elif srv.api is None and by_identity:
            why.append("no kube-apiserver runs there (no identity Lease)")
        if srv.node and srv.ready != "True":
            why.append(f"Node Ready {srv.ready or 'unknown'}" + (f" ({srv.reason})" if srv.reason else ""))
        r = reports.get(srv.name)
        if r is None and reported:
            why.append("its k3srotd has never reported")
        elif r is not None and reported and not r.fresh(now):
            why.append(f"its k3srotd has not reported since {ts(r.at) if r.at else 'never'}")
        if why:
            out.append(f"{srv.name} ({'; '.join(why)})")
    return out


def _old(r: Report) -> bool:
    v = versions.parse(r.version)
    return v is not None and versions.old_bootstrap(v)


def join_target(r: Report, reports: dict[str, Report]) -> tuple[Optional[str], bool]:
    """(the server its join URL names, True) ; (None, True) for the init server (no join URL); (None, False) for a
    join URL that names no single server's own address (a load balancer, or a name for several)."""
    if not r.join:
        return None, True
    hit = sorted({o.node for o in reports.values() if set(o.addrs) & set(r.join_addrs)})
    return (hit[0], True) if len(hit) == 1 else (None, False)


def join_refusal(servers: Sequence[Server], reports: dict[str, Report]) -> Optional[str]:
    """One line when a server on K3s without PR #11844 joins through a URL that names no single server: each of
    its restarts would reconcile from some peer's own disk, not the datastore, and may come back on old keys."""
    mine = [reports[s.name] for s in servers if s.name in reports]
    if not any(_old(r) for r in mine):
        return None
    for r in mine:
        _, single = join_target(r, reports)
        if not single:
            old = sorted({r2.version for r2 in mine if _old(r2)})
            return (
                f"{r.node} joins through {r.join}, which names none of the servers' own addresses (a load "
                f"balancer), and K3s {', '.join(old)} restarts it from whichever server answers there, from that "
                "server's disk, not the datastore: it may come back on the old keys. Upgrade K3s to a release that "
                f"fixes it (PR #11844: {versions.releases(versions.BOOTSTRAP_FROM_DATASTORE)}), or use K3s's own "
                f"workaround: remove the server address (`server:` / K3S_URL) from {r.node}'s K3s config before "
                "it rotates"
            )
    return None


def join_wait(step: Optional[Step], reports: dict[str, Report], me: str) -> Optional[str]:
    """Why this server's restart onto `step` waits for its join target, on K3s without PR #11844 (it reconciles from
    that server's disk at every restart, so that server must run the step first); None when it may go."""
    r = reports.get(me)
    if step is None or r is None or not any(_old(o) for o in reports.values()):
        return None
    target, single = join_target(r, reports)
    if target is None or target == me or not single:
        return None
    t = reports.get(target)
    if t is not None and t.step_id == step.id and t.result == "ok" and t.live_sha == step.target_sha:
        return None
    return (
        f"{me} joins through {target} ({r.join}), and K3s {r.version} restarts it from {target}'s disk: {target} "
        f"restarts onto {step.step} first"
    )
