"""`k3srotd run`: the daemon. APScheduler times two jobs; every decision is made afresh from state + clock.

  tick      lock, finish an interrupted step, decide (schedule.decide), do the due step, write metrics and
            systemd STATUS, and reschedule itself for the next decision time.
  watchdog  WATCHDOG=1 under WatchdogSec, while the tick loop is alive or a step is under way.

Failure policy (applied here): a bad config at start is fatal (exit 2); a bad config on SIGHUP keeps the old one
and says why; a failed step is retried after RETRY_AFTER; a failed rollback stops all further steps until a
human has acted (`k3srotd rollback`); on a node that is not a K3s server the daemon idles and says why.
SIGTERM never leaves K3s half-way: the step under way runs to its end or its rollback, then the daemon exits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import threading
import time
from typing import Any, Optional

from k3srotd import config as config_mod
from k3srotd.cluster.book import Book, node_name
from k3srotd.cluster.link import IDLE_POLL, Waiting
from k3srotd.core import planner, schedule
from k3srotd.core.clock import Clock
from k3srotd.core.durations import format_duration
from k3srotd.core.model import ts
from k3srotd.engine import session as engine
from k3srotd.engine.coordinator import Run
from k3srotd.errors import ConfigError, K3srotdError, LockHeld, RollbackFailed, SafetyRefusal, StepFailed
from k3srotd.output import logs
from k3srotd.output.notify import Notifier, watchdog_interval

RETRY_AFTER = dt.timedelta(hours=1)  # after a failed step
LOCK_RETRY = dt.timedelta(minutes=1)  # another k3srotd (a manual command) holds the lock
GATE_RETRY = dt.timedelta(minutes=5)  # a gate (public issuer, token metrics) said not yet
IDLE_RETRY = dt.timedelta(minutes=10)  # not a K3s server (yet), or K3s not running
CLUSTER_RETRY = dt.timedelta(seconds=30)  # the same, on a server of several


class Daemon:
    def __init__(
        self,
        cfg: config_mod.Config,
        log: Any,
        clock: Optional[Clock] = None,
        notifier: Optional[Notifier] = None,
        config_path: Optional[str] = None,
        log_format: Optional[str] = None,
        run: Optional[Run] = None,
    ) -> None:
        self.cfg = cfg
        self.options = dataclasses.replace(run or Run(), background=True)
        self.log = log
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier(None)
        self.config_path = config_path
        self.log_format = log_format
        self.node = node_name(cfg)
        self.servers = len(Book(cfg.state_dir).servers())  # as last known; each session's coordinator says anew
        self.retry_after: Optional[dt.datetime] = None
        self.halted: Optional[str] = None  # set after a failed rollback: no more steps until a human acts
        self.busy = False
        self.stopping = False  # SIGTERM: finish the step under way, start no other
        self.recheck = schedule.RECHECK
        self.heartbeat = self.clock.monotonic()
        self.status_line = "starting"

    # --- one decision
    def tick(self, act: bool = True) -> dt.datetime:
        """Decide and act once; return when to decide again. With act=False only finish an interrupted step."""
        now = self.clock.now()
        self.heartbeat = self.clock.monotonic()
        try:
            return self._tick(now, act)
        except Waiting as e:  # another server's turn or step comes first: look again soon
            self._status(f"waiting: {e}")
            return now + dt.timedelta(seconds=e.retry)
        except LockHeld as e:
            self._status(f"waiting: {e}")
            return now + LOCK_RETRY
        except RollbackFailed as e:
            self.halted = str(e)
            self._status(f"HALTED: {e}")
            return now + IDLE_RETRY
        except (ConfigError, SafetyRefusal) as e:
            self.log.warning("daemon.idle", msg=f"idle: {e}")
            self._status(f"idle: {e}")
            return now + self._idle_retry()
        except StepFailed as e:
            self.retry_after = now + RETRY_AFTER
            self._status(f"last step failed ({e}); retry after {ts(self.retry_after)}")
            return self.retry_after
        except Exception as e:
            # Any step under way already finished or rolled back (its own handlers); the intent on disk is
            # finished or undone at the next tick, as after a crash.
            retry = self._idle_retry()
            self.log.exception("daemon.error", msg=f"unexpected error, trying again in {format_duration(retry)}: {e!r}")
            self._status(f"unexpected error ({type(e).__name__}: {e}); trying again after {ts(now + retry)}")
            return now + retry
        finally:
            self._metrics()

    def _idle_retry(self) -> dt.timedelta:
        """How soon to look again after a refusal or an error: soon on a server known to be one of several (the
        others may wait for its turn to restart), else IDLE_RETRY."""
        return CLUSTER_RETRY if self.servers > 1 else IDLE_RETRY

    def _tick(self, now: dt.datetime, act: bool) -> dt.datetime:
        from k3srotd.output.observers import make_events

        events = make_events(self.cfg, self.log, self.clock)
        with engine.Session(self.cfg, self.clock, self.log, events, None, run=self.options) as s:
            self.halted = None
            self.servers = len(s.coordinator.servers)
            waiting = s.coordinator.catch_up(s.state, wait=False)  # another server's step first: plan when in step
            if waiting is not None:
                self._status(f"waiting: {waiting[0]}")
                return self.clock.now() + dt.timedelta(seconds=waiting[1])
            data, live, _ = s.observe()
            if not act:
                self._status(f"phase {s.phase(live)}; starting")
                return self.clock.now()
            for _ in range(4):  # a few steps may fall due one after another (e.g. publish-wait of 0s)
                d = schedule.decide(
                    self.cfg,
                    s.state,
                    live,
                    self.clock.now(),
                    s.k3s.live_mtime(),
                    schedule.splay(self.node, self.cfg.max_splay),
                    self.retry_after,
                    self.recheck if self.servers <= 1 else min(self.recheck, IDLE_POLL),
                )
                if d.plan is None or self.stopping:
                    self._status(self._describe(s, live, d))
                    return d.wake
                gate = self._gate(s, d.plan)
                if gate is not None:
                    self.log.info("daemon.waiting", msg=f"{d.plan.action} waits for: {gate}", action=d.plan.action)
                    self._status(f"phase {s.phase(live)}; {d.plan.action} waits for: {gate}")
                    return self.clock.now() + GATE_RETRY
                self._status(f"phase {s.phase(live)}; doing {d.plan.action}")
                self.busy = True
                try:
                    live = self._do(s, d.plan, data, live)
                finally:
                    self.busy = False
                self.retry_after = None
                data, live, _ = s.read_live()
            return self.clock.now()

    def _gate(self, s: engine.Session, plan: planner.Plan) -> Optional[str]:
        if plan.action == "promote":
            return s.promote_gate()
        if plan.action == "prune":
            return s.prune_gate(plan.drop)
        return None

    def _do(self, s: engine.Session, plan: planner.Plan, data: bytes, live: Any) -> Any:
        self.log.info("daemon.step", msg=f"{plan.action} is due ({plan.reason})", action=plan.action)
        if plan.action == "publish":
            return s.publish(data, live)
        if plan.action == "promote":
            return s.promote(data, live)
        if plan.action == "rotate":
            return s.rotate_direct(data, live)
        return s.prune(data, live, plan.drop)

    def _describe(self, s: engine.Session, live: Any, d: schedule.Decision) -> str:
        now = self.clock.now()
        head = f"phase {s.phase(live)}"
        if d.next_plan is None or d.start is None:
            return f"{head}; nothing scheduled"
        return f"{head}; next {d.next_plan.action} at {ts(d.start)} (in {format_duration(d.start - now)})"

    def _status(self, text: str) -> None:
        if text != self.status_line:
            self.log.info("daemon.status", msg=text)
        self.status_line = text
        self.notifier.status(text)

    def _metrics(self) -> None:
        from k3srotd.output.observers import write_metrics

        try:
            write_metrics(self.cfg, self.log, self.clock)
        except K3srotdError as e:  # the live file may be unreadable: the status line says why already
            self.log.debug("metrics.skipped", msg=str(e))

    # --- signals
    def reload(self) -> bool:
        """SIGHUP: load the config again; a bad one keeps the old and says why."""
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.config_path)
        except ConfigError as e:
            self.log.error("config.reload-failed", msg=f"config not reloaded, the old one stays: {e}")
            self.notifier.ready()
            return False
        self.cfg = cfg
        self.log = logs.configure(self.log_format or cfg.log_format)
        self.log.info("config.reloaded", msg="config reloaded: " + (", ".join(cfg.sources) or "all defaults"))
        self.notifier.ready()
        return True

    def watchdog_ok(self, interval: float) -> bool:
        """Ping only while the loop is alive: a tick within a few intervals, or a step under way (a restart may
        legitimately take restart-timeout)."""
        return self.busy or (self.clock.monotonic() - self.heartbeat) < max(3 * interval, 3600)

    # --- the loop
    def _route_scheduler_logs(self) -> None:
        """APScheduler logs through the standard library: its warnings become records of ours, with an event."""
        import logging

        daemon = self

        class ToOurs(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                level = "error" if record.levelno >= logging.ERROR else "warning"
                getattr(daemon.log, level)("scheduler", msg=f"scheduler: {record.getMessage()}")

        logger = logging.getLogger("apscheduler")
        logger.handlers = [ToOurs(logging.WARNING)]
        logger.propagate = False

    def run(self) -> int:
        from apscheduler.jobstores.base import JobLookupError
        from apscheduler.schedulers import SchedulerNotRunningError
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.date import DateTrigger

        self._route_scheduler_logs()
        # "UTC" as a name: APScheduler 3.8 (Ubuntu 22.04) takes only pytz zones or names, 3.9+ takes names too
        sched = BlockingScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        stop = threading.Event()

        ticking = threading.Lock()
        again = threading.Event()

        def tick_job() -> None:
            # one tick at a time: a reload during a step must not tick beside it (it would find our own lock held)
            if not ticking.acquire(blocking=False):
                again.set()  # the tick under way looks again as soon as it ends
                return
            try:
                wake = self.tick()
                if again.is_set():
                    again.clear()
                    wake = self.clock.now()
            finally:
                ticking.release()
            if not stop.is_set():
                sched.add_job(
                    tick_job,
                    DateTrigger(run_date=max(wake, self.clock.now())),
                    id="tick",
                    replace_existing=True,
                    misfire_grace_time=None,
                )

        def reload_job() -> None:
            if self.reload():
                tick_job()

        def on_hup(signum: int, frame: Any) -> None:
            sched.add_job(reload_job, id="reload", replace_existing=True)

        stopper: list[threading.Thread] = []

        def on_term(signum: int, frame: Any) -> None:
            if stop.is_set():
                return
            stop.set()
            self.stopping = True
            self.notifier.stopping("stopping: the step under way runs to its end first" if self.busy else None)
            self.log.info("daemon.stop", msg="stopping" + (" after the step under way" if self.busy else ""))
            stopper.append(threading.Thread(target=shutdown, daemon=True))
            stopper[0].start()

        def shutdown() -> None:
            # A SIGTERM can land before sched.start(): wait until it runs (run() does not start it once stop is
            # set). wait=False: APScheduler 3 waits for running jobs while it holds its job store lock, which a
            # tick finishing then needs to schedule the next one; run() waits for the tick under way instead.
            while True:
                try:
                    sched.shutdown(wait=False)
                    return
                except SchedulerNotRunningError:
                    time.sleep(0.05)

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

        interval = watchdog_interval()
        if interval:
            sched.add_job(
                lambda: self.watchdog_ok(interval) and self.notifier.watchdog(),
                "interval",
                seconds=interval,
                id="watchdog",
            )
        self.log.info(
            "daemon.start", msg=f"k3srotd daemon starting on node {self.node}", node=self.node, pid=os.getpid()
        )
        # READY once config is loaded and an interrupted step is finished or undone
        wake = self.tick(act=False)
        self.notifier.ready(self.status_line)
        sched.add_job(tick_job, DateTrigger(run_date=max(wake, self.clock.now())), id="tick", misfire_grace_time=None)
        if not stop.is_set():
            try:
                sched.start()
            except JobLookupError:
                # APScheduler 3: shutdown() from another thread marks the scheduler stopped first, and a main loop
                # removing the job it just ran then finds no job. The stop is what was asked.
                if not stop.is_set():
                    raise
            for t in stopper:
                t.join()
            with ticking:  # the step under way runs to its end (or its rollback)
                pass
        self.log.info("daemon.stopped", msg="stopped")
        return 0


def main(config_path: Optional[str], log_format: Optional[str], run: Optional[Run] = None) -> int:
    cfg = config_mod.load(config_path)  # fatal on a bad config: exit 2 (the unit does not restart on 2)
    log = logs.configure(log_format or cfg.log_format)
    return Daemon(cfg, log, Clock(), Notifier.from_env(), config_path, log_format, run).run()
