"""What the manual commands share: the one-line summary, a wait with progress, and SIGTERM handled as the daemon
does: a step under way runs to its end (or its rollback) first, then the command stops."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import signal
from typing import Any, Callable, Iterator, Optional

from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import Clock
from k3srotd.core.durations import format_duration
from k3srotd.core.ports import Log
from k3srotd.engine.coordinator import Run
from k3srotd.engine.executor import Events
from k3srotd.engine.restart import Progress
from k3srotd.engine.session import Session
from k3srotd.errors import Terminated
from k3srotd.node.k3s import K3s

Confirm = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class Manual:
    """What every manual command starts from: the config, the log, the CLI's event and progress sinks, the clock,
    and how it was run (the tests' crash point and leases ride in `run`)."""

    cfg: Config
    log: Log
    events: Optional[Events] = None
    progress: Optional[Progress] = None
    run: Run = dataclasses.field(default_factory=Run)
    clock: Clock = dataclasses.field(default_factory=Clock)

    def session(self, ignore_window: bool, retry_failed_rollback: bool = False) -> Session:
        """The command's session; with --ignore-window the other servers restart at once too."""
        run = dataclasses.replace(self.run, ignore_window=ignore_window)
        return Session(
            self.cfg,
            self.clock,
            self.log,
            self.events,
            self.progress,
            retry_failed_rollback=retry_failed_rollback,
            run=run,
        )


def refuse_other_rotator(cfg: Config, k3s: K3s, what: str) -> None:
    """SafetyRefusal (exit 3) while Microsoft's Key Manager extension rotates this same key (node/keymanager.py);
    with verify-api false the API is not asked, as by the daemon."""
    from k3srotd.node import keymanager

    if cfg.verify_api:
        keymanager.refuse_if_installed(k3s.api(), what)


def summary(live: keys.KeyFile, phase: str) -> str:
    return f"phase {phase}: {live.signer.kid} signs; keys in order: {', '.join(live.kids)}"


def wait_until(clock: Clock, until: dt.datetime, what: str, progress: Optional[Progress]) -> None:
    start = clock.monotonic()
    while True:
        left = (until - clock.now()).total_seconds()
        if left <= 0:
            return
        if progress is not None:
            progress(f"{what}: {format_duration(dt.timedelta(seconds=left))} left", clock.monotonic() - start)
        clock.sleep(min(left, 1.0))


class Stop:
    """Installed for a command's session: SIGTERM outside a step stops the command at once; inside one (an intent
    is recorded) it is noted, and `check()` stops the command once the step has ended."""

    def __init__(self) -> None:
        self.session: Optional[Session] = None
        self.requested = False

    def _on_term(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.session is None or self.session.state.intent is None:
            raise Terminated("stopped by SIGTERM")

    def check(self, after: str) -> None:
        if self.requested:
            raise Terminated(f"stopped by SIGTERM after {after}; run the command again to go on")

    @contextlib.contextmanager
    def around(self, session: Session) -> Iterator[Session]:
        self.session = session
        old = signal.signal(signal.SIGTERM, self._on_term)
        try:
            with session as s:
                yield s
        finally:
            signal.signal(signal.SIGTERM, old)
