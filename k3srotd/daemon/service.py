"""`k3srotd run`: the daemon's policy. A scheduler (daemon/scheduler.py) times two jobs; every decision is made
afresh from state + clock.

  tick      lock, finish an interrupted step, follow another server's step, decide (schedule.decide), do the due
            step when the operator opted in (`automatic: true`) and nothing stands in its way, write metrics and
            systemd STATUS, and reschedule itself for the next decision time.
  watchdog  WATCHDOG=1 under WatchdogSec, while the tick loop is alive or a step is under way.

Failure policy (applied here): a bad config at start is fatal (exit 2); a bad config on SIGHUP keeps the old one
and says why; a failed step is retried after RETRY_AFTER; a failed rollback stops all further steps until a
human has acted (`k3srotd rollback`); on a node that is not a K3s server the daemon idles and says why.
Without `automatic: true` it starts no rotation or prune: it says what would happen, when, and how to opt in.
While Microsoft's Key Manager extension is installed it starts none either (node/keymanager.py).
SIGTERM never leaves K3s half-way: the step under way runs to its end or its rollback, then the daemon exits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Optional

from k3srotd import config as config_mod
from k3srotd.cluster.book import Book, lease_seconds, node_name
from k3srotd.cluster.link import IDLE_POLL, Waiting
from k3srotd.cluster.watch import Watcher
from k3srotd.core import keys, planner, schedule
from k3srotd.core.clock import Clock
from k3srotd.core.durations import format_duration
from k3srotd.core.model import ts
from k3srotd.core.ports import Log
from k3srotd.engine import session as engine
from k3srotd.engine.coordinator import Run
from k3srotd.errors import ConfigError, K3srotdError, LockHeld, NoSpace, RollbackFailed, SafetyRefusal, StepFailed
from k3srotd.output import logs
from k3srotd.output.notify import Notifier, watchdog_interval

if TYPE_CHECKING:
    from k3srotd.daemon.scheduler import Scheduler

RETRY_AFTER = dt.timedelta(hours=1)  # after a failed step
LOCK_RETRY = dt.timedelta(minutes=1)  # another k3srotd (a manual command) holds the lock
GATE_RETRY = dt.timedelta(minutes=5)  # a gate (public issuer, token metrics, another rotator) said not yet
IDLE_RETRY = dt.timedelta(minutes=10)  # not a K3s server (yet), or K3s not running
WATCHED_POLL = dt.timedelta(minutes=4)  # on a cluster, while the step and token-check Leases are watched
CLUSTER_RETRY = dt.timedelta(seconds=5)  # the same, on a server of several: its turn may be awaited
MAX_STEPS_PER_TICK = 4  # a few steps may fall due one after another (e.g. publish-wait of 0s)


class Daemon:
    def __init__(
        self,
        cfg: config_mod.Config,
        log: Log,
        clock: Clock,
        notifier: Optional[Notifier] = None,
        config_path: Optional[str] = None,
        log_format: Optional[str] = None,
        run: Optional[Run] = None,
    ) -> None:
        self.cfg = cfg
        self.options = dataclasses.replace(run or Run(), background=True)
        self.log = log
        self.clock = clock
        self.notifier = notifier or Notifier(None)
        self.config_path = config_path
        self.log_format = log_format
        self.node = node_name(cfg)
        self.servers = len(Book(cfg.state_dir).servers())  # as last known; each session's coordinator says anew
        self.retry_after: Optional[dt.datetime] = None
        self.watcher: Optional[Watcher] = None  # on a server of several (cluster/watch.py)
        self.gate_memo: Optional[tuple[str, str, dt.datetime]] = None  # (action, what it waits for, ask again at)
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
            if self.status_line != f"idle: {e}":  # said once per cause: on a cluster this is looked at often
                self.log.warning("daemon.idle", msg=f"idle: {e}")
            self._status(f"idle: {e}")
            return now + self._idle_retry()
        except NoSpace as e:  # a full state-dir: nothing to retry an hour for; look again once space may be back
            retry = self._idle_retry()
            if self.status_line != f"no space: {e}":
                self.log.error("daemon.no-space", msg=f"{e}; trying again every {format_duration(retry)}")
            self._status(f"no space: {e}")
            return now + retry
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

    def poll(self) -> dt.timedelta:
        """How often a server of several looks at the cluster when nothing happens: every IDLE_POLL, unless the
        step and token-check Leases are watched (a change wakes it at once); then often enough to renew its
        report well within its lease."""
        if self.watcher is None or not self.watcher.healthy:
            return IDLE_POLL
        third = dt.timedelta(seconds=lease_seconds(self.cfg, self.options.lease_seconds) / 3)
        return max(IDLE_POLL, min(WATCHED_POLL, third))

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
            for _ in range(MAX_STEPS_PER_TICK):
                d = self._decide(s, live)
                if d.plan is None or self.stopping:
                    self._status(
                        schedule.describe(d, s.phase(live), self.clock.now(), self.cfg.automatic, self.config_path)
                    )
                    return d.wake
                gate = self._gated(s, d.plan)
                if gate is not None:
                    self._status(f"phase {s.phase(live)}; {d.plan.action} waits for: {gate[0]}")
                    return gate[1]
                self._status(f"phase {s.phase(live)}; doing {d.plan.action}")
                self.busy = True
                try:
                    live = self._do(s, d.plan, data, live)
                finally:
                    self.busy = False
                self.retry_after = None
                data, live, _ = s.read_live()
            return self.clock.now()

    def _decide(self, s: engine.Session, live: keys.KeyFile) -> schedule.Decision:
        return schedule.decide(
            self.cfg,
            s.state,
            live,
            self.clock.now(),
            s.k3s.live_mtime(),
            schedule.splay(self.node, self.cfg.max_splay),
            self.retry_after,
            self.recheck if self.servers <= 1 else min(self.recheck, self.poll()),
            automatic=self.cfg.automatic,
        )

    def _gated(self, s: engine.Session, plan: planner.Plan) -> Optional[tuple[str, dt.datetime]]:
        """(what the due step waits for, when to tick again), or None when it may start. The gate is asked again
        after GATE_RETRY (it may read /metrics, the issuer, the other servers); on a server of several the daemon
        still ticks every IDLE_POLL meanwhile, so that waiting never stops it answering and following the others."""
        now = self.clock.now()
        memo = self.gate_memo
        if memo is None or memo[0] != plan.action or now >= memo[2]:
            gate = self._gate(s, plan)
            if gate is None:
                self.gate_memo = None
                return None
            if memo is None or memo[1] != gate:
                self.log.info("daemon.waiting", msg=f"{plan.action} waits for: {gate}", action=plan.action)
            memo = self.gate_memo = (plan.action, gate, now + GATE_RETRY)
        wake = memo[2] if self.servers <= 1 else min(memo[2], now + self.poll())
        return memo[1], wake

    def _gate(self, s: engine.Session, plan: planner.Plan) -> Optional[str]:
        """None when the due step may start; else what it waits for. Asked only before a step, so an idle daemon
        makes no API request for it."""
        other = self._other_rotator(s)
        if other is not None:
            return other
        if plan.action == "promote":
            return s.promote_gate()
        if plan.action == "prune":
            return s.prune_gate(plan.drop)
        return None

    def _other_rotator(self, s: engine.Session) -> Optional[str]:
        """Microsoft's Key Manager extension rotates the same key: no step of ours while it is there, nor while
        the API cannot say (fail closed). With verify-api false the API is not asked."""
        from k3srotd.node import keymanager
        from k3srotd.node.kubeapi import APIError

        if not self.cfg.verify_api:
            return None
        try:
            found = keymanager.detect(s.k3s.api())
            return None if found is None else f"no other rotator of this key: {found}"
        except (APIError, K3srotdError) as e:
            return f"the API, to tell whether another rotator is installed ({e})"

    def _do(self, s: engine.Session, plan: planner.Plan, data: bytes, live: keys.KeyFile) -> keys.KeyFile:
        self.log.info("daemon.step", msg=f"{plan.action} is due ({plan.reason})", action=plan.action)
        if plan.action == "publish":
            return s.publish(data, live)
        if plan.action == "promote":
            return s.promote(data, live)
        if plan.action == "rotate":
            return s.rotate_direct(data, live)
        return s.prune(data, live, plan.drop)

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

    def _watchdog(self, interval: float) -> None:
        if self.watchdog_ok(interval):
            self.notifier.watchdog()

    # --- the loop
    def run(self) -> int:
        from k3srotd.daemon.scheduler import Scheduler

        sched = Scheduler(lambda: self.log)
        loop = _Loop(self, sched)
        signal.signal(signal.SIGHUP, loop.on_hup)
        signal.signal(signal.SIGTERM, loop.on_term)
        signal.signal(signal.SIGINT, loop.on_term)
        interval = watchdog_interval()
        if interval:
            sched.every(interval, lambda: self._watchdog(interval), "watchdog")
        self.log.info(
            "daemon.start", msg=f"k3srotd daemon starting on node {self.node}", node=self.node, pid=os.getpid()
        )
        if not self.cfg.automatic:
            self.log.info("daemon.manual", msg=f"automatic steps are off; {schedule.opt_in_hint(self.config_path)}")
        unsafe = config_mod.short_grace_warning(self.cfg)
        if unsafe:  # as every command says it: the daemon's own journal record
            self.log.warning("config.unsafe-short-grace", msg=unsafe)
        # READY once config is loaded and an interrupted step is finished or undone
        wake = self.tick(act=False)
        self.notifier.ready(self.status_line)
        sched.at(max(wake, self.clock.now()), loop.tick_job, "tick")
        sched.start()
        with loop.ticking:  # the step under way runs to its end (or its rollback)
            pass
        if self.watcher is not None:
            self.watcher.stop()
        self.log.info("daemon.stopped", msg="stopped")
        return 0


class _Loop:
    """The jobs and signal handlers around Daemon.tick: one tick at a time, the next one at the wake it returned."""

    def __init__(self, daemon: Daemon, sched: Scheduler) -> None:
        self.daemon = daemon
        self.sched = sched
        self.ticking = threading.Lock()
        self.again = threading.Event()

    def tick_job(self) -> None:
        # one tick at a time: a reload during a step must not tick beside it (it would find our own lock held)
        if not self.ticking.acquire(blocking=False):
            self.again.set()  # the tick under way looks again as soon as it ends
            return
        try:
            wake = self.daemon.tick()
            if self.again.is_set():
                self.again.clear()
                wake = self.daemon.clock.now()
        finally:
            self.ticking.release()
        if not self.sched.stopped.is_set():
            self.sched.at(max(wake, self.daemon.clock.now()), self.tick_job, "tick")
            self._watch()

    def _watch(self) -> None:
        """On a server of several: watch the step and token-check Leases, and tick at each change."""
        d = self.daemon
        if d.watcher is not None or d.servers <= 1 or not d.cfg.verify_api:
            return
        from k3srotd.core.cluster import STEP_LEASE, TOKENS_LEASE
        from k3srotd.node.kubeapi import KubeAPI

        # the config as it is at each (re)connection: a reload may change the API's address
        d.watcher = Watcher(
            lambda: KubeAPI(d.cfg.kubeconfig, d.cfg.k3s_server_url), (STEP_LEASE, TOKENS_LEASE), self.poke
        )
        d.watcher.start()

    def poke(self) -> None:
        """A watched Lease changed: tick now (or right after the tick under way)."""
        if not self.sched.stopped.is_set():
            self.sched.at(self.daemon.clock.now(), self.tick_job, "tick")

    def reload_job(self) -> None:
        if self.daemon.reload():
            self.tick_job()

    def on_hup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.sched.at(self.daemon.clock.now(), self.reload_job, "reload")

    def on_term(self, signum: int, frame: Optional[FrameType]) -> None:
        d = self.daemon
        if self.sched.stopped.is_set():
            return
        d.stopping = True
        d.notifier.stopping("stopping: the step under way runs to its end first" if d.busy else None)
        d.log.info("daemon.stop", msg="stopping" + (" after the step under way" if d.busy else ""))
        self.sched.stop()


def main(config_path: Optional[str], log_format: Optional[str], run: Optional[Run] = None) -> int:
    cfg = config_mod.load(config_path)  # fatal on a bad config: exit 2 (the unit does not restart on 2)
    log = logs.configure(log_format or cfg.log_format)
    return Daemon(cfg, log, Clock(), Notifier.from_env(), config_path, log_format, run).run()
