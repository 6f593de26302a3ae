"""The maintenance window: tables of literal times in Europe/Berlin (DST: last Sundays of March, October)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from k3srotd.core.window import MaintenanceWindow, is_open, next_open
from k3srotd.errors import ConfigError

if not Path("/usr/share/zoneinfo/Europe/Berlin").exists():  # pragma: no cover
    pytest.skip("needs the system time zone database (tzdata)", allow_module_level=True)

from zoneinfo import ZoneInfo

BERLIN = ZoneInfo("Europe/Berlin")
CET = dt.timezone(dt.timedelta(hours=1))
CEST = dt.timezone(dt.timedelta(hours=2))


def at(text: str) -> dt.datetime:
    """An instant written with its offset, e.g. '2024-03-31 03:00+02:00'."""
    return dt.datetime.fromisoformat(text)


def window(spec: dict[str, object], tz: dt.tzinfo | None = BERLIN) -> MaintenanceWindow:
    return MaintenanceWindow.parse(spec, tz=tz)


WEEKEND = {"days": ["sat", "sun"], "start": "02:00", "end": "05:00"}
FRIDAY_NIGHT = {"days": ["fri"], "start": "22:00", "end": "04:00"}

# 2024-01-05 is a Friday, 2024-01-06 a Saturday, 2024-01-08 a Monday (CET, +01:00).
CONTAINS = [
    (WEEKEND, "2024-01-06 01:59:59+01:00", False),
    (WEEKEND, "2024-01-06 02:00:00+01:00", True),
    (WEEKEND, "2024-01-06 04:59:59+01:00", True),
    (WEEKEND, "2024-01-06 05:00:00+01:00", False),
    (WEEKEND, "2024-01-07 03:00:00+01:00", True),
    (WEEKEND, "2024-01-08 03:00:00+01:00", False),
    (WEEKEND, "2024-01-06 01:30:00+00:00", True),  # 02:30 in Berlin: the offset of `now` does not matter
    # across midnight: the days name the day it starts
    (FRIDAY_NIGHT, "2024-01-05 21:59:59+01:00", False),
    (FRIDAY_NIGHT, "2024-01-05 22:00:00+01:00", True),
    (FRIDAY_NIGHT, "2024-01-06 00:00:00+01:00", True),
    (FRIDAY_NIGHT, "2024-01-06 03:59:59+01:00", True),
    (FRIDAY_NIGHT, "2024-01-06 04:00:00+01:00", False),
    (FRIDAY_NIGHT, "2024-01-06 23:00:00+01:00", False),  # Saturday night is not Friday night
    (FRIDAY_NIGHT, "2024-01-05 01:00:00+01:00", False),  # Friday early morning belongs to Thursday night
    ({"days": ["sat"], "start": "20:00", "end": "24:00"}, "2024-01-06 23:59:59+01:00", True),
    ({"days": ["sat"], "start": "20:00", "end": "24:00"}, "2024-01-07 00:00:00+01:00", False),
    # start == end: 24 hours from start
    ({"days": ["mon"], "start": "06:00", "end": "06:00"}, "2024-01-08 06:00:00+01:00", True),
    ({"days": ["mon"], "start": "06:00", "end": "06:00"}, "2024-01-09 05:59:59+01:00", True),
    ({"days": ["mon"], "start": "06:00", "end": "06:00"}, "2024-01-09 06:00:00+01:00", False),
    ({"days": ["mon"], "start": "06:00", "end": "06:00"}, "2024-01-08 05:59:59+01:00", False),
    # no days: every day
    ({"start": "02:00", "end": "03:00"}, "2024-01-10 02:30:00+01:00", True),
    # spring forward, Sunday 2024-03-31: 02:00 CET jumps to 03:00 CEST
    ({"days": ["sun"], "start": "02:30", "end": "05:00"}, "2024-03-31 01:59:59+01:00", False),
    ({"days": ["sun"], "start": "02:30", "end": "05:00"}, "2024-03-31 03:00:00+02:00", True),
    ({"days": ["sun"], "start": "01:00", "end": "03:00"}, "2024-03-31 01:59:59+01:00", True),
    ({"days": ["sun"], "start": "01:00", "end": "03:00"}, "2024-03-31 03:00:00+02:00", False),
    # fall back, Sunday 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:xx happens twice
    ({"days": ["sun"], "start": "02:00", "end": "02:30"}, "2024-10-27 02:15:00+02:00", True),
    ({"days": ["sun"], "start": "02:00", "end": "02:30"}, "2024-10-27 02:45:00+02:00", False),
    ({"days": ["sun"], "start": "02:00", "end": "02:30"}, "2024-10-27 02:15:00+01:00", True),
    ({"days": ["sun"], "start": "02:00", "end": "02:30"}, "2024-10-27 02:45:00+01:00", False),
]


@pytest.mark.parametrize(("spec", "now", "expected"), CONTAINS)
def test_contains(spec: dict[str, object], now: str, expected: bool) -> None:
    assert window(spec).contains(at(now)) is expected


NEXT_START = [
    # closed: the next opening
    (WEEKEND, "2024-01-05 12:00:00+01:00", "2024-01-06 02:00:00+01:00"),
    (WEEKEND, "2024-01-06 05:00:00+01:00", "2024-01-07 02:00:00+01:00"),
    (WEEKEND, "2024-01-07 05:00:00+01:00", "2024-01-13 02:00:00+01:00"),
    # exactly at the start: now
    (WEEKEND, "2024-01-06 02:00:00+01:00", "2024-01-06 02:00:00+01:00"),
    # inside: the start of the next opening
    (WEEKEND, "2024-01-06 03:00:00+01:00", "2024-01-07 02:00:00+01:00"),
    (FRIDAY_NIGHT, "2024-01-06 01:00:00+01:00", "2024-01-12 22:00:00+01:00"),
    (FRIDAY_NIGHT, "2024-01-05 12:00:00+01:00", "2024-01-05 22:00:00+01:00"),
    # spring forward: 02:30 does not exist on 2024-03-31, the window opens when the gap ends (03:00 CEST)
    (
        {"days": ["sun"], "start": "02:30", "end": "05:00"},
        "2024-03-30 12:00:00+01:00",
        "2024-03-31 03:00:00+02:00",
    ),
    # ... and a window wholly inside the skipped hour does not open that day at all
    (
        {"days": ["sun"], "start": "02:00", "end": "02:30"},
        "2024-03-30 12:00:00+01:00",
        "2024-04-07 02:00:00+02:00",
    ),
    # a daily window across the change keeps its wall-clock time on both sides
    ({"start": "04:00", "end": "05:00"}, "2024-03-30 12:00:00+01:00", "2024-03-31 04:00:00+02:00"),
    ({"start": "04:00", "end": "05:00"}, "2024-10-26 12:00:00+02:00", "2024-10-27 04:00:00+01:00"),
    # fall back: a window inside the repeated hour opens twice
    (
        {"days": ["sun"], "start": "02:00", "end": "02:30"},
        "2024-10-27 00:00:00+02:00",
        "2024-10-27 02:00:00+02:00",
    ),
    (
        {"days": ["sun"], "start": "02:00", "end": "02:30"},
        "2024-10-27 02:45:00+02:00",
        "2024-10-27 02:00:00+01:00",
    ),
    # ... and a window the clock falls back into opens again at the change (03:00 CEST = 02:00 CET)
    (
        {"days": ["sun"], "start": "01:30", "end": "02:30"},
        "2024-10-27 02:45:00+02:00",
        "2024-10-27 02:00:00+01:00",
    ),
    # ... but a window spanning it opens once: the repeat of 02:00 is not a new start
    (
        {"days": ["sun"], "start": "02:00", "end": "05:00"},
        "2024-10-27 02:30:00+02:00",
        "2024-11-03 02:00:00+01:00",
    ),
    # a whole-day window on every day never closes: its next start is tomorrow's
    ({"start": "00:00", "end": "24:00"}, "2024-01-06 12:00:00+01:00", "2024-01-07 00:00:00+01:00"),
]


@pytest.mark.parametrize(("spec", "now", "expected"), NEXT_START)
def test_next_start(spec: dict[str, object], now: str, expected: str) -> None:
    got = window(spec).next_start(at(now))
    assert got == at(expected)
    assert got.utcoffset() == at(now).utcoffset(), "the result is in the time zone of `now`"
    utc = window(spec).next_start(at(now).astimezone(dt.timezone.utc))
    assert utc == at(expected) and utc.tzinfo is dt.timezone.utc


def test_next_open_is_now_when_open_and_next_start_otherwise() -> None:
    w = window(WEEKEND)
    assert w.next_open(at("2024-01-06 03:00:00+01:00")) == at("2024-01-06 03:00:00+01:00")
    assert w.next_open(at("2024-01-08 03:00:00+01:00")) == at("2024-01-13 02:00:00+01:00")


CLOSES_AT = [
    (WEEKEND, "2024-01-06 03:00:00+01:00", "2024-01-06 05:00:00+01:00"),
    (WEEKEND, "2024-01-08 03:00:00+01:00", None),
    (FRIDAY_NIGHT, "2024-01-05 23:00:00+01:00", "2024-01-06 04:00:00+01:00"),
    (
        {"days": ["sun"], "start": "02:00", "end": "05:00"},
        "2024-10-27 02:30:00+02:00",
        "2024-10-27 05:00:00+01:00",
    ),
    (
        {"days": ["sat", "sun"], "start": "02:00", "end": "02:00"},
        "2024-01-06 12:00:00+01:00",
        "2024-01-08 02:00:00+01:00",
    ),
    ({"start": "00:00", "end": "24:00"}, "2024-01-06 12:00:00+01:00", None),
    # the clock falls back out of the window: it closes at the change and opens again at 02:30 CET
    (
        {"days": ["sun"], "start": "02:30", "end": "03:30"},
        "2024-10-27 02:45:00+02:00",
        "2024-10-27 02:00:00+01:00",
    ),
    # the clock springs forward past the end: it closes at the change
    (
        {"days": ["sun"], "start": "01:00", "end": "02:30"},
        "2024-03-31 01:45:00+01:00",
        "2024-03-31 03:00:00+02:00",
    ),
]


@pytest.mark.parametrize(("spec", "now", "expected"), CLOSES_AT)
def test_closes_at(spec: dict[str, object], now: str, expected: str | None) -> None:
    got = window(spec).closes_at(at(now))
    assert got == (None if expected is None else at(expected))


def test_system_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """tz=None uses the system's zone (TZ here), with the same DST behaviour."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        w = window({"days": ["sun"], "start": "02:30", "end": "05:00"}, tz=None)
        assert w.next_start(at("2024-03-30 12:00:00+01:00")) == at("2024-03-31 03:00:00+02:00")
        w = window({"days": ["sun"], "start": "02:00", "end": "02:30"}, tz=None)
        assert w.next_start(at("2024-10-27 02:45:00+02:00")) == at("2024-10-27 02:00:00+01:00")
        assert w.contains(at("2024-10-27 02:15:00+01:00"))
        assert not w.contains(at("2024-10-27 02:45:00+01:00"))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_no_window_is_always_open() -> None:
    now = at("2024-01-08 03:00:00+01:00")
    assert is_open(None, now)
    assert next_open(None, now) == now
    assert not is_open(window(WEEKEND), now)
    assert next_open(window(WEEKEND), now) == at("2024-01-13 02:00:00+01:00")


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        window(WEEKEND).contains(dt.datetime(2024, 1, 6, 3, 0))


