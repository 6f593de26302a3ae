"""Rollout decisions on a cluster of servers, pure (tables in tests/cluster/test_decisions.py): which servers a
step awaits, whether a new step may start here, what this server owes the published step, whether an orphaned
step may be committed by another server, whether a server's restart waits for its window, and the state as a step
rolling out will commit it. The book and the API: cluster/.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, Optional, Sequence

from k3srotd.core import planner
from k3srotd.core.cluster import Lease, Report, Server, Step
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
