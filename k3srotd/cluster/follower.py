"""Multi-server rotation, a follower's part: what every server's k3srotd owes a step another server published.

A follower (the daemon at every look; a foreground command before it starts a step) sees that its live file is
not the published one, takes k3srotd-restart, backs up its live file, and restarts and verifies its own K3s with
the engine's own Restarter (the same checks, restart-command and verification as the driver's restart), releases
the lease and reports. A server found on the published set already (it restarted meanwhile, or came back after
being down) is verified and reports without a restart. When the step is finished it adopts the driver's state
(pending key, retirement times), so that every server plans the same next step; it does so only while no step
of its own is under way (no intent), so the executor stays the only owner of a step's record. The driver's
part: driver.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from k3srotd.cluster.link import API_RETRY, LOOK_SECONDS, TURN_WAIT, Link, Waiting
from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core.cluster import STEP_LEASE, Report, Server, Step
from k3srotd.core.model import State, ts
from k3srotd.core.rollout import held_by_window, my_turn, orphaned, out_of_step
from k3srotd.core.verify import VerifyFailed, Want
from k3srotd.engine.restart import Restarter
from k3srotd.node.files import Backups, sha256
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import Store


class Follower:
    def __init__(self, cfg: Config, k3s: K3s, link: Link, restarter: Restarter, store: Store) -> None:
        self.cfg = cfg
        self.k3s = k3s
        self.link = link
        self.restarter = restarter
        self.store = store
        self.backups = Backups(cfg.backup_dir, cfg.backup_keep)
        self.me = link.me
        self.seen_step: Optional[str] = None

    def _live(self) -> tuple[bytes, keys.KeyFile]:
        data = self.k3s.live_bytes()
        return data, keys.parse(data, str(self.k3s.live_path))

    # --- one look
    def look(self, state: State) -> tuple[Optional[str], float]:
        """Do what this server owes the published step (restart in turn, or verify), adopt a finished step, report.
        (None, 0) when a new step may start here; else (what is awaited, seconds until the next look). Waiting when
        the API cannot be reached."""
        try:
            return self._look(state)
        except APIError as e:
            raise Waiting(f"cannot reach the API ({e}); nothing is done here without it", API_RETRY) from None

    def _look(self, state: State) -> tuple[Optional[str], float]:
        link = self.link
        for _ in range(3):
            data, live = self._live()
            sha = sha256(data)
            servers, step, reports = link.picture()
            self.seen_step = step.id if step else None
            tried = link.tried()
            turn = my_turn(step, sha, link.mine, tried)
            if step is not None and turn == "restart":
                waiting = self._follow(step, data, live)
                if waiting is not None:
                    link.report(live.kids, sha)
                    return waiting, LOOK_SECONDS
                continue  # look again from the new live file
            failed = tried.get(step.id, "") if step is not None and sha != step.target_sha else ""
            mine = link.mine
            if step is not None and failed.startswith("failed") and (mine is None or mine.step_id != step.id):
                # it failed while its own API was down (its K3s did not come back at first): report it now
                link.report(live.kids, sha, force=True, step_id=step.id, result="failed", error=failed[8:500])
            if step is not None and turn == "verify":
                waiting = self._verify_here(step, live, sha)
                if waiting is not None:
                    return waiting, LOOK_SECONDS
            else:
                link.report(live.kids, sha)
            self._answer_token_check(live, sha)
            if step is not None and sha == step.target_sha and self._take_over(state, step, servers, reports):
                continue  # look again: the step is committed now, and adopted
            if step is not None and not step.open and sha == step.target_sha:
                self._adopt(state, step)
            reason = out_of_step(servers, step, reports, self.me, sha)
            return reason, (LOOK_SECONDS if reason else 0.0)
        return "this server's key set keeps changing", LOOK_SECONDS

    def _answer_token_check(self, live: keys.KeyFile, sha: str) -> None:
        """A server asked before a prune whether old tokens are still presented: answer for this kube-apiserver
        (its /metrics counts only what reached it), once per check."""
        from k3srotd.identity import gates

        cid, mine = self.link.check_id, self.link.mine
        if not cid or (mine is not None and mine.tokens_check == cid):
            return
        answer = gates.token_counters_verdict(self.cfg, self.k3s, self.link.clock.now())
        self.link.report(live.kids, sha, force=True, tokens_check=cid, tokens=answer or "ok")

    def _verify_here(self, step: Step, live: keys.KeyFile, sha: str) -> Optional[str]:
        """This server already runs the published set (it restarted since, e.g. after being down): check it as
        after a restart, and report."""
        if self.restarter.running() is None:
            return f"K3s is not running on {self.me}; it is checked against {step.step} ({step.id}) once it runs"
        try:
            self.restarter.wait_for(_want(step), None)
        except VerifyFailed as e:
            self._failed(step, live, sha, str(e))
            return None
        self.link.log.info(
            "rolling.on-step",
            msg=f"{self.me} runs {step.step} ({step.id}) already: {', '.join(step.target_kids)}",
            node=self.me,
            kids=step.target_kids,
        )
        self.link.report(live.kids, sha, force=True, step_id=step.id, result="ok", error="")
        self._following(step)
        return None

    def _following(self, step: Step) -> None:
        """Until it adopts the driver's state, status shows this server's state as the step will commit it."""
        if step.driver != self.me and step.open:
            at = ts(step.published_at) if step.published_at else None
            following = {"id": step.id, "step": step.step, "before": step.before_kids, "target": step.target_kids}
            self.link.book.update(following={**following, "at": at})

    def _failed(self, step: Step, live: keys.KeyFile, sha: str, error: str) -> None:
        self.link.note_tried(step.id, f"failed: {error}")
        self.link.log.error(
            "step.failed",
            msg=f"{step.step} failed on {self.me}: {error}; {step.driver} rolls the cluster back",
            step=step.step,
            signer_kid=live.signer.kid,
            kids=live.kids,
            node=self.me,
        )
        self.link.report(live.kids, sha, force=True, step_id=step.id, result="failed", error=error[:500])

    def _follow(self, step: Step, data: bytes, live: keys.KeyFile) -> Optional[str]:
        """Restart this server's K3s onto the published set, in turn. None when done (or failed and reported)."""
        link = self.link
        proc = self.restarter.running()
        if proc is None:
            return f"K3s is not running on {self.me}; it restarts onto {step.step} ({step.id}) once it runs"
        what = f"{self.me}'s restart onto {step.step} ({step.id})"
        held = held_by_window(step, self.cfg.maintenance_window, link.clock.now())
        if held is not None:
            link.say("rolling.window", f"{what} waits: {held}")
            return f"{what} waits: {held}"
        waiting = link.take_restart_lease(what, TURN_WAIT)
        if waiting is not None:
            return waiting
        try:
            link.log.info(
                "rolling.restart",
                msg=f"{self.me} restarts K3s onto {step.step} ({step.id}, published by {step.driver}): "
                f"{', '.join(step.target_kids)}",
                node=self.me,
                kids=step.target_kids,
            )
            self.backups.save(data, f"{step.step}-follow", link.clock.now())
            want = _want(step)
            try:
                self.restarter.restart_and_verify(step.step, want.outline(), want, proc, checkpoints=False)
            except VerifyFailed as e:
                self._failed(step, live, sha256(data), str(e))
                return None
            new_data, new_live = self._live()
            link.note_tried(step.id, "ok")
            link.report(new_live.kids, sha256(new_data), force=True, step_id=step.id, result="ok", error="")
            self._following(step)
            link.log.info(
                "rolling.restarted",
                msg=f"{self.me} runs {step.step} ({step.id}): {', '.join(step.target_kids)}",
                node=self.me,
                kids=step.target_kids,
            )
        finally:
            link.release("k3srotd-restart")
        return None

    def _take_over(self, state: State, step: Step, servers: list[Server], reports: dict[str, Report]) -> bool:
        """Commit an orphaned step (core.rollout.orphaned) for the cluster: this server's state as the step commits
        it, published for the others to adopt. True when it did."""
        from k3srotd.cluster.leases import Held

        link = self.link
        now = link.clock.now()
        if link.mine is not None:
            reports = {**reports, self.me: link.mine}
        if not orphaned(step, None, servers, reports, self.me, now):
            return False  # cheap first: no extra API call while the step is not done everywhere
        lease = link.cluster.lease(STEP_LEASE)
        published = Step.from_lease(lease)
        # judged on the step the lease carries now, not the one read before: a driver that just committed and
        # released its lease is not gone (and taking the lease then would make its next step wait)
        if published is None or published.id != step.id:
            return False
        if not orphaned(published, lease, servers, reports, self.me, now):
            return False
        try:
            taken = link.cluster.acquire(STEP_LEASE)  # resourceVersion: one server wins
        except Held:
            return False
        cur = Step.from_lease(taken)
        if cur is None or cur.id != step.id or not cur.open:
            link.cluster.release(STEP_LEASE)
            return False
        committed = planner.committed(state, step.step, step.before_kids, step.target_kids, now)
        done = dataclasses.replace(cur, outcome="committed", state=json.dumps(committed.snapshot()))
        link.cluster.release(STEP_LEASE, done.annotations())
        link.log.warning(
            "rolling.taken-over",
            msg=f"{step.driver} published {step.step} ({step.id}) and stopped renewing k3srotd-step; every server "
            f"runs it, so {self.me} committed it for the cluster",
            node=self.me,
            step=step.step,
            kids=step.target_kids,
        )
        return True

    def _adopt(self, state: State, step: Step) -> None:
        book = self.link.book
        if book.load().get("adopted") == step.id or not step.state or state.intent is not None:
            return
        try:
            snap = json.loads(step.state)
            if not isinstance(snap, dict):
                raise ValueError("not an object")
            state.restore(snap)
        except (ValueError, KeyError, TypeError) as e:
            self.link.log.warning(
                "rolling.adopt", msg=f"the state {step.driver} published is unusable ({e}); kept ours"
            )
            return
        self.store.save(state)
        book.update(adopted=step.id, following=None)
        self.link.log.info(
            "rolling.adopted",
            msg=f"{step.step} ({step.id}) is {step.outcome}; this server follows {step.driver}'s state",
            node=self.me,
        )

    def wait_in_step(self, state: State) -> None:
        """Foreground: do this server's part and wait until a new step may start here."""
        clock = self.link.clock
        start = clock.monotonic()
        while True:
            try:
                reason, delay = self.look(state)
            except Waiting as e:
                reason, delay = str(e), e.retry
            if reason is None:
                return
            self.link.say("rolling.waiting", f"waiting: {reason}")
            if self.link.progress is not None:
                self.link.progress(f"waiting: {reason}", clock.monotonic() - start)
            clock.sleep(delay)


def _want(step: Step) -> Want:
    return Want(tuple(step.target_kids), step.signer_kid, step.target_sha)
