"""The maintenance window: when a step that restarts K3s may start. Pure: the clock is an argument.

Config (`maintenance-window`), local time, like kured's reboot window::

    maintenance-window: {days: [sat, sun], start: "02:00", end: "05:00"}

- `days`: the days the window *starts* on (`mon` .. `sun`, or full names; case does not matter). Optional:
  every day when left out.
- `start`, `end`: wall-clock `HH:MM` in local time. Quote them: YAML 1.1 reads an unquoted `02:00` as
  the number 120, which is refused with a hint. When `end` is not after `start` the window crosses midnight
  and ends on the next day (`{days: [sat], start: "22:00", end: "04:00"}` is open Saturday 22:00 to
  Sunday 04:00).
  `end: "24:00"` is midnight; `start` equal to `end` is a 24-hour window.
- No window at all (`None`) means any time: use the module functions `is_open` and `next_open`, which accept
  None.

Times go in and out as aware datetimes; results are in the time zone of the `now` passed in (pass UTC and
add timedeltas safely: arithmetic on a zoneinfo datetime is wall-clock arithmetic).

Wall-clock semantics decide across DST changes: on a spring-forward day the window opens at the first
instant whose local time is at or after `start` (so a 02:30 start opens at 03:00 when 02:00-03:00 does not
exist, and a window lying wholly inside the skipped hour does not open that day); on a fall-back day a
repeated local time is inside the window both times it occurs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from k3srotd.core.text import show
from k3srotd.errors import ConfigError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_KEYS = ("days", "start", "end")
_ONE_SECOND = dt.timedelta(seconds=1)
_UTC = dt.timezone.utc


@dataclass(frozen=True)
class MaintenanceWindow:
    """A weekly window of local wall-clock time. `tz` None means the system's local time zone."""

    days: frozenset[int]  # 0 = Monday .. 6 = Sunday: the days the window starts on
    start: dt.time
    end: dt.time
    tz: Optional[dt.tzinfo] = None

    def __post_init__(self) -> None:
        if not self.days or not all(isinstance(d, int) and 0 <= d <= 6 for d in self.days):
            raise ValueError(f"days must be a non-empty set of 0..6, got {show(sorted(self.days))}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start and end are wall-clock times without a time zone")

    @classmethod
    def parse(
        cls,
        value: Any,
        key_name: str = "maintenance-window",
        file: object = None,
        tz: Optional[dt.tzinfo] = None,
    ) -> MaintenanceWindow:
        """Build a window from the config value; raise ConfigError, one line naming the key (and the file)."""

        def fail(problem: str) -> ConfigError:
            where = f"{file}: " if file is not None else ""
            return ConfigError(f"{where}key {key_name!r}: {problem}")

        if not isinstance(value, dict):
            example = '{days: [sat, sun], start: "02:00", end: "05:00"}'
            raise fail(f"expected a mapping such as {example}, got {show(value)}")
        unknown = sorted(str(k) for k in value if k not in _KEYS)
        if unknown:
            raise fail(f"unknown key {show(unknown[0])} (the keys are days, start, end)")
        for k in ("start", "end"):
            if k not in value:
                raise fail(f'{k} is missing (write it as "HH:MM")')
        try:
            days = _parse_days(value.get("days"))
            start = _parse_time(value["start"], "start", allow_24=False)
            end = _parse_time(value["end"], "end", allow_24=True)
        except ValueError as e:
            raise fail(str(e)) from None
        return cls(days=days, start=start, end=end, tz=tz)

    @property
    def crosses_midnight(self) -> bool:
        """True when the window ends on the day after it starts (`end` not after `start`)."""
        return self.end <= self.start

    def __str__(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days)) if len(self.days) < 7 else "daily"
        end = "24:00" if self.end == dt.time(0, 0) else self.end.strftime("%H:%M")
        return f"{days} {self.start.strftime('%H:%M')}-{end}"

    # -- decisions -------------------------------------------------------------------------------------------

    def contains(self, now: dt.datetime) -> bool:
        """Is the window open at the instant `now` (an aware datetime)?"""
        local = self._local(now)
        t = local.time()
        day = local.weekday()
        if not self.crosses_midnight:
            return day in self.days and self.start <= t < self.end
        return (day in self.days and t >= self.start) or ((day - 1) % 7 in self.days and t < self.end)

    def next_start(self, now: dt.datetime) -> dt.datetime:
        """The first instant at or after `now` at which the window opens, in the time zone of `now`.

        If `now` is inside the window, this is the start of the *next* opening (`next_open`: now if open).
        """
        self._local(now)  # checks awareness
        for candidate in self._openings(now):
            if candidate >= now:
                return candidate.astimezone(now.tzinfo)
        raise AssertionError("a weekly window opens at least once in five weeks")  # pragma: no cover

    def next_open(self, now: dt.datetime) -> dt.datetime:
        """`now` if the window is open, else the instant it next opens."""
        return now if self.contains(now) else self.next_start(now)

    def opened_at(self, now: dt.datetime) -> dt.datetime:
        """When the opening that contains `now` began (in the zone of `now`); `now` itself if it is closed."""
        if not self.contains(now):
            return now
        last = now
        for candidate in self._openings(now):
            if candidate > now:
                break
            last = candidate
        return last.astimezone(now.tzinfo)

    def closes_at(self, now: dt.datetime) -> Optional[dt.datetime]:
        """When the opening containing `now` ends (in the zone of `now`).

        None if the window is closed at `now`, or never closes (every day, 24 hours).
        """
        if not self.contains(now):
            return None
        local = self._local(now)
        for offset in range(-1, 9):
            day = local.date() + dt.timedelta(days=offset)
            for inst in sorted([i for i, _ in self._instants(day, self.end)] + list(self._transitions(day))):
                if inst > now and not self.contains(inst):
                    return inst.astimezone(now.tzinfo)
        return None

    # -- helpers ---------------------------------------------------------------------------------------------

    def _local(self, instant: dt.datetime) -> dt.datetime:
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"{instant!r} has no time zone: pass an aware datetime")
        # astimezone(None) is the system's local zone, offset correct for that instant.
        return instant.astimezone(self.tz)

    def _utc(self, naive: dt.datetime, fold: int) -> dt.datetime:
        local = naive.replace(fold=fold)
        aware = local.replace(tzinfo=self.tz) if self.tz is not None else local.astimezone()
        return aware.astimezone(_UTC)

    def _instants(self, day: dt.date, wall: dt.time) -> Iterator[tuple[dt.datetime, bool]]:
        """The instants whose local time is `wall` on `day`, each with "is the repeat of a fall-back hour".

        For a wall time skipped by a spring-forward, the one instant is where the gap ends.
        """
        naive = dt.datetime.combine(day, wall)
        found = []
        for fold in (0, 1):
            found.append(self._utc(naive, fold))
        exact = [i for i in found if self._local(i).replace(tzinfo=None) == naive]
        if exact:
            first = min(exact)
            yield first, False
            for inst in exact:
                if inst != first:
                    yield inst, True
            return
        lo, hi = sorted(found)
        # Skipped by a spring-forward: bisect for the first instant whose wall time is at or after `wall`.
        while hi - lo > _ONE_SECOND:
            mid = (lo + (hi - lo) / 2).replace(microsecond=0)
            if self._local(mid).replace(tzinfo=None) >= naive:
                hi = mid
            else:
                lo = mid
        yield hi, False

    def _transitions(self, day: dt.date) -> Iterator[dt.datetime]:
        """The instant on `day` at which the UTC offset changes (a DST change), if there is one."""
        lo, hi = (self._utc(dt.datetime.combine(d, dt.time(0)), 0) for d in (day, day + dt.timedelta(days=1)))
        before, after = self._local(lo).utcoffset(), self._local(hi).utcoffset()
        if before == after:
            return
        while hi - lo > _ONE_SECOND:
            mid = (lo + (hi - lo) / 2).replace(microsecond=0)
            if self._local(mid).utcoffset() == after:
                hi = mid
            else:
                lo = mid
        yield hi

    def _openings(self, now: dt.datetime) -> Iterator[dt.datetime]:
        """The instants at which an opening starts, in order, from the day before `now` on.

        The repeat of a fall-back hour, or a clock change that moves local time into the window, is a start
        only if the window was closed just before it.
        """
        first = self._local(now).date() - dt.timedelta(days=1)
        for offset in range(36):  # five weeks: enough even when DST swallows a one-day window's opening
            day = first + dt.timedelta(days=offset)
            if day.weekday() not in self.days and (day.weekday() - 1) % 7 not in self.days:
                continue
            candidates = [*self._instants(day, self.start), *((t, True) for t in self._transitions(day))]
            last = None
            for inst, repeat in sorted(candidates):
                if inst != last and self.contains(inst) and not (repeat and self.contains(inst - _ONE_SECOND)):
                    last = inst
                    yield inst


