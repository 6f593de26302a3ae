"""Restart this server's K3s and verify it, once for every caller: the executor's own step, and a server that
restarts onto a step another server uploaded (cluster/follower.py). The verdict on each look is pure
(core/verify.py); here are the polling, the restart-command and the checks around it (identity/gates.StepCheck).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import Clock
from k3srotd.core.ports import Log
from k3srotd.core.verify import Seen, VerifyFailed, Want, judge
from k3srotd.errors import SafetyRefusal, StepFailed
from k3srotd.node.files import sha256
from k3srotd.node.k3s import K3s, ServerProcess
from k3srotd.node.kubeapi import APIError, KubeAPI

if TYPE_CHECKING:
    from k3srotd.identity.gates import StepCheck

POLL_SECONDS = 0.5

Progress = Callable[[str, float], None]


class Checkpoints:
    """The side-effect boundaries of a step, named for the crash tests: a test run names one (`promote:uploaded`,
    or `uploaded` for the first step that reaches it) and the process is killed right there. None in production."""

    def __init__(self, crash_at: Optional[str] = None) -> None:
        self.crash_at = crash_at

    def __call__(self, step: str, name: str) -> None:
        if self.crash_at is not None and self.crash_at in (name, f"{step}:{name}"):
            os.kill(os.getpid(), signal.SIGKILL)


class Restarter:
    def __init__(
        self,
        cfg: Config,
        k3s: K3s,
        clock: Clock,
        log: Log,
        checks: Sequence[StepCheck] = (),
        progress: Optional[Progress] = None,
        checkpoint: Optional[Checkpoints] = None,
    ) -> None:
        self.cfg = cfg
        self.k3s = k3s
        self.clock = clock
        self.log = log
        self.checks = list(checks)
        self.progress = progress
        self.checkpoint = checkpoint or Checkpoints()

    def restart_and_verify(
        self, step: str, target: keys.KeyFile, want: Want, old: Optional[ServerProcess], checkpoints: bool = True
    ) -> None:
        """The checks before, restart-command, K3s back on `want`, the checks after. VerifyFailed if not.
        `checkpoints`: off for a server restarting onto another server's step (the crash points are the step's)."""
        for check in self.checks:
            check.before_restart(step, target)
        res = self.k3s.restart()
        self.log.info(
            "restart", msg=f"restart-command exited {res.returncode}", argv=list(res.argv), output=res.tail(5)
        )
        if not res.ok:
            self.log.warning("restart", msg=f"restart-command failed ({res.tail()}); checking K3s anyway")
        if checkpoints:
            self.checkpoint(step, "restarted")
        self.wait_for(want, old)
        for check in self.checks:
            check.after_restart(step, target)
        if checkpoints:
            self.checkpoint(step, "verified")

    def _look(self, api: Optional[KubeAPI], old: Optional[ServerProcess]) -> Seen:
        proc = self.k3s.server_process()
        if proc is None or (old is not None and proc == old):
            return Seen(None if proc is None else proc.pid, proc is None, None, "", None)
        ready = api.readyz() if api is not None else None
        try:
            live = self.k3s.live_bytes()
        except SafetyRefusal:
            live = b""
        return Seen(proc.pid, True, ready, sha256(live), self.k3s.current_kid())

    def wait_for(self, want: Want, old: Optional[ServerProcess]) -> None:
        """Until restart-timeout: K3s back, on a new process, serving exactly `want`. VerifyFailed if not."""
        timeout = self.cfg.restart_timeout.total_seconds()
        start = self.clock.monotonic()
        api = self.k3s.api() if self.cfg.verify_api else None
        while True:
            seen = self._look(api, old)
            outcome, last = judge(want, seen)
            if outcome == "jwks" and api is not None:
                try:
                    outcome, last = judge(want, _with_jwks(seen, api))
                except APIError as e:
                    outcome, last = judge(want, dataclasses.replace(seen, served_error=str(e)))
            if outcome == "ok":
                return
            if outcome == "fail":
                raise VerifyFailed(last)
            elapsed = self.clock.monotonic() - start
            if elapsed >= timeout:
                raise VerifyFailed(f"K3s not back as expected within {self.cfg.restart_timeout}: {last}")
            if self.progress is not None:
                self.progress(f"waiting for K3s: {last}", elapsed)
            self.clock.sleep(POLL_SECONDS)

    def ensure_running(self) -> ServerProcess:
        """rotate-ca needs a running, ready server: restart K3s (on what the datastore holds now) if it is not."""
        proc = self.k3s.server_process()
        if proc is not None and (not self.cfg.verify_api or self.k3s.api().readyz()):
            return proc
        res = self.k3s.restart()
        self.log.info("restart", msg=f"restart-command exited {res.returncode} (K3s was not running)")
        return self.wait_running()

    def wait_running(self) -> ServerProcess:
        start = self.clock.monotonic()
        api = self.k3s.api() if self.cfg.verify_api else None
        while True:
            proc = self.k3s.server_process()
            if proc is not None and (api is None or api.readyz()):
                return proc
            elapsed = self.clock.monotonic() - start
            if elapsed >= self.cfg.restart_timeout.total_seconds():
                raise VerifyFailed(f"K3s is not running after {self.cfg.restart_timeout}")
            if self.progress is not None:
                self.progress("waiting for K3s to run", elapsed)
            self.clock.sleep(POLL_SECONDS)

    def running(self) -> Optional[ServerProcess]:
        """The server process when K3s runs and (verify-api) is ready; else None. No waiting."""
        proc = self.k3s.server_process()
        if proc is None or (self.cfg.verify_api and not self.k3s.api().readyz()):
            return None
        return proc


def _with_jwks(seen: Seen, api: KubeAPI) -> Seen:
    return dataclasses.replace(seen, served=list(api.jwks_kids()))


def want_of(target: keys.KeyFile, staged: bytes) -> Want:
    return Want(tuple(target.kids), target.signer.kid, sha256(staged))


def failure_text(e: BaseException) -> str:
    """A failed check says what failed; any other error names its kind too (it is not a check's verdict)."""
    if isinstance(e, (VerifyFailed, StepFailed, SafetyRefusal)):
        return str(e)
    return f"{type(e).__name__}: {e}"
