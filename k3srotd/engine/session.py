"""What the commands and the daemon share: lock, load state, finish an interrupted step, bring the state in
line with the live file, and run the steps the planner asks for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import TYPE_CHECKING, Callable, Optional

from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core.clock import Clock
from k3srotd.core.model import State
from k3srotd.core.ports import Log
from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.k3s import K3s
from k3srotd.node.lock import Lock
from k3srotd.node.store import Store

if TYPE_CHECKING:  # the executor and the coordinator are imported by the commands that act, not by `status`
    from k3srotd.engine.coordinator import Coordinator, Run
    from k3srotd.engine.executor import Events, Executor, Progress


@dataclasses.dataclass
class View:
    """A read-only picture of the node for status, dry runs and doctor: nothing is written to build it."""

    live: keys.KeyFile
    live_mtime: dt.datetime
    state: State
    now: dt.datetime
    notes: tuple[str, ...]

    @property
    def phase(self) -> str:
        return planner.phase(self.state, self.live)

    def next_plan(self, cfg: Config) -> Optional[planner.Plan]:
        return planner.next_plan(cfg, self.state, self.live, self.now, self.live_mtime)


def view(cfg: Config, clock: Clock, k3s: Optional[K3s] = None) -> View:
    k3s = k3s or K3s(cfg)
    store = Store(cfg.state_dir)
    now = clock.now()
    data = k3s.live_bytes()
    live = keys.parse(data, str(k3s.live_path))
    mtime = k3s.live_mtime()
    state = _load_readonly(store, now)
    if os.path.exists(os.path.join(cfg.state_dir, "cluster.json")):  # multi-server only (cluster/book.py)
        from k3srotd.cluster import book

        state = book.shown_state(cfg.state_dir, state)  # a step rolling out: shown as it will commit
    obs = planner.observe(state, live, now, mtime)
    return View(live, mtime, obs.state, now, obs.notes + tuple(store.notes))


def _load_readonly(store: Store, now: dt.datetime) -> State:
    return store.load_readonly()  # a newer state refused; a corrupt one read as empty, with a note


class Session:
    """One locked unit of work. Use as a context manager; `.executor` does the steps."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock,
        log: Log,
        events: Optional[Events] = None,
        progress: Optional[Progress] = None,
        k3s: Optional[K3s] = None,
        retry_failed_rollback: bool = False,
        run: Optional[Run] = None,
    ) -> None:
        from k3srotd.engine.coordinator import OneServer, Run

        self.cfg = cfg
        self.run = run or Run()
        self.coordinator: Coordinator = OneServer(cfg.node_name or "")  # until __enter__ asks the cluster
        self.retry_failed_rollback = retry_failed_rollback
        self.clock = clock
        self.log = log
        self.k3s = k3s or K3s(cfg)
        self.store = Store(cfg.state_dir)
        self.lock = Lock(cfg.lock_file, cfg.k3s_data_dir)  # one k3srotd per K3s, whatever the state-dir
        self.events = events
        self.progress = progress
        self.state = State()
        self.executor: Executor

    def __enter__(self) -> Session:
        from k3srotd.node import trust

        trust.require(self.cfg)  # every path root trusts or writes: root's, writable by nobody else
        if not os.access(self.cfg.k3s_bin, os.X_OK):
            raise ConfigError(
                f"{self.cfg.k3s_bin}: the k3s binary is missing or not executable; install K3s or set k3s-bin"
            )
        self.k3s.require_server_node()
        self.lock.acquire()
        try:
            from k3srotd.node.files import Staging, resync_datastore

            resync = resync_datastore(Staging(self.cfg.staging_dir), self.k3s)
            self.state = self.store.load(self.clock.now(), resync)
            for note in self.store.notes:
                self.log.warning("state.rebuilt", msg=note)
            self.executor = self._executor()
            intent = self.state.intent
            if intent is not None and intent.stage == "rollback-failed" and self.retry_failed_rollback:
                return self  # the rollback command retries it itself
            from k3srotd.engine import resume

            done = resume.resume(self.executor)  # finish or undo the step an earlier k3srotd left
            if done:
                self.log.warning("resume.done", msg=done)
        except BaseException:
            self.lock.release()
            raise
        return self

    def _executor(self) -> Executor:
        """The executor and its coordinator: how many servers there are is decided here, once for the session;
        attach refuses when this server is one of several and cut off from them."""
        from k3srotd.cluster import driver
        from k3srotd.engine.executor import Executor
        from k3srotd.engine.restart import Checkpoints, Restarter
        from k3srotd.identity import gates

        checks = gates.step_checks(self.cfg, self.k3s, self.log, self.clock.now)
        restarter = Restarter(
            self.cfg, self.k3s, self.clock, self.log, checks, self.progress, Checkpoints(self.run.crash_at)
        )
        self.coordinator = driver.attach(
            self.cfg, self.k3s, self.log, self.clock, self.progress, restarter, self.store, self.run
        )
        return Executor(
            self.cfg, self.k3s, self.store, self.state, self.clock, self.log, restarter, self.coordinator, self.events
        )

    def catch_up(self) -> None:
        """Foreground: do this server's part of another server's step, until a new step may start here."""
        self.coordinator.catch_up(self.state, wait=True)

    def __exit__(self, *exc: object) -> None:
        self.coordinator.close(self.state)
        self.lock.release()

    def read_live(self) -> tuple[bytes, keys.KeyFile, dt.datetime]:
        data = self.k3s.live_bytes()
        return data, keys.parse(data, str(self.k3s.live_path)), self.k3s.live_mtime()

    def observe(self) -> tuple[bytes, keys.KeyFile, planner.Observation]:
        """Read the live file and bring the state in line with it (saved)."""
        data, live, mtime = self.read_live()
        if live.duplicates:
            self.log.warning(
                "keys.duplicate",
                msg=f"{live.path}: holds {len(live.duplicates)} duplicate key block(s); the next step writes "
                "each key once",
                kids=list(live.duplicates),
            )
        obs = planner.observe(self.state, live, self.clock.now(), mtime)
        for note in obs.notes:
            self.log.warning("keys.adopted" if obs.adopted else "keys.observed", msg=note)
        if obs.state.to_json() != self.state.to_json():
            self.state.__dict__.update(obs.state.__dict__)
            self.store.save(self.state)
        return data, live, obs

    def phase(self, live: keys.KeyFile) -> str:
        return planner.phase(self.state, live)

    # --- the steps, each composing its target and handing it to the executor
    def publish(self, data: bytes, live: keys.KeyFile) -> keys.KeyFile:
        new = keys.generate(self.cfg.key_size)
        staged = keys.compose(live, planner.publish_order(live.kids, new.kid), [new])
        return self.executor.run("publish", data, live, staged)

    def promote(self, data: bytes, live: keys.KeyFile) -> keys.KeyFile:
        pending = self.state.pending
        if pending is None:
            raise SafetyRefusal("nothing is published to promote; run `k3srotd rotate-now`")
        self.warn_token_lifetime("promote")
        staged = keys.compose(live, planner.promote_order(live.kids, pending))
        return self.executor.run("promote", data, live, staged)

    def rotate_direct(self, data: bytes, live: keys.KeyFile) -> keys.KeyFile:
        self.coordinator.refuse_direct()  # on a cluster: only staged (the new key must verify everywhere first)
        new = keys.generate(self.cfg.key_size)
        self.warn_token_lifetime("rotate")
        staged = keys.compose(live, planner.rotate_order(live.kids, new.kid), [new])
        return self.executor.run("rotate", data, live, staged)

    def prune(self, data: bytes, live: keys.KeyFile, drop: tuple[str, ...]) -> keys.KeyFile:
        self.warn_token_lifetime("prune")
        staged = keys.compose(live, planner.prune_order(live.kids, drop))
        return self.executor.run("prune", data, live, staged)

    def promote_gate(self) -> Optional[str]:
        """None when the published key may start signing; else what is awaited (e.g. the public issuer)."""
        from k3srotd.identity import gates

        if self.state.pending is None:
            return None
        return gates.promote_gate(self.cfg, self.k3s, self.log, self.state.pending, self.clock.now())

    def prune_gate(self, drop: tuple[str, ...]) -> Optional[str]:
        """None when the keys may go; else why live tokens may still need them."""
        from k3srotd.identity import gates

        return gates.prune_gate(self.cfg, self.k3s, self.log, drop, self.clock.now(), self.coordinator.token_check)

    def warn_token_lifetime(self, step: str) -> None:
        from k3srotd.identity import gates

        text = gates.token_lifetime_warning(self.cfg, step)  # only when true of K3s's token settings
        if text is not None:
            self.log.warning("tokens.may-outlive-grace", msg=text, step=step)


def in_window(cfg: Config, now: dt.datetime) -> bool:
    return cfg.maintenance_window is None or bool(cfg.maintenance_window.contains(now))


def require_window(cfg: Config, now: dt.datetime, what: str, ignore: bool) -> None:
    if ignore or in_window(cfg, now):
        return
    nxt = cfg.maintenance_window.next_start(now)
    raise SafetyRefusal(
        f"{cfg.sources[-1] if cfg.sources else 'config'}: {what} restarts K3s, and now is outside "
        f"maintenance-window; it opens next at {nxt.isoformat()}. Wait for it, or add --ignore-window"
    )


Confirm = Callable[[str], bool]