def is_open(window: Optional[MaintenanceWindow], now: dt.datetime) -> bool:
    """No window means any time."""
    return True if window is None else window.contains(now)


def next_open(window: Optional[MaintenanceWindow], now: dt.datetime) -> dt.datetime:
    """`now` when a step may start now, else when it next may. No window means now."""
    return now if window is None else window.next_open(now)


def _parse_days(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset(range(7))
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"days: expected a list such as [sat, sun], got {show(value)}")
    if not items:
        raise ValueError("days: is empty; leave it out for every day")
    days = set()
    for item in items:
        # YAML 1.1 reads some bare words as booleans; no day name is one, so a bool here is a typo.
        name = item.strip().lower() if isinstance(item, str) else None
        if name in DAY_NAMES:
            days.add(DAY_NAMES.index(name))
        elif name in _FULL_NAMES:
            days.add(_FULL_NAMES.index(name))
        else:
            raise ValueError(f"days: {show(item)} is not a day (use {', '.join(DAY_NAMES)})")
    return frozenset(days)


def _parse_time(value: Any, name: str, allow_24: bool) -> dt.time:
    if isinstance(value, dt.time) and value.tzinfo is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        h, m = divmod(value, 60)
        raise ValueError(
            f'{name}: got the number {value}; quote the time, e.g. "{h:02d}:{m:02d}" '
            "(YAML reads an unquoted HH:MM as a number)"
        )
    if not isinstance(value, str):
        raise ValueError(f'{name}: expected a time such as "02:00", got {show(value)}')
    text = value.strip()
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
        raise ValueError(f'{name}: {value!r} is not a time as HH:MM, e.g. "02:00"')
    h, m = int(parts[0]), int(parts[1])
    if allow_24 and (h, m) == (24, 0):
        return dt.time(0, 0)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        last = "24:00" if allow_24 else "23:59"
        raise ValueError(f"{name}: {value!r} is not a time of day (00:00 to {last})")
    return dt.time(h, m)
