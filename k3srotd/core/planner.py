"""Pure decisions: state + live key file + clock -> what the state should say, and what step comes next.

Nothing here reads a file, runs a command or looks at the wall clock; callers pass `now` and the parsed live file.
The phases:
  idle       the signer is the only key (nothing to promote or prune)
  published  a new key is published, verify-only (last in the file), waiting to be promoted
  promoted   the signer changed; retired keys stay published until their grace has passed
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Literal, Optional, Protocol, Sequence

from k3srotd.core import prune
from k3srotd.core.keys import KeyFile
from k3srotd.core.model import KeyRecord, State

if TYPE_CHECKING:  # an annotation only: `status` need not import the window
    from k3srotd.core.window import MaintenanceWindow

IDLE, PUBLISHED, PROMOTED = "idle", "published", "promoted"


@dataclasses.dataclass(frozen=True)
class Observation:
    state: State
    notes: tuple[str, ...] = ()
    adopted: bool = False  # the live signer changed outside k3srotd


def expected_signer(state: State) -> Optional[str]:
    for kid, rec in state.keys.items():
        if rec.signer_since is not None and rec.retired_at is None:
            return kid
    return None


def observe(state: State, live: KeyFile, now: dt.datetime, live_mtime: dt.datetime) -> Observation:
    """The state brought in line with the live file. A key k3srotd did not retire itself counts as retired
    when first seen; a signer changed by hand is adopted, never fought."""
    s = copy.deepcopy(state)
    notes: list[str] = []
    signer = live.signer.kid
    expected = expected_signer(s)
    adopted = False
    if expected is not None and expected != signer:
        adopted = True
        notes.append(
            f"{live.path}: the live signer {signer} is not the one k3srotd expects ({expected}); "
            "it was changed outside k3srotd. Adopted it as the signer; nothing was changed"
        )
        if expected in s.keys:
            s.keys[expected].retired_at = now
        if s.pending == signer:
            s.last_rotation = live_mtime
    for kid in live.kids:
        if kid not in s.keys:
            s.keys[kid] = KeyRecord(first_seen=now)
    rec = s.keys[signer]
    if rec.signer_since is None or rec.retired_at is not None:
        # Age of a key k3srotd never rotated: the live file's mtime, which K3s sets to the datastore timestamp.
        rec.signer_since = live_mtime if expected is None or adopted else now
        rec.retired_at = None
    if s.pending is not None and (s.pending not in live or s.pending == signer):
        s.pending = None
        s.published_at = None
    for kid in live.kids:
        r = s.keys[kid]
        if kid != signer and kid != s.pending and r.retired_at is None:
            r.retired_at = now
            if r.signer_since is not None and kid != expected:
                notes.append(f"{live.path}: key {kid} no longer signs; counted as retired from now")
    for kid in [k for k in s.keys if k not in live]:
        del s.keys[kid]
    return Observation(state=s, notes=tuple(notes), adopted=adopted)


def phase(state: State, live: KeyFile) -> str:
    if state.pending is not None and state.pending in live and live.signer.kid != state.pending:
        return PUBLISHED
    if len(live.kids) > 1:
        return PROMOTED
    return IDLE


def retired(state: State, live: KeyFile) -> list[tuple[str, dt.datetime]]:
    """Non-signer keys other than the pending one, with their retirement time, in file order."""
    out = []
    for kid in live.kids:
        if kid == live.signer.kid or kid == state.pending:
            continue
        rec = state.keys.get(kid)
        at = rec.retired_at if rec and rec.retired_at else (rec.first_seen if rec else None)
        if at is not None:
            out.append((kid, at))
    return out


# --- target key orders, one per step


def publish_order(kids: Sequence[str], new: str) -> list[str]:
    """The new key last: every server verifies it before any signs with it."""
    return [*kids, new]


def promote_order(kids: Sequence[str], new: str) -> list[str]:
    """The new key first (it signs), the previous signer and the rest after it, in their order."""
    return [new, *(k for k in kids if k != new)]


def rotate_order(kids: Sequence[str], new: str) -> list[str]:
    """The documented K3s procedure: the new key first at once, the old ones after it."""
    return [new, *kids]


def prune_order(kids: Sequence[str], drop: Sequence[str]) -> list[str]:
    return [k for k in kids if k not in drop]


Action = Literal["publish", "promote", "prune", "rotate"]


def rotation_steps(strategy: str, state: State, live: KeyFile) -> list[Action]:
    """rotate-now's steps from here until a new key signs: a rotation under way is promoted; else staged
    publishes and then promotes, direct rotates in one step."""
    if phase(state, live) == PUBLISHED:
        return ["promote"]
    return ["rotate"] if strategy == "direct" else ["publish", "promote"]


@dataclasses.dataclass(frozen=True)
class Plan:
    action: Action
    due: dt.datetime  # when policy makes it due
    not_before: dt.datetime  # due, moved into the maintenance window
    drop: tuple[str, ...] = ()  # prune: the kids to drop
    reason: str = ""


def signer_since(state: State, live: KeyFile, live_mtime: dt.datetime) -> dt.datetime:
    rec = state.keys.get(live.signer.kid)
    return rec.signer_since if rec and rec.signer_since else live_mtime


class Policy(Protocol):
    """What the planner reads of the config (config.Config satisfies it)."""

    @property
    def strategy(self) -> str: ...
    @property
    def publish_wait(self) -> dt.timedelta: ...
    @property
    def grace_period(self) -> dt.timedelta: ...
    @property
    def rotation_interval(self) -> dt.timedelta: ...
    @property
    def maintenance_window(self) -> Optional[MaintenanceWindow]: ...


def _in_window(window: Optional[MaintenanceWindow], due: dt.datetime, now: dt.datetime) -> dt.datetime:
    """Due time, moved to the first opening of the window at or after it (and not before now: an overdue step
    waits for the next opening, not one in the past)."""
    if window is None:
        return due
    t = max(due, now)
    if window.contains(t):
        return t
    result: dt.datetime = window.next_start(t)
    return result


def candidates(cfg: Policy, state: State, live: KeyFile, now: dt.datetime, live_mtime: dt.datetime) -> list[Plan]:
    """Every step policy will want, with its due time. `cfg` needs strategy, publish_wait, grace_period,
    rotation_interval and maintenance_window."""
    out: list[Plan] = []
    win = cfg.maintenance_window
    ph = phase(state, live)
    if ph == PUBLISHED:
        due = (state.published_at or now) + cfg.publish_wait
        out.append(Plan("promote", due, _in_window(win, due, now), reason="publish-wait after publish"))
    ret = retired(state, live)
    if ret:
        first = prune.first_due(ret, cfg.grace_period) or now  # the grace rule: core/prune.py
        drop = tuple(prune.past_grace(ret, cfg.grace_period, max(now, first)))
        out.append(Plan("prune", first, _in_window(win, first, now), drop=drop, reason="grace-period after retire"))
    if ph != PUBLISHED:
        due = signer_since(state, live, live_mtime) + cfg.rotation_interval
        action: Action = "publish" if cfg.strategy == "staged" else "rotate"
        out.append(Plan(action, due, _in_window(win, due, now), reason="signer older than rotation-interval"))
    return out


_ORDER = {"promote": 0, "prune": 1, "publish": 2, "rotate": 2}


def next_plan(cfg: Policy, state: State, live: KeyFile, now: dt.datetime, live_mtime: dt.datetime) -> Optional[Plan]:
    """The step that comes next: the earliest; on a tie, promote before prune before a new rotation."""
    plans = candidates(cfg, state, live, now, live_mtime)
    if not plans:
        return None
    return min(plans, key=lambda p: (max(p.not_before, now), _ORDER[p.action]))


def due_plan(cfg: Policy, state: State, live: KeyFile, now: dt.datetime, live_mtime: dt.datetime) -> Optional[Plan]:
    p = next_plan(cfg, state, live, now, live_mtime)
    return p if p is not None and p.not_before <= now else None


def committed(state: State, step: str, before: Sequence[str], target: Sequence[str], now: dt.datetime) -> State:
    """The state after `step` took the live file from `before` to `target` (a rollback restores its snapshot
    separately). Records of keys that left the file are dropped."""
    s = copy.deepcopy(state)
    new = [k for k in target if k not in before]
    old_signer = expected_signer(s)
    for kid in new:
        s.keys[kid] = KeyRecord(first_seen=now, created=True)
    if step == "publish" and new:
        s.pending, s.published_at = new[0], now
    elif step in ("promote", "rotate"):
        s.keys.setdefault(target[0], KeyRecord(first_seen=now)).signer_since = now
        s.keys[target[0]].retired_at = None
        if old_signer is not None and old_signer != target[0] and old_signer in s.keys:
            s.keys[old_signer].retired_at = now
        s.pending, s.published_at, s.last_rotation = None, None, now
    s.keys = {k: v for k, v in s.keys.items() if k in target}
    return s
