"""Multi-server rotation: one rotate-ca, then every server restarts in turn, coordinated through the cluster.

On a cluster with more than one control-plane Node every step goes like this (objects: cluster.py):
  driver     the server whose k3srotd starts the step takes the k3srotd-step lease, checks that every server
             runs its key set, does backup, intent, staged and rotate-ca as on a single server, then PUBLISHES
             the step (id, name, target kids, file sha256) on the lease, restarts its own K3s under the
             k3srotd-restart lease, verifies it as on a single server, and waits until every server reports the
             target. Only then it commits, publishes the outcome with its state, and releases the step lease.
  followers  every other server's k3srotd (the daemon; or a foreground command) sees that its live file is not
             the published one, takes k3srotd-restart, backs up its live file, restarts its own K3s
             (restart-command), verifies exactly as the executor does (a new process, the live file equal to the
             published content, the signer, /readyz, the JWKS), releases the lease and reports. When the step is
             finished it adopts the driver's state (pending key, retirement times), so that every server plans
             the same next step.
Only `staged` is allowed: the new key must verify on every server before any server signs with it (FACTS: the
[old, new] upload, every server restarted, only then [new, old]).

Failure policy (applied here):
- A server that fails its restart reports it; the driver rolls the whole cluster back (a rollback is published
  like any step, and the others restart onto it).
- A server that is down, or whose k3srotd does not run, is waited for without a time limit; the step stays open,
  no next step starts, and status and the log say which server is awaited and why. It catches up when it runs.
- A server that cannot reach the API does nothing: no lease, so no restart and no step (and says so).
- A lease holder that died blocks the others for one lease duration at most.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

from k3srotd import keys
from k3srotd.clock import Clock
from k3srotd.cluster import (
    RESTART_LEASE,
    STEP_LEASE,
    Cluster,
    Held,
    Report,
    Server,
    Step,
)
from k3srotd.config import Config
from k3srotd.errors import ConfigError, LockHeld, SafetyRefusal
from k3srotd.files import sha256
from k3srotd.kubeapi import APIError
from k3srotd.rollplan import Book, awaited, lease_seconds, my_turn, node_name, out_of_step
from k3srotd.state import Intent, State, ts

if TYPE_CHECKING:
    from k3srotd.engine import Session
    from k3srotd.k3s import K3s, ServerProcess
    from k3srotd.steps import Executor

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


def attach(
    cfg: Config, k3s: K3s, log: Any, clock: Clock, progress: Any = None, background: bool = False
) -> Optional[Rolling]:
    """The Rolling of a multi-server cluster, or None on a single server (one control-plane Node, or an API that
    says nothing about Nodes). SafetyRefusal when this server is known to be one of several and cannot reach the
    API: it must not act alone."""
    me = node_name(cfg)
    book = Book(cfg.state_dir)
    known = book.load().get("servers") or []
    cluster = Cluster(k3s.api(), me, clock, lease_seconds(cfg))
    try:
        servers = cluster.servers()
    except (APIError, ConfigError) as e:
        if len(known) > 1:
            raise SafetyRefusal(
                f"cannot reach the API ({e}); this server ({me}) is one of {len(known)} servers "
                f"({', '.join(known)}), which coordinate through it: it takes no step and restarts nothing "
                "until it can. Check k3s-server-url and kubeconfig"
            ) from None
        return None
    names = [s.name for s in servers]
    if len(names) <= 1:
        if len(known) > 1:
            book.update(servers=names)
        return None
    if me not in names:
        raise SafetyRefusal(
            f"this server's node name {me!r} is not one of the control-plane Nodes ({', '.join(names)}); set "
            "node-name in the k3srotd config (or node-name in K3s's config)"
        )
    if known != names:
        book.update(servers=names, node=me)
    return Rolling(cfg, k3s, log, clock, progress, background, cluster, servers)


class Rolling:
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
        self._mine: Optional[Report] = None

    # --- reading the cluster
    def _picture(self) -> tuple[list[Server], Optional[Step], dict[str, Report]]:
        leases = self.cluster.leases()
        self.servers = self.cluster.servers()
        reports = Cluster.reports(leases)
        if self._mine is None:
            self._mine = reports.get(self.me)
        return self.servers, Step.from_lease(leases.get(STEP_LEASE)), reports

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
        from k3srotd.steps import VerifyFailed

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
        from k3srotd.steps import VerifyFailed

        proc = self._running()
        if proc is None:
            return f"K3s is not running on {self.me}; it restarts onto {step.step} ({step.id}) once it runs"
        what = f"{self.me}'s restart onto {step.step} ({step.id})"
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

    def promote_or_follow(self, s: Session, data: bytes, live: keys.KeyFile) -> keys.KeyFile:
        """rotate-now's promote; when another server's daemon took the step first, follow it to its end."""
        pending = s.state.pending
        try:
            return s.promote(data, live)
        except Waiting:
            self.wait_in_step(s.executor)
            _, now_live, _ = s.read_live()
            if pending is None or now_live.signer.kid != pending:
                raise
            self.log.info("rolling.followed", msg=f"another server promoted {pending}; this server followed it")
            return now_live

    def refuse_direct(self) -> None:
        names = ", ".join(s.name for s in self.servers)
        raise SafetyRefusal(
            f"strategy direct is refused on a cluster of {len(self.servers)} servers ({names}): the new key would "
            "sign on the first server restarted while the others cannot verify its tokens yet. Use strategy "
            "staged (the default): it publishes the key on every server before any server signs with it"
        )

    # --- the driver (hooks in steps.Executor)
    def begin(self, step: str) -> None:
        """Before the step's first side effect: take k3srotd-step; refuse (Waiting) unless the cluster is in step."""
        try:
            self.cluster.acquire(STEP_LEASE)
            self.holding_step = True
            if step == "rollback":
                return  # a human's rollback goes ahead; the servers catch up as they can
            data, _ = self._live()
            servers, cur, reports = self._picture()
        except Held as h:
            raise Waiting(f"{step} waits: another server drives a step ({h})") from None
        except APIError as e:
            raise Waiting(f"{step} waits: cannot reach the API ({e})", API_RETRY) from None
        reason = out_of_step(servers, cur, reports, self.me, sha256(data))
        moved = cur is not None and cur.id != self.seen_step and cur.driver != self.me
        if reason is None and self.seen_step is not None and moved and cur is not None:
            reason = f"the cluster moved on to {cur.step} ({cur.id})"
        if reason is not None:
            self._release(STEP_LEASE)
            self.holding_step = False
            raise Waiting(f"{step} waits: {reason}")

    def _publish(self, annotations: dict[str, str], release: bool) -> None:
        """Write the step's annotations on k3srotd-step (taking it back if it expired meanwhile)."""
        limit = self.clock.monotonic() + lease_seconds(self.cfg)
        while True:
            try:
                self.cluster.acquire(STEP_LEASE, annotations)
                self.holding_step = True
                break
            except Held:
                if self.clock.monotonic() >= limit:
                    raise
                self.clock.sleep(TURN_POLL)
        if release:
            self.cluster.release(STEP_LEASE)
            self.holding_step = False

    def restart_and_verify(
        self, ex: Executor, step: str, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]
    ) -> None:
        """After rotate-ca: publish the step, restart here in turn, then (unless rolling back) await every server."""
        from k3srotd.steps import VerifyFailed

        intent = ex._intent()
        sid = f"{step}-{self.clock.now().strftime('%Y%m%dT%H%M%SZ')}-{self.me}-{uuid.uuid4().hex[:6]}"
        pub = Step(
            id=sid,
            step=step,
            driver=self.me,
            before_kids=list(intent.before_kids),
            target_kids=target.kids,
            signer_kid=target.signer.kid,
            target_sha=sha256(staged),
            outcome="rolling",
            published_at=self.clock.now(),
        )
        self.book.update(driving=sid)
        self.seen_step = sid
        try:
            self._publish(pub.annotations(), release=False)
        except (APIError, Held) as e:
            raise VerifyFailed(f"could not publish {step} to the other servers: {e}") from None
        self.log.info(
            "rolling.published",
            msg=f"{step} ({sid}) published to {len(self.servers)} servers: {', '.join(target.kids)}; each restarts "
            "in turn",
            step=step,
            kids=target.kids,
            node=self.me,
        )
        self._own_turn(ex, pub, target, staged, old)
        if intent.stage == "rolling-back":
            return
        intent.stage = "rolling"
        ex.store.save(ex.state)
        self.await_all(pub)

    def _own_turn(
        self, ex: Executor, step: Step, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]
    ) -> None:
        from k3srotd.steps import VerifyFailed

        self._take_restart_lease(f"{self.me}'s restart onto {step.step} ({step.id})", None)
        try:
            ex.restart_here(step.step, target, staged, old)
        except VerifyFailed as e:
            self._report(target, step.target_sha, force=True, step_id=step.id, result="failed", error=str(e)[:500])
            raise
        finally:
            self._release(RESTART_LEASE)
        try:
            self._report(target, step.target_sha, force=True, step_id=step.id, result="ok", error="")
        except APIError as e:  # await_all reports again
            self.log.warning("rolling.report", msg=f"could not report ({e}); trying again")

    def await_all(self, step: Step) -> None:
        """Until every server reports the step. VerifyFailed when one failed it; Waiting in the background."""
        from k3srotd.steps import VerifyFailed

        start = self.clock.monotonic()
        while True:
            with contextlib.suppress(Held, APIError):
                self.cluster.acquire(STEP_LEASE)  # renewed while we work
            try:
                mine = self._mine
                if mine is None or mine.step_id != step.id or mine.result != "ok":
                    data, live = self._live()
                    if sha256(data) == step.target_sha:
                        self._report(live, step.target_sha, force=True, step_id=step.id, result="ok", error="")
                servers, cur, reports = self._picture()
            except APIError as e:
                servers, cur, reports = self.servers, step, {}
                unreachable: Optional[str] = f"cannot reach the API ({e})"
            else:
                unreachable = None
            if cur is None or cur.id != step.id:
                raise VerifyFailed(f"the published step changed under us ({cur.id if cur else 'none'})")
            waiting, failed = awaited(servers, step, reports, self.clock.now())
            if unreachable is not None:
                waiting, failed = [("the API", unreachable)], []
            if failed:
                text = "; ".join(f"{n}: {e}" for n, e in failed)
                raise VerifyFailed(f"{len(failed)} server(s) could not restart onto the published key set: {text}")
            if not waiting:
                self.log.info(
                    "rolling.complete",
                    msg=f"{step.step} ({step.id}): all {len(servers)} servers run {', '.join(step.target_kids)}",
                    node=self.me,
                )
                return
            text = f"{step.step} waits for " + "; ".join(f"{n}: {why}" for n, why in waiting)
            self._say("rolling.waiting", text)
            if self.background:
                raise Waiting(text)
            if self.progress is not None:
                self.progress(text, self.clock.monotonic() - start)
            self.clock.sleep(LOOK_SECONDS)

    def finished(self, state: State, outcome: str) -> None:
        """After commit (or a rollback): publish the outcome and the state for the others; release the lease."""
        sid = self.book.load().get("driving")
        try:
            cur = Step.from_lease(self.cluster.lease(STEP_LEASE))
            if sid and cur is not None and cur.id == sid:
                done = dataclasses.replace(cur, outcome=outcome, state=json.dumps(state.snapshot()))
                self._publish(done.annotations(), release=True)
            elif self.holding_step:
                self._release(STEP_LEASE)
        except (APIError, Held) as e:
            self.log.warning("rolling.finish", msg=f"could not publish the outcome ({e}); the next run does")
            return
        self.book.update(driving=None, adopted=sid, following=None)

    def resume(self, ex: Executor, intent: Intent) -> Optional[str]:
        """An interrupted step this server published: finish its part and wait for the others, or None when it
        was never published (the executor's own resume applies)."""
        from k3srotd.steps import VerifyFailed

        sid = self.book.load().get("driving")
        try:
            _, cur, _ = self._picture()
        except APIError as e:
            raise Waiting(f"{intent.step} is rolling out; cannot reach the API ({e})", API_RETRY) from None
        if not sid or cur is None or cur.id != sid or not cur.open:
            return None
        data, live = self._live()
        try:
            if sha256(data) != intent.staged_sha256:
                if live.kids != intent.before_kids or not ex.staging.key.exists():
                    return None
                staged = ex.staging.key.read_bytes()
                if sha256(staged) != intent.staged_sha256:
                    return None
                self._own_turn(ex, cur, keys.parse(staged, str(ex.staging.key)), staged, self.k3s.server_process())
                data, live = self._live()
            elif self._mine is None or self._mine.step_id != cur.id:
                ex.wait_for(live, data, None)
                self._report(live, sha256(data), force=True, step_id=cur.id, result="ok", error="")
            intent.stage = "rolling"
            ex.store.save(ex.state)
            self.await_all(cur)
        except VerifyFailed as e:
            ex._fail(intent.step, str(e), live)
            ex.rollback_intent(f"{intent.step} failed on the cluster: {e}")
            ex.resumed = (intent.step, "rolled-back")
            return f"rolled back the {intent.step}: {e}"
        ex.commit(intent.step, live)
        ex.resumed = (intent.step, "finished")
        return f"finished the {intent.step} on every server"

    def close(self, state: State) -> None:
        """Session end: give the step lease up unless a published step of ours is still rolling."""
        intent = state.intent
        if not self.holding_step or (intent is not None and intent.stage in ("rolling", "restarting")):
            return
        self._release(STEP_LEASE)
        self.holding_step = False
