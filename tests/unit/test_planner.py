"""Pure decisions, as tables of literal times."""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from k3srotd.core import keys, planner
from k3srotd.core.model import KeyRecord, State
from k3srotd.core.window import MaintenanceWindow

UTC = dt.timezone.utc


def T(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


@cache
def block(name: str) -> keys.KeyBlock:
    k = ec.generate_private_key(ec.SECP256R1())
    pem = k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return keys.parse(pem, name).signer


def live(*names: str) -> keys.KeyFile:
    return keys.parse(b"".join(block(n).raw for n in names), "service.key")


def kid(name: str) -> str:
    return block(name).kid


@dataclasses.dataclass
class Cfg:
    strategy: str = "staged"
    publish_wait: dt.timedelta = dt.timedelta(minutes=10)
    grace_period: dt.timedelta = dt.timedelta(hours=24)
    rotation_interval: dt.timedelta = dt.timedelta(days=90)
    maintenance_window: object = None


def test_first_sight_of_a_hand_rotated_file() -> None:
    """A non-signer key k3srotd did not retire counts as retired when first seen; the signer's age is the mtime."""
    now, mtime = T("2026-03-01T12:00:00"), T("2026-01-01T00:00:00")
    obs = planner.observe(State(), live("a", "b"), now, mtime)
    s = obs.state
    assert s.keys[kid("a")].signer_since == mtime
    assert s.keys[kid("b")].retired_at == now
    assert planner.phase(s, live("a", "b")) == planner.PROMOTED
    plan = planner.next_plan(Cfg(), s, live("a", "b"), now, mtime)
    assert (plan.action, plan.not_before, plan.drop) == ("prune", T("2026-03-02T12:00:00"), (kid("b"),))


@pytest.mark.parametrize(
    "mtime, now, action, not_before",
    [
        # signer rotated 89 days ago: rotation due in a day
        ("2026-01-01T00:00:00", "2026-03-31T00:00:00", "publish", "2026-04-01T00:00:00"),
        # older than the interval: due in the past (a missed run is done at once)
        ("2025-01-01T00:00:00", "2026-03-31T00:00:00", "publish", "2025-04-01T00:00:00"),
    ],
)
def test_rotation_due_from_signer_age(mtime: str, now: str, action: str, not_before: str) -> None:
    lf = live("a")
    s = planner.observe(State(), lf, T(now), T(mtime)).state
    plan = planner.next_plan(Cfg(), s, lf, T(now), T(mtime))
    assert (plan.action, plan.not_before) == (action, T(not_before))
    due = planner.due_plan(Cfg(), s, lf, T(now), T(mtime))
    assert (due is not None) == (T(not_before) <= T(now))


def test_direct_strategy_rotates() -> None:
    lf = live("a")
    s = planner.observe(State(), lf, T("2026-06-01T00:00:00"), T("2026-01-01T00:00:00")).state
    plan = planner.next_plan(Cfg(strategy="direct"), s, lf, T("2026-06-01T00:00:00"), T("2026-01-01T00:00:00"))
    assert plan.action == "rotate"


def test_full_staged_cycle_through_committed_states() -> None:
    t0 = T("2026-05-01T10:00:00")
    s = planner.observe(State(), live("a"), t0, T("2026-01-01T00:00:00")).state
    # publish: new key last, verify-only
    assert planner.publish_order(live("a").kids, kid("n")) == [kid("a"), kid("n")]
    s = planner.committed(s, "publish", [kid("a")], [kid("a"), kid("n")], t0)
    lf = live("a", "n")
    assert planner.phase(s, lf) == planner.PUBLISHED
    plan = planner.next_plan(Cfg(), s, lf, t0, t0)
    assert (plan.action, plan.not_before) == ("promote", T("2026-05-01T10:10:00"))
    # promote: new first, old retired now
    t1 = T("2026-05-01T10:10:00")
    assert planner.promote_order(lf.kids, kid("n")) == [kid("n"), kid("a")]
    s = planner.committed(s, "promote", lf.kids, [kid("n"), kid("a")], t1)
    lf = live("n", "a")
    assert s.keys[kid("a")].retired_at == t1 and s.keys[kid("n")].signer_since == t1
    assert s.last_rotation == t1 and s.pending is None
    obs = planner.observe(s, lf, t1, t1)
    assert obs.notes == () and not obs.adopted
    plan = planner.next_plan(Cfg(), s, lf, t1, t1)
    assert (plan.action, plan.not_before, plan.drop) == ("prune", T("2026-05-02T10:10:00"), (kid("a"),))
    # a second before grace: nothing due; at grace: prune
    assert planner.due_plan(Cfg(), s, lf, T("2026-05-02T10:09:59"), t1) is None
    assert planner.due_plan(Cfg(), s, lf, T("2026-05-02T10:10:00"), t1).action == "prune"
    s = planner.committed(s, "prune", lf.kids, [kid("n")], T("2026-05-02T10:10:00"))
    lf = live("n")
    assert planner.phase(s, lf) == planner.IDLE
    plan = planner.next_plan(Cfg(), s, lf, T("2026-05-02T10:10:00"), t1)
    assert (plan.action, plan.not_before) == ("publish", T("2026-07-30T10:10:00"))


def test_keys_retired_at_different_times_are_pruned_each_after_its_grace() -> None:
    s = State(
        keys={
            kid("a"): KeyRecord(first_seen=T("2026-01-01T00:00:00"), signer_since=T("2026-01-03T00:00:00")),
            kid("b"): KeyRecord(first_seen=T("2026-01-01T00:00:00"), retired_at=T("2026-01-02T00:00:00")),
            kid("c"): KeyRecord(first_seen=T("2026-01-01T00:00:00"), retired_at=T("2026-01-03T00:00:00")),
        }
    )
    lf = live("a", "b", "c")
    now = T("2026-01-03T12:00:00")
    plan = planner.due_plan(Cfg(), s, lf, now, now)
    assert plan.action == "prune" and plan.drop == (kid("b"),)
    assert planner.prune_order(lf.kids, plan.drop) == [kid("a"), kid("c")]


def test_a_signer_changed_by_hand_is_adopted_not_fought() -> None:
    t0 = T("2026-02-01T00:00:00")
    s = planner.observe(State(), live("a"), t0, t0).state
    t1 = T("2026-02-05T00:00:00")
    obs = planner.observe(s, live("h", "a"), t1, T("2026-02-04T00:00:00"))
    assert obs.adopted and "changed outside k3srotd" in obs.notes[0]
    assert obs.state.keys[kid("h")].signer_since == T("2026-02-04T00:00:00")
    assert obs.state.keys[kid("a")].retired_at == t1


def test_pending_key_is_never_pruned_or_counted_retired() -> None:
    t0 = T("2026-05-01T10:00:00")
    s = planner.observe(State(), live("a"), t0, t0).state
    s = planner.committed(s, "publish", [kid("a")], [kid("a"), kid("n")], t0)
    assert planner.retired(s, live("a", "n")) == []


def test_maintenance_window_holds_a_due_step() -> None:
    win = MaintenanceWindow.parse({"days": ["sat", "sun"], "start": "02:00", "end": "05:00"}, tz=UTC)
    lf = live("a")
    now = T("2026-11-25T12:00:00")  # a Wednesday
    s = planner.observe(State(), lf, now, T("2026-01-01T00:00:00")).state
    plan = planner.next_plan(Cfg(maintenance_window=win), s, lf, now, T("2026-01-01T00:00:00"))
    assert plan.due == T("2026-04-01T00:00:00")
    assert plan.not_before == T("2026-11-28T02:00:00")
    assert planner.due_plan(Cfg(maintenance_window=win), s, lf, now, T("2026-01-01T00:00:00")) is None
