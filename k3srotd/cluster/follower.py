"""Multi-server rotation, a follower's part: what every server's k3srotd owes a step another server published.

A follower (the daemon at every look; a foreground command before it starts a step) sees that its live file is
not the published one, takes k3srotd-restart, backs up its live file, runs the same checks as around the
driver's restart (gates.step_checks), restarts its own K3s (restart-command), verifies exactly as the executor
does (a new process, the live file equal to the published content, the signer, /readyz, the JWKS), releases the
lease and reports. A server found on the published set already (it restarted meanwhile, or came back after
being down) is verified and reports without a restart. When the step is finished it adopts the driver's state
(pending key, retirement times), so that every server plans the same next step. The driver's part: rolling.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Callable, Optional

from k3srotd.cluster.leases import RESTART_LEASE, STEP_LEASE, TOKENS_LEASE, Cluster, Held, Report, Server, Step
from k3srotd.cluster.rollplan import Book, held_by_window, my_turn, orphaned, out_of_step
from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import Clock
from k3srotd.core.model import ts
from k3srotd.errors import LockHeld
from k3srotd.node.files import sha256
from k3srotd.node.kubeapi import APIError

if TYPE_CHECKING:
    from k3srotd.engine.executor import Executor
    from k3srotd.node.k3s import K3s, ServerProcess

LOOK_SECONDS = 1.0  # between looks at the cluster while a step is open
TURN_POLL = 0.25  # between tries for the restart lease
TURN_WAIT = 20.0  # a follower waits this long for its turn within one look
IDLE_POLL = dt.timedelta(seconds=2)  # the daemon looks at the cluster at least this often
HEARTBEAT = 30.0  # a report is rewritten at least this often
API_RETRY = 5.0  # after the API could not be reached


class Waiting(LockHeld):
    """Not a failure: the step waits for another server. The daemon looks again after `retry` seconds; a command
    says so and exits 4, like a held lock."""

    def __init__(self, message: str, retry: float = LOOK_SECONDS) -> None:
        super().__init__(message)
        self.retry = retry


class Follower:
    def __init__(
        self,
        cfg: Config,
        k3s: K3s,
        log: Any,
        clock: Clock,
        progress: Any,
        background: bool,
        cluster: Cluster,
        servers: list[Server],
    ) -> None:
        self.cfg = cfg
        self.k3s = k3s
        self.log = log
        self.clock = clock
        self.progress = progress
        self.background = background
        self.cluster = cluster
        self.servers = servers
        self.me = cluster.me
        self.book = Book(cfg.state_dir)
        self.seen_step: Optional[str] = None
        self.holding_step = False
        self.ignore_window = False  # the driver's step was started with --ignore-window (commands set it)
        self._check_id = ""  # the token check asked on k3srotd-tokens, as last read
        self._mine: Optional[Report] = None

    # --- reading the cluster
    def _picture(self) -> tuple[list[Server], Optional[Step], dict[str, Report]]:
        leases = self.cluster.leases()
        self.servers = self.cluster.servers()
        reports = Cluster.reports(leases)
        if self._mine is None:
            self._mine = reports.get(self.me)
        self._check_id = leases[TOKENS_LEASE].ann("check-id") if TOKENS_LEASE in leases else ""
        return self.servers, Step.from_lease(leases.get(STEP_LEASE)), reports

    def _answer_token_check(self, live: keys.KeyFile, sha: str) -> None:
        """A server asked before a prune whether old tokens are still presented: answer for this kube-apiserver
        (its /metrics counts only what reached it), once per check."""
        from k3srotd.identity import gates

        cid = self._check_id
        if not cid or (self._mine is not None and self._mine.tokens_check == cid):
            return
        answer = gates.token_counters_verdict(self.cfg, self.k3s, self.clock.now())
        self._report(live, sha, force=True, tokens_check=cid, tokens=answer or "ok")

    def _live(self) -> tuple[bytes, keys.KeyFile]:
        data = self.k3s.live_bytes()
        return data, keys.parse(data, str(self.k3s.live_path))

    def _say(self, event: str, text: str, level: str = "info") -> None:
        """Log `text` once per change (the daemon looks every second; the log should not)."""
        if self.book.load().get("said") == text:
            return
        self.book.update(said=text)
        getattr(self.log, level)(event, msg=text, node=self.me)

    # --- this server's report
    def _report(self, live: keys.KeyFile, sha: str, force: bool = False, **fields: str) -> None:
        cur = self._mine
        new = Report(
            node=self.me,
            live_kids=live.kids,
            live_sha=sha,
            step_id=fields.get("step_id", cur.step_id if cur else ""),
            result=fields.get("result", cur.result if cur else ""),
            error=fields.get("error", cur.error if cur else ""),
            at=None,
            valid_until=None,
            tokens_check=fields.get("tokens_check", cur.tokens_check if cur else ""),
            tokens=fields.get("tokens", cur.tokens if cur else ""),
        )
        # rewritten when it changes, else about every HEARTBEAT: each write is a datastore write on every server
        every = min(HEARTBEAT, self.cluster.duration / 2)
        fresh = cur is not None and cur.at is not None and (self.clock.now() - cur.at).total_seconds() < every
        if not force and fresh and cur is not None and cur.annotations() == new.annotations():
            return
        lease = self.cluster.report(new)
        self._mine = Report.from_lease(lease)

    # --- one look, as a follower
    def look(self, ex: Executor) -> tuple[Optional[str], float]:
        """Do what this server owes the published step (restart in turn, or verify), adopt a finished step, report.
        (None, 0) when a new step may start here; else (what is awaited, seconds until the next look). Waiting when
        the API cannot be reached."""
        try:
            return self._look(ex)
        except APIError as e:
            raise Waiting(f"cannot reach the API ({e}); nothing is done here without it", API_RETRY) from None

    def _look(self, ex: Executor) -> tuple[Optional[str], float]:
        for _ in range(3):
            data, live = self._live()
            sha = sha256(data)
            servers, step, reports = self._picture()
            self.seen_step = step.id if step else None
            tried: dict[str, str] = self.book.load().get("tried") or {}
            turn = my_turn(step, sha, self._mine, tried)
            if step is not None and turn == "restart":
                waiting = self._follow(ex, step, data, live)
                if waiting is not None:
                    self._report(live, sha)
                    return waiting, LOOK_SECONDS
                continue  # look again from the new live file
            failed = tried.get(step.id, "") if step is not None and sha != step.target_sha else ""
            mine = self._mine
            if step is not None and failed.startswith("failed") and (mine is None or mine.step_id != step.id):
                # it failed while its own API was down (its K3s did not come back at first): report it now
                self._report(live, sha, force=True, step_id=step.id, result="failed", error=failed[8:500])
            if step is not None and turn == "verify":
                waiting = self._verify_here(ex, step, live, sha)
                if waiting is not None:
                    return waiting, LOOK_SECONDS
            else:
                self._report(live, sha)
            self._answer_token_check(live, sha)
            if step is not None and sha == step.target_sha and self._take_over(ex, step, servers, reports):
                continue  # look again: the step is committed now, and adopted
            if step is not None and not step.open and sha == step.target_sha:
                self._adopt(ex, step)
            reason = out_of_step(servers, step, reports, self.me, sha)
            return reason, (LOOK_SECONDS if reason else 0.0)
        return "this server's key set keeps changing", LOOK_SECONDS

    def _running(self) -> Optional[ServerProcess]:
        proc = self.k3s.server_process()
        if proc is None or (self.cfg.verify_api and not self.k3s.api().readyz()):
            return None
        return proc

    def _verify_here(self, ex: Executor, step: Step, live: keys.KeyFile, sha: str) -> Optional[str]:
        """This server already runs the published set (it restarted since, e.g. after being down): check it as
        after a restart, and report."""
        from k3srotd.engine.executor import VerifyFailed

        if self._running() is None:
            return f"K3s is not running on {self.me}; it is checked against {step.step} ({step.id}) once it runs"
        try:
            ex.wait_for_kids(step.target_kids, step.signer_kid, step.target_sha, None)
        except VerifyFailed as e:
            self._failed(step, live, sha, str(e))
            return None
        self.log.info(
            "rolling.on-step",
            msg=f"{self.me} runs {step.step} ({step.id}) already: {', '.join(step.target_kids)}",
            node=self.me,
            kids=step.target_kids,
        )
        self._report(live, sha, force=True, step_id=step.id, result="ok", error="")
        self._following(step)
        return None

    def _following(self, step: Step) -> None:
        """Until it adopts the driver's state, status shows this server's state as the step will commit it."""
        if step.driver != self.me and step.open:
            at = ts(step.published_at) if step.published_at else None
            following = {"id": step.id, "step": step.step, "before": step.before_kids, "target": step.target_kids}
            self.book.update(following={**following, "at": at})

    def _failed(self, step: Step, live: keys.KeyFile, sha: str, error: str) -> None:
        tried = dict(self.book.load().get("tried") or {})
        tried[step.id] = f"failed: {error}"
        self.book.update(tried=dict(list(tried.items())[-20:]))
        self.log.error(
            "step.failed",
            msg=f"{step.step} failed on {self.me}: {error}; {step.driver} rolls the cluster back",
            step=step.step,
            signer_kid=live.signer.kid,
            kids=live.kids,
            node=self.me,
        )
        self._report(live, sha, force=True, step_id=step.id, result="failed", error=error[:500])

    def _take_restart_lease(self, what: str, limit: Optional[float]) -> Optional[str]:
        """None once this server holds k3srotd-restart; else why not, after waiting up to `limit` seconds."""
        start = self.clock.monotonic()
        while True:
            try:
                self.cluster.acquire(RESTART_LEASE)
                return None
            except (Held, APIError) as h:
                why = f"{what} waits for its turn: {h}"
                waited = self.clock.monotonic() - start
                if limit is not None and waited >= limit:
                    return why
                self._say("rolling.turn", why)
                if self.progress is not None:
                    self.progress(why, waited)
                self.clock.sleep(TURN_POLL)

    def _follow(self, ex: Executor, step: Step, data: bytes, live: keys.KeyFile) -> Optional[str]:
        """Restart this server's K3s onto the published set, in turn. None when done (or failed and reported)."""
        from k3srotd.engine.executor import VerifyFailed

        proc = self._running()
        if proc is None:
            return f"K3s is not running on {self.me}; it restarts onto {step.step} ({step.id}) once it runs"
        what = f"{self.me}'s restart onto {step.step} ({step.id})"
        held = held_by_window(step, self.cfg.maintenance_window, self.clock.now())
        if held is not None:
            self._say("rolling.window", f"{what} waits: {held}")
            return f"{what} waits: {held}"
        waiting = self._take_restart_lease(what, TURN_WAIT)
        if waiting is not None:
            return waiting
        try:
            self.log.info(
                "rolling.restart",
                msg=f"{self.me} restarts K3s onto {step.step} ({step.id}, published by {step.driver}): "
                f"{', '.join(step.target_kids)}",
                node=self.me,
                kids=step.target_kids,
            )
            ex.backups.save(data, f"{step.step}-follow", self.clock.now())
            for check in ex.checks:  # the same checks as around the driver's restart (gates.step_checks)
                check.before_restart(step.step, live)
            res = self.k3s.restart()
            self.log.info("restart", msg=f"restart-command exited {res.returncode}", argv=list(res.argv))
            try:
                ex.wait_for_kids(step.target_kids, step.signer_kid, step.target_sha, proc)
                new_data, new_live = self._live()
                for check in ex.checks:
                    check.after_restart(step.step, new_live)
            except VerifyFailed as e:
                self._failed(step, live, sha256(data), str(e))
                return None
            tried = dict(self.book.load().get("tried") or {})
            tried[step.id] = "ok"
            self.book.update(tried=dict(list(tried.items())[-20:]))
            self._report(new_live, sha256(new_data), force=True, step_id=step.id, result="ok", error="")
            self._following(step)
            self.log.info(
                "rolling.restarted",
                msg=f"{self.me} runs {step.step} ({step.id}): {', '.join(step.target_kids)}",
                node=self.me,
                kids=step.target_kids,
            )
        finally:
            self._release(RESTART_LEASE)
        return None

    def _release(self, name: str) -> None:
        try:
            self.cluster.release(name)
        except APIError as e:  # it expires by itself
            self.log.warning("rolling.release", msg=f"could not release {name} ({e}); it expires by itself")

    def _take_over(self, ex: Executor, step: Step, servers: list[Server], reports: dict[str, Report]) -> bool:
        """Commit an orphaned step (rollplan.orphaned) for the cluster: this server's state as the step commits
        it, published for the others to adopt. True when it did."""
        from k3srotd.core import planner

        now = self.clock.now()
        if self._mine is not None:
            reports = {**reports, self.me: self._mine}
        if not orphaned(step, None, servers, reports, self.me, now):
            return False  # cheap first: no extra API call while the step is not done everywhere
        lease = self.cluster.lease(STEP_LEASE)
        published = Step.from_lease(lease)
        # judged on the step the lease carries now, not the one read before: a driver that just committed and
        # released its lease is not gone (and taking the lease then would make its next step wait)
        if published is None or published.id != step.id:
            return False
        if not orphaned(published, lease, servers, reports, self.me, now):
            return False
        try:
            taken = self.cluster.acquire(STEP_LEASE)  # resourceVersion: one server wins
        except Held:
            return False
        cur = Step.from_lease(taken)
        if cur is None or cur.id != step.id or not cur.open:
            self.cluster.release(STEP_LEASE)
            return False
        state = planner.committed(ex.state, step.step, step.before_kids, step.target_kids, now)
        done = dataclasses.replace(cur, outcome="committed", state=json.dumps(state.snapshot()))
        self.cluster.release(STEP_LEASE, done.annotations())
        self.log.warning(
            "rolling.taken-over",
            msg=f"{step.driver} published {step.step} ({step.id}) and stopped renewing k3srotd-step; every server "
            f"runs it, so {self.me} committed it for the cluster",
            node=self.me,
            step=step.step,
            kids=step.target_kids,
        )
        return True

    def _adopt(self, ex: Executor, step: Step) -> None:
        if self.book.load().get("adopted") == step.id or not step.state:
            return
        try:
            snap = json.loads(step.state)
            if not isinstance(snap, dict):
                raise ValueError("not an object")
            ex.state.restore(snap)
        except (ValueError, KeyError, TypeError) as e:
            self.log.warning("rolling.adopt", msg=f"the state {step.driver} published is unusable ({e}); kept ours")
            return
        ex.store.save(ex.state)
        self.book.update(adopted=step.id, following=None)
        self.log.info(
            "rolling.adopted",
            msg=f"{step.step} ({step.id}) is {step.outcome}; this server follows {step.driver}'s state",
            node=self.me,
        )

    # --- the daemon and the commands
    def daemon_turn(self, ex: Executor, status: Callable[[str], None]) -> Optional[dt.datetime]:
        """The daemon's look before it plans: a wake time when it must not plan now, else None."""
        reason, delay = self.look(ex)
        if reason is None:
            return None
        status(f"waiting: {reason}")
        return self.clock.now() + dt.timedelta(seconds=delay)

    def wait_in_step(self, ex: Executor) -> None:
        """Foreground: do this server's part and wait until a new step may start here."""
        start = self.clock.monotonic()
        while True:
            try:
                reason, delay = self.look(ex)
            except Waiting as e:
                reason, delay = str(e), e.retry
            if reason is None:
                return
            self._say("rolling.waiting", f"waiting: {reason}")
            if self.progress is not None:
                self.progress(f"waiting: {reason}", self.clock.monotonic() - start)
            self.clock.sleep(delay)
