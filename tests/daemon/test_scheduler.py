"""The APScheduler adapter (daemon/scheduler.py), with the real APScheduler: a job at a time, replaced by name;
an interval job; stop from another thread, also before start; APScheduler's own warnings as our records."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from k3srotd.daemon.scheduler import Scheduler

UTC = dt.timezone.utc


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((level, event, kw))


def test_at_runs_once_replaces_by_name_and_stop_ends_start() -> None:
    log = Recorder()
    s = Scheduler(lambda: log)  # type: ignore[arg-type,return-value]
    ran: list[str] = []
    now = dt.datetime.now(UTC)
    s.at(now + dt.timedelta(seconds=30), lambda: ran.append("late"), "tick")
    s.at(now, lambda: ran.append("tick"), "tick")  # replaces the one not yet run
    s.every(0.05, lambda: ran.append("beat"), "watchdog")

    def stop_soon() -> None:
        time.sleep(0.5)
        s.stop()

    threading.Thread(target=stop_soon).start()
    started = time.monotonic()
    s.start()
    assert time.monotonic() - started < 5
    assert ran.count("tick") == 1 and "late" not in ran and ran.count("beat") >= 3


def test_a_stop_before_start_returns_at_once() -> None:
    s = Scheduler(lambda: Recorder())  # type: ignore[arg-type,return-value]
    s.stop()
    started = time.monotonic()
    s.start()
    assert time.monotonic() - started < 1


def test_apscheduler_warnings_become_our_records() -> None:
    log = Recorder()
    Scheduler(lambda: log)  # type: ignore[arg-type,return-value]
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "tick")
    logging.getLogger("apscheduler.executors").info("Job ran")  # below warning: not ours to say
    assert log.records == [("warning", "scheduler", {"msg": "scheduler: Run time of job tick was missed"})]
