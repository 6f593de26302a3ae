"""APScheduler behind four calls, so the daemon's module holds its policy only: `at` (one job, run once at a time,
replacing the one of that name), `every` (an interval job), `start` (blocks until `stop`) and `stop` (from any
thread, also before `start`). Only this module imports APScheduler.

APScheduler 3 logs through the standard library: its warnings become records of ours, with an event.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from k3srotd.core.ports import Log

if TYPE_CHECKING:
    from apscheduler.schedulers.blocking import BlockingScheduler


class _ToOurs(logging.Handler):
    def __init__(self, log: Callable[[], Log]) -> None:
        super().__init__(logging.WARNING)
        self.log = log  # read at each record: a reload replaces the daemon's logger

    def emit(self, record: logging.LogRecord) -> None:
        log = self.log()
        say = log.error if record.levelno >= logging.ERROR else log.warning
        say("scheduler", msg=f"scheduler: {record.getMessage()}")


class Scheduler:
    def __init__(self, log: Callable[[], Log]) -> None:
        from apscheduler.schedulers.blocking import BlockingScheduler

        logger = logging.getLogger("apscheduler")
        logger.handlers = [_ToOurs(log)]
        logger.propagate = False
        # "UTC" as a name: APScheduler 3.8 (Ubuntu 22.04) takes only pytz zones or names, 3.9+ takes names too
        self._sched: BlockingScheduler = BlockingScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
        )
        self.stopped = threading.Event()

    def at(self, when: dt.datetime, job: Callable[[], None], name: str) -> None:
        """Run `job` once at `when` (at once when that is past), replacing any job of that name not yet run."""
        from apscheduler.triggers.date import DateTrigger

        self._sched.add_job(job, DateTrigger(run_date=when), id=name, replace_existing=True, misfire_grace_time=None)

    def every(self, seconds: float, job: Callable[[], None], name: str) -> None:
        self._sched.add_job(job, "interval", seconds=seconds, id=name, replace_existing=True)

    def start(self) -> None:
        """Run the jobs until `stop`; returns at once when stop came first."""
        from apscheduler.jobstores.base import JobLookupError

        if self.stopped.is_set():
            return
        try:
            self._sched.start()
        except JobLookupError:
            # APScheduler 3: shutdown() from another thread marks the scheduler stopped first, and a main loop
            # removing the job it just ran then finds no job. The stop is what was asked.
            if not self.stopped.is_set():
                raise

    def stop(self) -> None:
        """From a signal handler: the shutdown runs in a thread of its own, and `start` returns after it."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        threading.Thread(target=self._shutdown, daemon=True).start()

    def _shutdown(self) -> None:
        # A stop can land before start(): wait until it runs (start() does not start once stopped is set).
        # wait=False: APScheduler 3 waits for running jobs while it holds its job store lock, which a job
        # finishing then needs to schedule the next one; the daemon waits for the job under way instead.
        from apscheduler.schedulers import SchedulerNotRunningError

        for _ in range(200):  # 10 s: start() either runs by then or returned on `stopped`
            try:
                self._sched.shutdown(wait=False)
                return
            except SchedulerNotRunningError:
                time.sleep(0.05)
