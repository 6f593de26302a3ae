"""Pure scheduling decisions for the daemon: from the planner's next step, the clock, the maintenance window,
this node's splay, any retry back-off and the operator's opt-in (`automatic`), whether to act now, and when to
look again.

Without the opt-in a due step is held, never started: the daemon says what it would do and looks again after
`recheck`. Finishing an interrupted step and following another server's step are not decided here (they are not
new steps), so they go on without it.

Due times always come from state + live file + clock (planner), never from a job store that could drift.
A step missed while the daemon was down is due at once when it starts again (like systemd's Persistent=).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Optional

from k3srotd.core import planner

if TYPE_CHECKING:
    from k3srotd.core.keys import KeyFile
    from k3srotd.core.model import State
    from k3srotd.core.window import MaintenanceWindow

# look at the live file at least this often: an operator may change it, or run a step by hand, and STATUS and the
# metrics should say so soon (an idle look costs about a millisecond)
RECHECK = dt.timedelta(minutes=10)


def splay(node: str, limit: dt.timedelta) -> dt.timedelta:
    """A delay in [0, limit) that is the same for a node every time, so a fleet spreads out deterministically."""
    if limit.total_seconds() <= 0:
        return dt.timedelta(0)
    h = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big")
    return dt.timedelta(seconds=h % int(limit.total_seconds()))


Policy = planner.Policy  # what the schedule reads of the config is what the planner reads


@dataclasses.dataclass(frozen=True)
class Decision:
    plan: Optional[planner.Plan]  # the step to do now, or None
    wake: dt.datetime  # when to decide again
    next_plan: Optional[planner.Plan]  # what comes next (for status), due now or later
    start: Optional[dt.datetime]  # when next_plan may start: due + splay, inside the window, after back-off
    held: bool = False  # next_plan may start now, but the operator has not opted in (`automatic: false`)


def decide(
    cfg: Policy,
    state: State,
    live: KeyFile,
    now: dt.datetime,
    live_mtime: dt.datetime,
    node_splay: dt.timedelta = dt.timedelta(0),
    retry_after: Optional[dt.datetime] = None,
    recheck: dt.timedelta = RECHECK,
    *,
    automatic: bool,
) -> Decision:
    plan = planner.next_plan(cfg, state, live, now, live_mtime)
    if plan is None:
        return Decision(None, now + recheck, None, None)
    earliest = plan.due if retry_after is None else max(plan.due, retry_after)
    win = cfg.maintenance_window
    start = max(plan.due + node_splay, earliest) if win is None else start_in_window(win, earliest, now, node_splay)
    if start <= now:
        if not automatic:  # held: look again as when idle (the operator may opt in, or act by hand)
            return Decision(None, now + recheck, plan, start, held=True)
        return Decision(plan, now, plan, start)
    return Decision(None, min(start, now + recheck), plan, start)


def opt_in_hint(config_path: Optional[str]) -> str:
    """How to opt in: a drop-in beside the config the daemon reads (a fleet's config management can write it)."""
    main = config_path or "/etc/k3srotd/config.yaml"
    return f"to opt in, write `automatic: true` to {main}.d/50-automatic.yaml and run `systemctl reload k3srotd`"


def describe(
    decision: Decision, phase: str, now: dt.datetime, automatic: bool, config_path: Optional[str] = None
) -> str:
    """The daemon's status line for a decision that does nothing now: what comes next and when, and, without the
    opt-in, that an operator does it or opts in, and how."""
    from k3srotd.core.durations import format_duration
    from k3srotd.core.model import ts

    head = f"phase {phase}"
    nxt, start = decision.next_plan, decision.start
    if nxt is None or start is None:
        return f"{head}; nothing scheduled"
    if decision.held:
        return (
            f"{head}; {nxt.action} is due (since {ts(nxt.due)}), but automatic steps are off: run "
            f"`k3srotd {_command(nxt.action)}`, or {opt_in_hint(config_path)}"
        )
    when = f"{ts(start)} (in {format_duration(start - now)})"
    if not automatic:
        return f"{head}; automatic steps are off: {nxt.action} would start at {when}; {opt_in_hint(config_path)}"
    return f"{head}; next {nxt.action} at {when}"


def _command(action: str) -> str:
    return "prune" if action == "prune" else "rotate-now"


def start_in_window(
    win: MaintenanceWindow, earliest: dt.datetime, now: dt.datetime, node_splay: dt.timedelta
) -> dt.datetime:
    """The first instant, not before `earliest` nor `now`, at which this node may start inside the window: its
    splay after the opening (or after `earliest`, when that falls inside the opening), wrapped to fit what is
    left of the opening. Anchored to the opening and not to `now`, so that waking at that instant acts on it;
    an overdue step found inside an opening past this node's slot starts at once (as systemd's Persistent=)."""
    t = max(earliest, now)
    for _ in range(60):  # a weekly window opens at least once in five weeks
        t = win.next_open(t)
        close = win.closes_at(t)
        anchor = max(win.opened_at(t), earliest)
        if close is None:  # open all the time
            return max(t, anchor + node_splay)
        room = (close - anchor).total_seconds()
        slot = anchor + dt.timedelta(seconds=node_splay.total_seconds() % room)
        if max(slot, t) < close:
            return max(slot, t)
        t = close
    raise AssertionError("no opening of the maintenance window in sixty tries")  # pragma: no cover
