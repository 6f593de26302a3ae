"""The daemon's decisions as tables of literal times: first run on an old key, a missed run, windows across
midnight and DST changes, splay and back-off."""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from k3srotd.core import keys, planner, schedule
from k3srotd.core.model import State
from k3srotd.core.window import MaintenanceWindow

UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def T(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


@cache
def live() -> keys.KeyFile:
    k = ec.generate_private_key(ec.SECP256R1())
    pem = k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return keys.parse(pem, "service.key")


@dataclasses.dataclass
class Cfg:
    strategy: str = "staged"
    publish_wait: dt.timedelta = dt.timedelta(minutes=10)
    grace_period: dt.timedelta = dt.timedelta(hours=24)
    rotation_interval: dt.timedelta = dt.timedelta(days=90)
    maintenance_window: object = None


def decide(
    now: str, mtime: str, window: object = None, splay_s: int = 0, retry: str = "", automatic: bool = True
) -> schedule.Decision:
    lf = live()
    state = planner.observe(State(), lf, T(now), T(mtime)).state
    return schedule.decide(
        Cfg(maintenance_window=window),
        state,
        lf,
        T(now),
        T(mtime),
        dt.timedelta(seconds=splay_s),
        T(retry) if retry else None,
        automatic=automatic,
    )


NIGHTS = MaintenanceWindow.parse({"days": ["fri", "sat"], "start": "23:00", "end": "02:00"}, tz=UTC)
BERLIN_NIGHTS = MaintenanceWindow.parse({"start": "02:30", "end": "03:30"}, tz=BERLIN)


@pytest.mark.parametrize(
    "now, mtime, window, splay, retry, act, wake",
    [
        # first run on a key older than rotation-interval: act now
        ("2026-06-01T12:00:00", "2025-01-01T00:00:00", None, 0, "", True, "2026-06-01T12:00:00"),
        # a young key: sleep, but look again within ten minutes
        ("2026-06-01T12:00:00", "2026-05-01T00:00:00", None, 0, "", False, "2026-06-01T12:10:00"),
        # due in 5 minutes: wake then
        ("2026-07-29T23:55:00", "2026-05-01T00:00:00", None, 0, "", False, "2026-07-30T00:00:00"),
        # missed while the daemon was down (due weeks ago): act at once, like Persistent=
        ("2026-09-01T08:00:00", "2026-05-01T00:00:00", None, 0, "", True, "2026-09-01T08:00:00"),
        # splay delays a due step for this node
        ("2026-07-30T00:00:00", "2026-05-01T00:00:00", None, 300, "", False, "2026-07-30T00:05:00"),
        # a failed step backs off
        ("2026-09-01T08:00:00", "2026-05-01T00:00:00", None, 0, "2026-09-01T08:04:00", False, "2026-09-01T08:04:00"),
        # window across midnight, Friday 23:00 to Saturday 02:00: Wednesday noon waits (looking every 10 min)
        ("2026-11-25T12:00:00", "2025-01-01T00:00:00", NIGHTS, 0, "", False, "2026-11-25T12:10:00"),
        # ... Saturday 01:30 is inside Friday's opening
        ("2026-11-28T01:30:00", "2025-01-01T00:00:00", NIGHTS, 0, "", True, "2026-11-28T01:30:00"),
        # ... Saturday 02:00 is past it, Saturday 23:00 opens again
        ("2026-11-28T22:55:00", "2025-01-01T00:00:00", NIGHTS, 0, "", False, "2026-11-28T23:00:00"),
    ],
)
def test_decide(now: str, mtime: str, window: object, splay: int, retry: str, act: bool, wake: str) -> None:
    d = decide(now, mtime, window, splay, retry)
    assert (d.plan is not None) == act
    assert d.wake == T(wake)


EARLY = MaintenanceWindow.parse({"start": "02:00", "end": "05:00"}, tz=UTC)
SHORT = MaintenanceWindow.parse({"start": "02:00", "end": "02:10"}, tz=UTC)


def walk(now: str, mtime: str, window: object, splay_s: int, retry: str = "") -> dt.datetime:
    """Follow the daemon's wakes from `now` until a decision acts; the instant it acts."""
    t = T(now)
    for _ in range(500):
        d = decide(t.isoformat()[:19], mtime, window, splay_s, retry)
        if d.plan is not None:
            return t
        assert d.wake > t
        t = d.wake
    raise AssertionError(f"no step in 500 wakes from {now}; last start {d.start}")


@pytest.mark.parametrize(
    "now, mtime, window, splay, retry, acts",
    [
        # an overdue step waits for the opening, then this node's splay into it
        ("2026-01-10T01:00:00", "2025-01-01T00:00:00", EARLY, 300, "", "2026-01-10T02:05:00"),
        # a splay longer than the whole opening is wrapped into it, never carried to the next day
        ("2026-01-10T01:00:00", "2025-01-01T00:00:00", SHORT, 720, "", "2026-01-10T02:02:00"),
        # found inside the opening past this node's slot: at once
        ("2026-01-10T02:07:00", "2025-01-01T00:00:00", SHORT, 60, "", "2026-01-10T02:07:00"),
        # due inside the opening (the key turns 90 days old at 02:30): the splay counts from then
        ("2026-04-01T01:00:00", "2026-01-01T02:30:00", EARLY, 600, "", "2026-04-01T02:40:00"),
        # ... wrapped into what is left of the opening: 2 h of splay modulo the 20 min left after 04:40
        ("2026-04-01T01:00:00", "2026-01-01T04:40:00", EARLY, 7200, "", "2026-04-01T04:40:00"),
        # a back-off past the slot: the splay counts from its end, inside the opening
        ("2026-01-10T01:00:00", "2025-01-01T00:00:00", EARLY, 300, "2026-01-10T03:00:00", "2026-01-10T03:05:00"),
    ],
)
def test_splay_inside_the_window(now: str, mtime: str, window: object, splay: int, retry: str, acts: str) -> None:
    at = walk(now, mtime, window, splay, retry)
    assert at == T(acts)
    assert window is not None and window.contains(at)  # type: ignore[attr-defined]


def test_window_on_dst_days_berlin() -> None:
    # spring forward, 29 March 2026: 02:00 -> 03:00 local; a 02:30-03:30 window opens when the gap ends,
    # at 03:00 CEST = 01:00 UTC
    d = decide("2026-03-29T00:30:00", "2025-01-01T00:00:00", BERLIN_NIGHTS)
    assert d.plan is None and d.start == T("2026-03-29T01:00:00")
    # fall back, 25 October 2026: 02:30 CEST = 00:30 UTC is the first opening of the night
    d = decide("2026-10-25T00:00:00", "2025-01-01T00:00:00", BERLIN_NIGHTS)
    assert d.start == T("2026-10-25T00:30:00")
    assert decide("2026-10-25T00:45:00", "2025-01-01T00:00:00", BERLIN_NIGHTS).plan is not None


def test_splay_is_stable_per_node_and_bounded() -> None:
    limit = dt.timedelta(minutes=15)
    a = schedule.splay("server-a", limit)
    assert a == schedule.splay("server-a", limit)
    spread = {schedule.splay(f"server-{i}", limit) for i in range(50)}
    assert len(spread) > 40 and all(dt.timedelta(0) <= s < limit for s in spread)
    assert schedule.splay("x", dt.timedelta(0)) == dt.timedelta(0)


@pytest.mark.parametrize(
    "now, mtime, window, held, wake, start",
    [
        # an old key, no opt-in: held, looked at again after recheck; when it would have started is still known
        ("2026-06-01T12:00:00", "2025-01-01T00:00:00", None, True, "2026-06-01T12:10:00", "2025-04-01T00:00:00"),
        # a young key: nothing due, the same wake as with the opt-in
        ("2026-06-01T12:00:00", "2026-05-01T00:00:00", None, False, "2026-06-01T12:10:00", "2026-07-30T00:00:00"),
        # due inside the window's opening: held there too
        ("2026-11-28T01:30:00", "2025-01-01T00:00:00", NIGHTS, True, "2026-11-28T01:40:00", "2026-11-28T01:30:00"),
        # due, outside the window: waits for the opening, not held yet
        ("2026-11-25T12:00:00", "2025-01-01T00:00:00", NIGHTS, False, "2026-11-25T12:10:00", "2026-11-27T23:00:00"),
    ],
)
def test_without_the_opt_in_nothing_starts(
    now: str, mtime: str, window: object, held: bool, wake: str, start: str
) -> None:
    d = decide(now, mtime, window, automatic=False)
    assert d.plan is None
    assert d.held == held
    assert d.wake == T(wake)
    assert d.next_plan is not None and d.next_plan.action == "publish"
    assert d.start == T(start)


@pytest.mark.parametrize(
    "now, mtime, automatic, says",
    [
        (
            "2026-06-01T12:00:00",
            "2026-05-01T00:00:00",
            True,
            "phase idle; next publish at 2026-07-30T00:00:00Z (in 58d",
        ),
        (
            "2026-06-01T12:00:00",
            "2026-05-01T00:00:00",
            False,
            "phase idle; automatic steps are off: publish would start at 2026-07-30T00:00:00Z (in 58d",
        ),
        (
            "2026-06-01T12:00:00",
            "2025-01-01T00:00:00",
            False,
            "phase idle; publish is due (since 2025-04-01T00:00:00Z), but automatic steps are off: run "
            "`k3srotd rotate-now`, or to opt in, write `automatic: true` to "
            "/etc/k3srotd/config.yaml.d/50-automatic.yaml",
        ),
    ],
)
def test_the_status_line_says_what_would_happen_and_how_to_opt_in(
    now: str, mtime: str, automatic: bool, says: str
) -> None:
    d = decide(now, mtime, automatic=automatic)
    text = schedule.describe(d, "idle", T(now), automatic, None)
    assert text.startswith(says), text
    assert ("systemctl reload k3srotd" in text) == (not automatic)
