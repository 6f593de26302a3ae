"""This server's link to the other servers, shared by its driver and follower parts: the picture of the cluster
(Nodes, the step, every report), its own report, its turn to restart (k3srotd-restart), and the log lines said
once per change. The API objects: leases.py; the decisions: core/rollout.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Optional, Sequence

from k3srotd.cluster.book import Book
from k3srotd.cluster.leases import Cluster, Held
from k3srotd.core.clock import Clock
from k3srotd.core.cluster import RESTART_LEASE, STEP_LEASE, TOKENS_LEASE, Lease, Report, Server, Step
from k3srotd.core.ports import Log
from k3srotd.core.rollout import join_wait, members, not_serving
from k3srotd.engine.restart import Progress
from k3srotd.errors import LockHeld
from k3srotd.node.kubeapi import APIError

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


class Link:
    def __init__(
        self,
        cluster: Cluster,
        book: Book,
        clock: Clock,
        log: Log,
        progress: Optional[Progress],
        background: bool,
        servers: list[Server],
    ) -> None:
        self.cluster = cluster
        self.book = book
        self.clock = clock
        self.log = log
        self.progress = progress
        self.background = background  # the daemon: never block on other servers
        self.servers = servers
        self.me = cluster.me
        self.check_id = ""  # the token check asked on k3srotd-tokens, as last read
        self.mine: Optional[Report] = None
        self.turn: Optional[Lease] = None  # k3srotd-restart, as last read
        self.ident: dict[str, Any] = {}  # host, version, join, addrs, join_addrs: in every report (book.identity)
        self.disagree: Optional[str] = None  # the counts of servers disagree (core.rollout.members), as last read

    def picture(self) -> tuple[list[Server], Optional[Step], dict[str, Report]]:
        """The servers (core.rollout.members: by kube-apiservers and Nodes), the published step, every report."""
        leases, apis = self.cluster.snapshot()
        nodes = self.cluster.servers()
        reports = Cluster.reports(leases)
        if self.mine is None:
            self.mine = reports.get(self.me)
        if self.mine is not None:
            reports[self.me] = self.mine
        servers, self.disagree = members(nodes, apis, reports)
        self.servers = servers or nodes
        self.check_id = leases[TOKENS_LEASE].ann("check-id") if TOKENS_LEASE in leases else ""
        self.turn = leases.get(RESTART_LEASE)
        return self.servers, Step.from_lease(leases.get(STEP_LEASE)), reports

    def restart_gate(self) -> Optional[str]:
        """Why this server may not restart now, or None: every other server must be up and serving (one down
        already and a restart here may take etcd below its quorum), and, on K3s without PR #11844, its join
        target must run the published step first."""
        if self.mine is not None:  # a report kept fresh while this server waits: the others judge it by that
            self.report(self.mine.live_kids, self.mine.live_sha)
        servers, step, reports = self.picture()
        down = not_serving(servers, reports, self.me, self.clock.now(), reported=False)
        if down:
            return "every other server must be up and serving first: " + ", ".join(down)
        return join_wait(step, reports, self.me)

    def _down_besides(self, holder: Optional[str]) -> bool:
        """Whether a server other than this one and the restart lease's holder (down for its own turn) is down.
        An API error counts as down: the wait it bounds is the one that may not go on forever."""
        try:
            servers, _, reports = self.picture()
        except APIError:
            return True
        down = not_serving([s for s in servers if s.name != holder], reports, self.me, self.clock.now(), False)
        return bool(down)

    def say(self, event: str, text: str, level: str = "info") -> None:
        """Log `text` once per change (the daemon looks every second; the log should not)."""
        if self.book.load().get("said") == text:
            return
        self.book.update(said=text)
        getattr(self.log, level)(event, msg=text, node=self.me)

    def report(self, live_kids: Sequence[str], sha: str, force: bool = False, **fields: str) -> None:
        cur = self.mine
        new = Report(
            node=self.me,
            live_kids=list(live_kids),
            live_sha=sha,
            step_id=fields.get("step_id", cur.step_id if cur else ""),
            result=fields.get("result", cur.result if cur else ""),
            error=fields.get("error", cur.error if cur else ""),
            at=None,
            valid_until=None,
            tokens_check=fields.get("tokens_check", cur.tokens_check if cur else ""),
            tokens=fields.get("tokens", cur.tokens if cur else ""),
            **self.ident,
        )
        # rewritten when it changes, else about every HEARTBEAT: each write is a datastore write on every server
        every = min(HEARTBEAT, self.cluster.duration / 2)
        fresh = cur is not None and cur.at is not None and (self.clock.now() - cur.at).total_seconds() < every
        if not force and fresh and cur is not None and cur.annotations() == new.annotations():
            return
        lease = self.cluster.report(new)
        self.mine = Report.from_lease(lease)

    def take_restart_lease(
        self, what: str, limit: Optional[float], gate_limit: Optional[float] = None
    ) -> Optional[str]:
        """None once this server holds k3srotd-restart; else why not, after waiting up to `limit` seconds, or
        after the restart gate (another server down) refused for `gate_limit` seconds in a row. Waiting for a
        server that restarts (the lease held) does not count toward `gate_limit`: that is a turn, not a fault."""
        start = self.clock.monotonic()
        gated: Optional[float] = None  # since when the gate refuses without a break
        refused = ""  # what the gate said last
        while True:
            try:
                self.cluster.acquire(RESTART_LEASE)
                gate = self.restart_gate()
                if gate is None:
                    return None
                self.release(RESTART_LEASE)
                why = refused = f"{what} waits: {gate}"
                gated = self.clock.monotonic() if gated is None else gated
            except Held as h:
                why = f"{what} waits for its turn: {h}"
                if gate_limit is not None and not self._down_besides(h.lease.holder):
                    gated = None  # a turn of another server, not a fault: the clock starts again
            except APIError as h:
                why = f"{what} waits for its turn: {h}"
            now = self.clock.monotonic()
            if limit is not None and now - start >= limit:
                return why
            if gate_limit is not None and gated is not None and now - gated >= gate_limit:
                return refused or why
            waited = now - start
            self.say("rolling.turn", why)
            if self.progress is not None:
                self.progress(why, waited)
            self.clock.sleep(TURN_POLL)

    def release(self, name: str) -> None:
        try:
            self.cluster.release(name)
        except APIError as e:  # it expires by itself
            self.log.warning("rolling.release", msg=f"could not release {name} ({e}); it expires by itself")

    def new_id(self) -> str:
        """Unique across the cluster and readable: when, by whom."""
        return f"{self.clock.now().strftime('%Y%m%dT%H%M%SZ')}-{self.me}-{uuid.uuid4().hex[:6]}"

    def tried(self) -> dict[str, str]:
        got: Any = self.book.load().get("tried") or {}
        return dict(got) if isinstance(got, dict) else {}

    def note_tried(self, step_id: str, result: str) -> None:
        tried = self.tried()
        tried[step_id] = result
        self.book.update(tried=dict(list(tried.items())[-20:]))
