"""Multi-server rotation: one rotate-ca, then every server restarts in turn, coordinated through the cluster.

On a cluster with more than one control-plane Node every step goes like this (the API objects: leases.py; the
pure decisions: core/rollout.py; the followers' part: follower.py; the driver's part: here, behind the engine's
Coordinator seam):
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
- Servers are counted by kube-apiserver (core.rollout.members). A step starts, and each restart begins, only while
  every other server is up (not_serving). A server down at the driver's own restart turn (nothing restarted yet) is
  waited for up to restart-timeout, then the step is rolled back; once the driver has restarted, a server down is
  waited for without a time limit.
- A server that cannot reach the API does nothing: no lease, so no restart and no step (and says so).
- A lease holder that died blocks the others for one lease duration at most.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from typing import Iterator, Optional, Sequence

from k3srotd.cluster.book import Book, count_servers, identity, k3s_version, lease_seconds, node_name
from k3srotd.cluster.follower import Follower
from k3srotd.cluster.leases import Cluster, Held
from k3srotd.cluster.link import API_RETRY, LOOK_SECONDS, TURN_POLL, TURN_WAIT, Link, Waiting
from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.cluster import ANN, RESTART_LEASE, STEP_LEASE, TOKENS_LEASE, Step, micro, parse_time
from k3srotd.core.durations import format_duration
from k3srotd.core.model import Intent, State, ts
from k3srotd.core.ports import Log
from k3srotd.core.rollout import awaited, direct_refused, join_refusal, not_serving, out_of_step
from k3srotd.core.verify import VerifyFailed
from k3srotd.engine.coordinator import Announcement, Coordinator, OneServer, Rejoined, Run
from k3srotd.engine.restart import Progress, Restarter
from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node.files import sha256
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import Store

CHECK_FRESH = dt.timedelta(minutes=10)  # a token check younger than this is answered, not asked again
CHECK_WAIT = 15.0  # a prune (foreground or daemon) waits this long for the other servers' answers


def attach(
    cfg: Config,
    k3s: K3s,
    log: Log,
    clock: Clock,
    progress: Optional[Progress],
    restarter: Restarter,
    store: Store,
    run: Run,
) -> Coordinator:
    """The coordinator for this run: OneServer on a single server (one control-plane Node, or an API that says
    nothing about Nodes), else the cluster's. This is the one answer to "how many servers" for the run.
    SafetyRefusal when this server cannot reach the API while K3s runs (it may be one of several, and must not
    act alone), or is known to be one of several."""
    me = node_name(cfg)
    book = Book(cfg.state_dir)
    known = book.servers()
    cluster = Cluster(k3s.api(), me, clock, lease_seconds(cfg, run.lease_seconds))
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
        return OneServer(me)
    ident = identity(cfg, k3s, k3s_version(cluster))
    servers, disagree = count_servers(cluster, servers, me, ident)
    if disagree is not None and not run.background:
        raise SafetyRefusal(f"{disagree}; nothing was changed")  # the daemon reports first and waits (begin)
    names = [s.name for s in servers]
    if len(names) <= 1:
        if len(known) > 1:
            book.update(servers=names)
        return OneServer(me)
    if me not in names:
        raise SafetyRefusal(
            f"this server's node name {me!r} is not one of the control-plane Nodes ({', '.join(names)}); set "
            "node-name in the k3srotd config (or node-name in K3s's config)"
        )
    if known != names:
        book.update(servers=names, node=me)
    link = Link(cluster, book, clock, log, progress, run.background, servers)
    link.ident = ident
    link.disagree = disagree
    return ClusterCoordinator(link, Follower(cfg, k3s, link, restarter, store), run)


class ClusterCoordinator:
    """The cluster's answers at each point of a step (engine.coordinator.Coordinator), by composition: the link
    to the others (leases, reports), the follower's part, and the driver's part here."""

    def __init__(self, link: Link, follower: Follower, run: Run) -> None:
        self.link = link
        self.follower = follower
        self.run = run
        self.me = link.me
        self.servers: Sequence[str] = [s.name for s in link.servers]
        self.holding_step = False
        self.current: Optional[Step] = None  # the step this server announced (or rejoined)

    def catch_up(self, state: State, wait: bool) -> Optional[tuple[str, float]]:
        if wait:
            self.follower.wait_in_step(state)
            return None
        reason, delay = self.follower.look(state)
        return None if reason is None else (reason, delay)

    def refuse_direct(self) -> None:
        raise direct_refused(self.servers)

    # --- the driver's part
    def begin(self, step: str) -> None:
        """Before the step's first side effect: take k3srotd-step; refuse (Waiting) unless the cluster is in step;
        while another server is down, wait (a command: up to restart-timeout, then SafetyRefusal)."""
        link = self.link
        clock = link.clock
        limit = clock.monotonic() + self.follower.cfg.restart_timeout.total_seconds()
        while True:
            down = self._begin_once(step)
            if down is None:
                return
            text = f"{step} waits: every other server must be up and serving first: {down}"
            link.say("rolling.waiting", text)
            if self.run.background:
                raise Waiting(text)
            if clock.monotonic() >= limit:
                timeout = format_duration(self.follower.cfg.restart_timeout)
                raise SafetyRefusal(
                    f"{step} refused: after restart-timeout ({timeout}) not every other "
                    f"server is up and serving: {down}; nothing was changed. Start K3s there (or its k3srotd) "
                    "and try again"
                )
            if link.progress is not None:
                link.progress(text, clock.monotonic() - limit)
            clock.sleep(LOOK_SECONDS)

    def _begin_once(self, step: str) -> Optional[str]:
        """Take k3srotd-step and judge the cluster: None to go on, else which servers are down (lease given back)."""
        link = self.link
        try:
            self._acquire_step_lease()
            self.holding_step = True
            if step == "rollback":
                return None  # a human's rollback goes ahead; the servers catch up as they can
            data, _ = self.follower._live()
            servers, cur, reports = link.picture()
        except Held as h:
            raise Waiting(f"{step} waits: another server drives a step ({h})") from None
        except APIError as e:
            raise Waiting(f"{step} waits: cannot reach the API ({e})", API_RETRY) from None
        seen = self.follower.seen_step
        reason = link.disagree or out_of_step(servers, cur, reports, self.me, sha256(data))
        moved = cur is not None and cur.id != seen and cur.driver != self.me
        if reason is None and seen is not None and moved and cur is not None:
            reason = f"the cluster moved on to {cur.step} ({cur.id})"
        refusal = join_refusal(servers, reports)
        down = not_serving(servers, reports, self.me, link.clock.now())
        if reason is None and refusal is None and not down:
            return None
        link.release(STEP_LEASE)
        self.holding_step = False
        if refusal is not None:
            raise SafetyRefusal(f"{step} refused: {refusal}; nothing was changed")
        if reason is not None:
            raise Waiting(f"{step} waits: {reason}")
        return ", ".join(down)

    def _acquire_step_lease(self, annotations: Optional[dict[str, str]] = None, wait: Optional[float] = None) -> None:
        """Take k3srotd-step (merging `annotations` in), retrying while another server holds it for up to `wait`
        seconds; by default, in the foreground, a little: a holder that just finished its step lets it go."""
        clock = self.link.clock
        if wait is None:
            wait = 0.0 if self.run.background else TURN_WAIT
        limit = clock.monotonic() + wait
        while True:
            try:
                self.link.cluster.acquire(STEP_LEASE, annotations)
                return
            except Held:
                if clock.monotonic() >= limit:
                    raise
                clock.sleep(TURN_POLL)

    def _publish(self, annotations: dict[str, str], release: bool) -> None:
        """Write the step's annotations on k3srotd-step (taking it back if it expired meanwhile)."""
        self._acquire_step_lease(annotations, wait=self.link.cluster.duration)
        self.holding_step = True
        if release:
            self.link.cluster.release(STEP_LEASE)
            self.holding_step = False

    def announce(self, a: Announcement) -> None:
        """Publish the step on k3srotd-step: every server restarts onto it in turn."""
        link = self.link
        sid = f"{a.step}-{link.new_id()}"
        pub = Step(
            id=sid,
            step=a.step,
            driver=self.me,
            before_kids=list(a.before_kids),
            target_kids=list(a.target_kids),
            signer_kid=a.signer_kid,
            target_sha=a.target_sha,
            outcome="rolling",
            published_at=link.clock.now(),
            window="ignored" if self.run.ignore_window else "",
        )
        link.book.update(driving=sid)
        self.follower.seen_step = sid
        self.current = pub
        try:
            self._publish(pub.annotations(), release=False)
        except (APIError, Held) as e:
            raise VerifyFailed(f"could not publish {a.step} to the other servers: {e}") from None
        link.log.info(
            "rolling.published",
            msg=f"{a.step} ({sid}) published to {len(link.servers)} servers: {', '.join(a.target_kids)}; each "
            "restarts in turn",
            step=a.step,
            kids=list(a.target_kids),
            node=self.me,
        )

    @contextlib.contextmanager
    def my_turn(self, step: str) -> Iterator[None]:
        """The driver's restart turn. The step is uploaded by now: a server that went down after the step began
        is seen only here, and a turn that would take the cluster below quorum waits for it up to restart-timeout;
        then the step fails and is rolled back (nothing restarted here yet: the rollback only puts the datastore
        back). A rollback's own turn waits without a bound: it must not fail for the same reason."""
        cur = self.current
        what = f"{self.me}'s restart onto {step}" + (f" ({cur.id})" if cur else "")
        timeout = self.follower.cfg.restart_timeout
        bound = None if step == "rollback" else timeout.total_seconds()
        why = self.link.take_restart_lease(what, None, gate_limit=bound)
        if why is not None:
            raise VerifyFailed(f"{why}; waited restart-timeout ({format_duration(timeout)}) without restarting here")
        try:
            yield
        finally:
            self.link.release(RESTART_LEASE)

    def restarted(self, error: Optional[str]) -> None:
        step = self.current
        if step is None:
            return
        if error is not None:
            self.link.report(
                step.target_kids, step.target_sha, force=True, step_id=step.id, result="failed", error=error[:500]
            )
            return
        try:
            self.link.report(step.target_kids, step.target_sha, force=True, step_id=step.id, result="ok", error="")
        except APIError as e:  # await_others reports again
            self.link.log.warning("rolling.report", msg=f"could not report ({e}); trying again")

    def await_others(self) -> None:
        """Until every server reports the step. VerifyFailed when one failed it; Waiting in the background."""
        step = self.current
        if step is None:
            return
        link = self.link
        start = link.clock.monotonic()
        while True:
            waiting, failed, servers = self._look_at_others(step)
            if failed:
                text = "; ".join(f"{n}: {e}" for n, e in failed)
                raise VerifyFailed(f"{len(failed)} server(s) could not restart onto the published key set: {text}")
            if not waiting:
                link.log.info(
                    "rolling.complete",
                    msg=f"{step.step} ({step.id}): all {servers} servers run {', '.join(step.target_kids)}",
                    node=self.me,
                )
                return
            text = f"{step.step} waits for " + "; ".join(f"{n}: {why}" for n, why in waiting)
            link.say("rolling.waiting", text)
            if self.run.background:
                raise Waiting(text)
            if link.progress is not None:
                link.progress(text, link.clock.monotonic() - start)
            link.clock.sleep(LOOK_SECONDS)

    def _look_at_others(self, step: Step) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
        link = self.link
        with contextlib.suppress(Held, APIError):
            link.cluster.acquire(STEP_LEASE)  # renewed while we work
        try:
            mine = link.mine
            if mine is None or mine.step_id != step.id or mine.result != "ok":
                data, live = self.follower._live()
                if sha256(data) == step.target_sha:
                    link.report(live.kids, step.target_sha, force=True, step_id=step.id, result="ok", error="")
            elif mine is not None:  # kept fresh while it waits: the others restart only while every report is
                link.report(mine.live_kids, mine.live_sha)
            servers, cur, reports = link.picture()
        except APIError as e:
            return [("the API", f"cannot reach the API ({e})")], [], len(link.servers)
        if cur is None or cur.id != step.id:
            raise VerifyFailed(f"the published step changed under us ({cur.id if cur else 'none'})")
        waiting, failed = awaited(servers, step, reports, link.clock.now())
        return waiting, failed, len(servers)

    def finished(self, state: State, outcome: str) -> None:
        """After commit (or a rollback): publish the outcome and the state for the others; release the lease."""
        link = self.link
        sid = link.book.load().get("driving")
        try:
            cur = Step.from_lease(link.cluster.lease(STEP_LEASE))
            if sid and cur is not None and cur.id == sid:
                done = dataclasses.replace(cur, outcome=outcome, state=json.dumps(state.snapshot()))
                self._publish(done.annotations(), release=True)
            elif self.holding_step:
                link.release(STEP_LEASE)
        except (APIError, Held) as e:
            link.log.warning("rolling.finish", msg=f"could not publish the outcome ({e}); the next run does")
            return
        link.book.update(driving=None, adopted=sid, following=None)

    def rejoin(self, intent: Intent) -> Optional[Rejoined]:
        """An interrupted step this server published, still open: None when it was never published, or is over."""
        link = self.link
        sid = link.book.load().get("driving")
        try:
            _, cur, _ = link.picture()
        except APIError as e:
            raise Waiting(f"{intent.step} is rolling out; cannot reach the API ({e})", API_RETRY) from None
        if not sid or cur is None or cur.id != sid or not cur.open:
            return None
        self.current = cur
        mine = link.mine
        return Rejoined(reported=mine is not None and mine.step_id == cur.id)

    def token_check(self) -> Optional[str]:
        """Before a prune: the other servers' answers to a token check (asked now, unless one was asked within
        CHECK_FRESH). None when no other kube-apiserver saw old tokens presented during the grace-period; else
        which server saw what, or which have not answered (in the foreground, after up to CHECK_WAIT)."""
        now = self.link.clock.now()
        deadline = self.link.clock.monotonic() + CHECK_WAIT  # the daemon too: its first verdict must not be "not yet"
        try:
            cid, asked = self._token_check_id(now)
            while True:
                servers, _, reports = self.link.picture()
                self.follower.answer_token_check()  # another server may wait on ours meanwhile, as we on theirs
                others = [s.name for s in servers if s.name != self.link.me]
                missing = [n for n in others if n not in reports or reports[n].tokens_check != cid]
                grew = [f"{n}: {reports[n].tokens}" for n in others if n not in missing and reports[n].tokens != "ok"]
                if grew:
                    return "; ".join(grew)
                if not missing:
                    return None
                if self.link.clock.monotonic() >= deadline:
                    return (
                        f"{', '.join(missing)} have not answered the token check asked at {ts(asked)} yet (each "
                        "server's k3srotd answers for its own kube-apiserver within seconds)"
                    )
                self.link.clock.sleep(LOOK_SECONDS)
        except APIError as e:
            return f"cannot ask the other servers whether old tokens are still presented to them ({e})"

    def _token_check_id(self, now: dt.datetime) -> tuple[str, dt.datetime]:
        lease = self.link.cluster.lease(TOKENS_LEASE)
        asked = parse_time(lease.ann("check-at")) if lease is not None else None
        if lease is not None and lease.ann("check-id") and asked is not None and now - asked < CHECK_FRESH:
            return lease.ann("check-id"), asked
        cid = self.link.new_id()
        try:
            self.link.cluster.acquire(TOKENS_LEASE, {ANN + "check-id": cid, ANN + "check-at": micro(now)})
            self.link.cluster.release(TOKENS_LEASE)
        except Held:  # another server asks right now: take its question
            return self._token_check_id(now)
        return cid, now

    def close(self, state: State) -> None:
        """Session end: give the step lease up unless a published step of ours is still rolling."""
        intent = state.intent
        if not self.holding_step or (intent is not None and intent.stage in ("rolling", "restarting")):
            return
        self.link.release(STEP_LEASE)
        self.holding_step = False