def test_parse_accepts_names_case_and_a_single_day() -> None:
    w = MaintenanceWindow.parse({"days": ["Saturday", "SUN"], "start": "2:00", "end": "05:30"})
    assert w.days == frozenset({5, 6})
    assert w.start == dt.time(2, 0) and w.end == dt.time(5, 30)
    assert MaintenanceWindow.parse({"days": "mon", "start": "01:00", "end": "02:00"}).days == frozenset({0})
    assert MaintenanceWindow.parse({"start": dt.time(1, 0), "end": "02:00"}).days == frozenset(range(7))
    assert str(w) == "sat,sun 02:00-05:30"
    assert str(MaintenanceWindow.parse({"start": "22:00", "end": "24:00"})) == "daily 22:00-24:00"
    assert not w.crosses_midnight and window(FRIDAY_NIGHT).crosses_midnight


PARSE_ERRORS = [
    ("sat 02:00", "expected a mapping"),
    ({"days": ["sat"], "start": "02:00"}, "end is missing"),
    ({"days": ["sat"], "end": "02:00"}, "start is missing"),
    ({"days": ["sat"], "start": "02:00", "end": "05:00", "tz": "UTC"}, "unknown key 'tz'"),
    ({"days": ["sut"], "start": "02:00", "end": "05:00"}, "days: 'sut' is not a day"),
    ({"days": [True], "start": "02:00", "end": "05:00"}, "days: True is not a day"),
    ({"days": [], "start": "02:00", "end": "05:00"}, "days: is empty"),
    ({"days": 6, "start": "02:00", "end": "05:00"}, "days: expected a list"),
    (
        {"days": ["sat"], "start": 120, "end": "05:00"},
        'start: got the number 120; quote the time, e.g. "02:00"',
    ),
    ({"days": ["sat"], "start": "25:00", "end": "05:00"}, "start: '25:00' is not a time of day"),
    (
        {"days": ["sat"], "start": "24:00", "end": "05:00"},
        "start: '24:00' is not a time of day (00:00 to 23:59)",
    ),
    (
        {"days": ["sat"], "start": "02:00", "end": "05:60"},
        "end: '05:60' is not a time of day (00:00 to 24:00)",
    ),
    ({"days": ["sat"], "start": "2am", "end": "05:00"}, "start: '2am' is not a time as HH:MM"),
    ({"days": ["sat"], "start": None, "end": "05:00"}, "start: expected a time"),
]


