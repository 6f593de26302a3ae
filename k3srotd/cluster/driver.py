"""Multi-server rotation: one rotate-ca, then every server restarts in turn, coordinated through the cluster.

On a cluster with more than one control-plane Node every step goes like this (the API objects: cluster.py; the
pure decisions and status rows: rollplan.py; the followers' part: follower.py; the driver's part: here):
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
from typing import TYPE_CHECKING, Any, Optional

from k3srotd.cluster.follower import API_RETRY, IDLE_POLL, LOOK_SECONDS, TURN_POLL, TURN_WAIT, Follower, Waiting
from k3srotd.cluster.leases import ANN, RESTART_LEASE, STEP_LEASE, TOKENS_LEASE, Cluster, Held, Step, micro, parse_time
from k3srotd.cluster.rollplan import Book, awaited, direct_refused, lease_seconds, node_name, out_of_step
from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import Clock
from k3srotd.core.model import Intent, State, ts
from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.files import sha256
from k3srotd.node.kubeapi import APIError

if TYPE_CHECKING:
    from k3srotd.engine.executor import Executor
    from k3srotd.engine.session import Session
    from k3srotd.node.k3s import K3s, ServerProcess

__all__ = ["IDLE_POLL", "Rolling", "Waiting", "attach"]

CHECK_FRESH = dt.timedelta(minutes=10)  # a token check younger than this is answered, not asked again
CHECK_WAIT = 15.0  # a foreground prune waits this long for the other servers' answers


def attach(
    cfg: Config, k3s: K3s, log: Any, clock: Clock, progress: Any = None, background: bool = False
) -> Optional[Rolling]:
    """The Rolling of a multi-server cluster, or None on a single server (one control-plane Node, or an API that
    says nothing about Nodes). SafetyRefusal when this server cannot reach the API while K3s runs (it may be
    one of several, and must not act alone), or is known to be one of several."""
    me = node_name(cfg)
    book = Book(cfg.state_dir)
    known = book.servers()
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
        if cfg.verify_api and k3s.server_process() is not None:
            # K3s runs but its API cannot be read: this may be one server of several, which must not act alone
            # (and the checks after a restart would fail anyway). K3s not running: the step's own checks say so.
            raise SafetyRefusal(
                f"cannot reach the API ({e}), so this server ({me}) cannot tell whether other K3s servers share "
                "its datastore: it takes no step and restarts nothing until it can. Check k3s-server-url and "
                "kubeconfig"
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


class Rolling(Follower):
    """The driver's part (hooks in steps.Executor, engine.Session, commands) on top of the follower's."""

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
        raise direct_refused([s.name for s in self.servers])

    # --- the driver (hooks in steps.Executor)
    def begin(self, step: str) -> None:
        """Before the step's first side effect: take k3srotd-step; refuse (Waiting) unless the cluster is in step."""
        try:
            self._acquire_step_lease()
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

    def _acquire_step_lease(self, annotations: Optional[dict[str, str]] = None, wait: Optional[float] = None) -> None:
        """Take k3srotd-step (merging `annotations` in), retrying while another server holds it for up to `wait`
        seconds; by default, in the foreground, a little: a holder that just finished its step lets it go."""
        if wait is None:
            wait = 0.0 if self.background else TURN_WAIT
        limit = self.clock.monotonic() + wait
        while True:
            try:
                self.cluster.acquire(STEP_LEASE, annotations)
                return
            except Held:
                if self.clock.monotonic() >= limit:
                    raise
                self.clock.sleep(TURN_POLL)

    def _new_id(self) -> str:
        """Unique across the cluster and readable: when, by whom."""
        return f"{self.clock.now().strftime('%Y%m%dT%H%M%SZ')}-{self.me}-{uuid.uuid4().hex[:6]}"

    def _publish(self, annotations: dict[str, str], release: bool) -> None:
        """Write the step's annotations on k3srotd-step (taking it back if it expired meanwhile)."""
        self._acquire_step_lease(annotations, wait=lease_seconds(self.cfg))
        self.holding_step = True
        if release:
            self.cluster.release(STEP_LEASE)
            self.holding_step = False

    def restart_and_verify(
        self, ex: Executor, step: str, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]
    ) -> None:
        """After rotate-ca: publish the step, restart here in turn, then (unless rolling back) await every server."""
        from k3srotd.engine.executor import VerifyFailed

        intent = ex._intent()
        sid = f"{step}-{self._new_id()}"
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
            window="ignored" if self.ignore_window else "",
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
        from k3srotd.engine.executor import VerifyFailed, checkpoint

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
        checkpoint(step.step, "reported")

    def await_all(self, step: Step) -> None:
        """Until every server reports the step. VerifyFailed when one failed it; Waiting in the background."""
        from k3srotd.engine.executor import VerifyFailed

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
        from k3srotd.engine.executor import VerifyFailed

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
            ex.fail_and_roll_back(intent.step, str(e), live, f"{intent.step} failed on the cluster: {e}")
            ex.resumed = (intent.step, "rolled-back")
            return f"rolled back the {intent.step}: {e}"
        ex.commit(intent.step, live)
        ex.resumed = (intent.step, "finished")
        return f"finished the {intent.step} on every server"

    def token_check(self) -> Optional[str]:
        """Before a prune: the other servers' answers to a token check (asked now, unless one was asked within
        CHECK_FRESH). None when no other kube-apiserver saw old tokens presented during the grace-period; else
        which server saw what, or which have not answered (in the foreground, after up to CHECK_WAIT)."""
        now = self.clock.now()
        deadline = self.clock.monotonic() + (0.0 if self.background else CHECK_WAIT)
        try:
            cid, asked = self._token_check_id(now)
            while True:
                servers, _, reports = self._picture()
                others = [s.name for s in servers if s.name != self.me]
                missing = [n for n in others if n not in reports or reports[n].tokens_check != cid]
                grew = [f"{n}: {reports[n].tokens}" for n in others if n not in missing and reports[n].tokens != "ok"]
                if grew:
                    return "; ".join(grew)
                if not missing:
                    return None
                if self.clock.monotonic() >= deadline:
                    return (
                        f"{', '.join(missing)} have not answered the token check asked at {ts(asked)} yet (each "
                        "server's k3srotd answers for its own kube-apiserver within seconds)"
                    )
                self.clock.sleep(LOOK_SECONDS)
        except APIError as e:
            return f"cannot ask the other servers whether old tokens are still presented to them ({e})"

    def _token_check_id(self, now: dt.datetime) -> tuple[str, dt.datetime]:
        lease = self.cluster.lease(TOKENS_LEASE)
        asked = parse_time(lease.ann("check-at")) if lease is not None else None
        if lease is not None and lease.ann("check-id") and asked is not None and now - asked < CHECK_FRESH:
            return lease.ann("check-id"), asked
        cid = self._new_id()
        try:
            self.cluster.acquire(TOKENS_LEASE, {ANN + "check-id": cid, ANN + "check-at": micro(now)})
            self.cluster.release(TOKENS_LEASE)
        except Held:  # another server asks right now: take its question
            return self._token_check_id(now)
        return cid, now

    def close(self, state: State) -> None:
        """Session end: give the step lease up unless a published step of ours is still rolling."""
        intent = state.intent
        if not self.holding_step or (intent is not None and intent.stage in ("rolling", "restarting")):
            return
        self._release(STEP_LEASE)
        self.holding_step = False