@pytest.mark.parametrize(("value", "problem"), PARSE_ERRORS)
def test_parse_errors_name_the_key_and_file(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        MaintenanceWindow.parse(value, "maintenance-window", "/etc/k3srotd/config.yaml.d/10-window.yaml")
    text = str(e.value)
    assert text.startswith("/etc/k3srotd/config.yaml.d/10-window.yaml: key 'maintenance-window': ")
    assert problem in text
    assert "\n" not in text
    assert e.value.exit_code == 2


def test_parse_error_without_a_file_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^key 'maintenance-window': days: 'sut'"):
        MaintenanceWindow.parse({"days": ["sut"], "start": "02:00", "end": "05:00"})


def test_yaml_sexagesimal_trap() -> None:
    """Unquoted 2:00 in YAML 1.1 is 120 (base 60): refused with the hint, not taken as 00:02."""
    import yaml

    value = yaml.safe_load("w: {days: [sat], start: 2:00, end: '05:00'}")["w"]
    assert value["start"] == 120
    with pytest.raises(ConfigError, match=r'quote the time, e\.g\. "02:00"'):
        MaintenanceWindow.parse(value)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="days"):
        MaintenanceWindow(frozenset(), dt.time(1), dt.time(2))
    with pytest.raises(ValueError, match="days"):
        MaintenanceWindow(frozenset({7}), dt.time(1), dt.time(2))
    with pytest.raises(ValueError, match="wall-clock"):
        MaintenanceWindow(frozenset({1}), dt.time(1, tzinfo=dt.timezone.utc), dt.time(2))


def test_a_year_of_daily_openings_is_consistent() -> None:
    """Walk 2024 opening by opening: each start is open, the second before is closed, and it closes later."""
    w = window({"days": ["sat", "sun"], "start": "02:30", "end": "03:30"})
    now = at("2024-01-01 00:00:00+01:00").astimezone(dt.timezone.utc)
    starts = []
    while True:
        start = w.next_start(now)
        if start >= at("2025-01-01 00:00:00+01:00"):
            break
        assert w.contains(start)
        assert not w.contains(start.astimezone(dt.timezone.utc) - dt.timedelta(seconds=1))
        end = w.closes_at(start)
        assert end is not None and end > start
        starts.append(start)
        now = end.astimezone(dt.timezone.utc)
    # 104 weekend days in 2024; the spring-forward Sunday opens at 03:00 CEST instead of 02:30, and the
    # fall-back Sunday opens twice: 02:30-03:00 CEST, then (02:00 CET being before 02:30) 02:30-03:30 CET.
    assert len(starts) == 105
    assert at("2024-03-31 03:00:00+02:00") in starts
    assert at("2024-10-27 02:30:00+02:00") in starts
    assert at("2024-10-27 02:30:00+01:00") in starts
