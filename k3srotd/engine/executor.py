"""The thin executor: one step's side effects, in order, each checked; rollback; resume after a crash.

Order of every step (each line a side-effect boundary, named for the crash tests):
  backup      the live file copied to <state-dir>/backups (0600)
  intent      the state records the step, its target and its backup, durably, before anything else changes
  staged      <staging-dir>/server/tls/service.key written (0600, folders 0700)
  uploaded    `k3s certificate rotate-ca` saved it to the datastore (K3s's disk files are unchanged)
  restarted   restart-command ran
  verified    K3s is back: a new server process, the live file equal to the staged one, service.current.key
              holding the expected signer, and (verify-api) /readyz ok and the JWKS listing the expected kids
  committed   staging removed, the state records the new key set, the intent is cleared
A crash anywhere leaves an intent; the next start finishes the step if K3s already runs its key set, or else
puts the datastore back to the live set (no restart needed) and forgets the step.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core.clock import Clock
from k3srotd.core.model import Intent, LastStep, State, ts
from k3srotd.errors import RollbackFailed, SafetyRefusal, StepFailed
from k3srotd.node.files import Backups, Staging, sha256
from k3srotd.node.k3s import K3s, ServerProcess
from k3srotd.node.kubeapi import APIError
from k3srotd.node.store import Store

if TYPE_CHECKING:
    from k3srotd.node.runner import Result

POLL_SECONDS = 0.5
CRASH_ENV = "K3SROTD_TEST_CRASH_AT"  # test hook: SIGKILL ourselves at the named boundary

# The contract's step events; a direct rotation publishes and promotes the new key in one step, so it reports
# both (with step=rotate), and whoever watches promote.done learns of every new signer.
DONE_EVENTS = {"rotate": ("publish.done", "promote.done")}

Progress = Callable[[str, float], None]
Events = Callable[[str, str, Sequence[str], str], None]  # event, signer kid, kids, phase


def checkpoint(step: str, name: str) -> None:
    """A side-effect boundary. The crash tests name one in the environment (`promote:uploaded`, or just
    `uploaded` for the first step that reaches it) and are killed right here."""
    if os.environ.get(CRASH_ENV) in (name, f"{step}:{name}"):
        os.kill(os.getpid(), signal.SIGKILL)


class VerifyFailed(Exception):
    pass


def _unique(kids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [k for k in kids if not (k in seen or seen.add(k))]  # type: ignore[func-returns-value]


class Executor:
    def __init__(
        self,
        cfg: Config,
        k3s: K3s,
        store: Store,
        state: State,
        clock: Clock,
        log: Any,
        events: Optional[Events] = None,
        progress: Optional[Progress] = None,
        checks: Sequence[Any] = (),
        rolling: Optional[Any] = None,
    ) -> None:
        self.rolling = rolling  # multi-server: rolling.Rolling (hooks marked "multi-server"); None on one server
        self.checks = list(checks)  # gates.StepCheck: before_restart / after_restart around each restart
        self.cfg = cfg
        self.k3s = k3s
        self.store = store
        self.state = state
        self.clock = clock
        self.log = log
        self.events = events
        self.progress = progress
        self.staging = Staging(cfg.staging_dir)
        self.backups = Backups(cfg.backup_dir, cfg.backup_keep)
        self.resumed: Optional[tuple[str, str]] = None  # (step, finished|undone|rolled-back|forgotten)

    # --- helpers
    def _intent(self) -> Intent:
        if self.state.intent is None:
            raise RuntimeError("no step under way")  # a bug, not an operator error
        return self.state.intent

    def _emit(self, event: str, kf: keys.KeyFile, phase: str) -> None:
        if self.events is not None:
            self.events(event, kf.signer.kid, kf.kids, phase)

    def _fail(self, step: str, reason: str, kf: Optional[keys.KeyFile] = None, hooks: bool = True) -> None:
        """Record and log a failed step (saved, so that the metrics count it); then its hooks, unless the caller
        runs them later (fail_and_roll_back: after the rollback)."""
        now = self.clock.now()
        self.state.last_failure = {"step": step, "at": ts(now), "reason": reason}
        self.state.failures[step] = self.state.failures.get(step, 0) + 1
        self.store.save(self.state)
        kids = kf.kids if kf else []
        signer = kf.signer.kid if kf else ""
        self.log.error("step.failed", msg=f"{step} failed: {reason}", step=step, signer_kid=signer, kids=kids)
        if hooks:
            self._failed_hooks(kf)

    def _failed_hooks(self, kf: Optional[keys.KeyFile]) -> None:
        if kf is not None and self.events is not None:
            self.events("step.failed", kf.signer.kid, kf.kids, planner.phase(self.state, kf))

    def fail_and_roll_back(self, step: str, reason: str, live: keys.KeyFile, rollback_reason: str) -> keys.KeyFile:
        """A step that reached K3s failed: log it, put the backed-up key set back, and only then run the
        step.failed hooks (a slow hook must not keep K3s on a key set that failed its checks)."""
        self._fail(step, reason, live, hooks=False)
        try:
            return self.rollback_intent(rollback_reason)
        finally:
            self._failed_hooks(live)

    def _read_live(self) -> tuple[bytes, keys.KeyFile]:
        data = self.k3s.live_bytes()
        return data, keys.parse(data, str(self.k3s.live_path))

    # --- one step
    def run(self, step: str, live_bytes: bytes, live: keys.KeyFile, staged: bytes) -> keys.KeyFile:
        """Take the live file from `live` to `staged`; return the new live file. StepFailed on failure, with
        the live keys as they were (or restored)."""
        now = self.clock.now()
        target = keys.parse(staged, str(self.staging.key))
        self.staging.prepare()
        proc = self.k3s.server_process()
        if proc is None:
            raise SafetyRefusal(
                f"{self.cfg.k3s_bin}: no `k3s server` process is running for {self.cfg.k3s_data_dir}; "
                "rotate-ca needs a running server. Start K3s and try again"
            )
        if self.rolling is not None:  # multi-server: take the step lease; the cluster must be in step
            self.rolling.begin(step)
        self.log.info(
            "step.start",
            msg=f"{step}: {live.kids} -> {target.kids}",
            step=step,
            signer_kid=live.signer.kid,
            kids=live.kids,
            target_kids=target.kids,
        )
        backup = self.backups.save(live_bytes, step, now)
        checkpoint(step, "backup")
        self.state.intent = Intent(
            step=step,
            started_at=now,
            before_kids=live.kids,
            target_kids=target.kids,
            backup=str(backup),
            staged_sha256=sha256(staged),
            stage="staged",
            snapshot=self.state.snapshot(),
            server_pid=proc.pid,
            server_started=proc.started,
            backup_sha256=sha256(live_bytes),
        )
        self.store.save(self.state)
        checkpoint(step, "intent")
        try:
            self.staging.write(staged)
        except BaseException:
            # nothing reached K3s: forget the step, leave no half-written key behind
            self.staging.remove()
            self.state.intent = None
            self.store.save(self.state)
            raise
        checkpoint(step, "staged")
        res = self._rotate_ca(step)
        if not res.ok:
            # A failed rotate-ca may still have saved (a timeout, a reply lost after the save): put the live set
            # back in the datastore, so that no later restart applies a key set nobody verified.
            undo = self._rotate_ca(step, live_bytes)
            if undo.ok:
                self.staging.remove()
                self.state.intent = None
                reason = f"`k3s certificate rotate-ca` failed: {res.tail()}; the datastore holds the live key set"
            else:
                self.state.intent.stage = "upload-failed"  # the next run uploads the live set again (resume)
                reason = (
                    f"`k3s certificate rotate-ca` failed: {res.tail()}, and uploading the live key set back "
                    f"failed too ({undo.tail()}); K3s's live keys are unchanged, the next k3srotd run puts the "
                    "datastore back before anything else"
                )
            self._fail(step, reason, live)
            raise StepFailed(f"{step} failed: {reason}")
        checkpoint(step, "uploaded")
        self.state.intent.stage = "restarting"
        self.store.save(self.state)
        try:
            self._restart_and_verify(step, target, staged, proc)
        except VerifyFailed as e:
            self.fail_and_roll_back(step, str(e), live, f"{step} failed verification: {e}")
            raise StepFailed(f"{step} failed: {e}; the previous key set was restored") from None
        return self.commit(step, target)

    def _rotate_ca(self, step: str, content: Optional[bytes] = None) -> Result:
        """`k3s certificate rotate-ca` on the staged file (first written with `content` when given). Its output
        (K3s warns there about each file it skips) is logged on failure, else at debug level only."""
        if content is not None:
            self.staging.write(content)
        res = self.k3s.rotate_ca()
        say = self.log.info if res.ok else self.log.warning
        msg = f"rotate-ca exited {res.returncode}" + ("" if content is None else " (the live key set put back)")
        say("rotate-ca", msg=msg, argv=list(res.argv), step=step, **({} if res.ok else {"output": res.tail(40)}))
        if res.ok:
            self.log.debug("rotate-ca.output", msg="rotate-ca output", output=res.tail(40), step=step)
        return res

    def _restart_and_verify(self, step: str, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]) -> None:
        if self.rolling is not None:  # multi-server: publish the step, restart here in turn, await every server
            self.rolling.restart_and_verify(self, step, target, staged, old)
            return
        self.restart_here(step, target, staged, old)

    def restart_here(self, step: str, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]) -> None:
        for check in self.checks:
            check.before_restart(step, target)
        res = self.k3s.restart()
        self.log.info(
            "restart", msg=f"restart-command exited {res.returncode}", argv=list(res.argv), output=res.tail(5)
        )
        if not res.ok:
            self.log.warning("restart", msg=f"restart-command failed ({res.tail()}); checking K3s anyway")
        checkpoint(step, "restarted")
        self.wait_for(target, staged, old)
        for check in self.checks:
            check.after_restart(step, target)
        checkpoint(step, "verified")

    def wait_for(self, target: keys.KeyFile, staged: bytes, old: Optional[ServerProcess]) -> None:
        """Until restart-timeout: K3s back, on a new process, serving exactly `staged`. VerifyFailed if not."""
        self.wait_for_kids(target.kids, target.signer.kid, sha256(staged), old)

    def wait_for_kids(self, kids: Sequence[str], signer: str, want: str, old: Optional[ServerProcess]) -> None:
        """wait_for by the staged file's kids, signer kid and sha256 (multi-server: what another server published)."""
        timeout = self.cfg.restart_timeout.total_seconds()
        start = self.clock.monotonic()
        api = self.k3s.api() if self.cfg.verify_api else None
        expected = _unique(kids)
        last = "no K3s server process yet"
        while True:
            proc = self.k3s.server_process()
            if proc is None:
                last = "no K3s server process yet"
            elif old is not None and proc == old:
                last = f"K3s has not restarted yet (still pid {proc.pid})"
            else:
                ready = api.readyz() if api is not None else True
                try:
                    live = self.k3s.live_bytes()
                except SafetyRefusal:
                    live = b""
                current = self.k3s.current_kid()
                if sha256(live) != want:
                    last = "the live service.key differs from the staged key set"
                    if ready and api is not None:
                        raise VerifyFailed(
                            f"K3s restarted (pid {proc.pid}) but serves another key set than the one staged "
                            "(K3s did not apply the rotate-ca data)"
                        )
                elif current != signer:
                    last = f"service.current.key holds {current}, expected {signer}"
                elif api is None:
                    return
                elif not ready:
                    last = "/readyz is not ok yet"
                else:
                    try:
                        served = _unique(api.jwks_kids())
                    except APIError as e:
                        served, last = [], str(e)
                    if served == expected:
                        return
                    if served:
                        raise VerifyFailed(f"the JWKS lists {served}, expected {expected}")
            elapsed = self.clock.monotonic() - start
            if elapsed >= timeout:
                raise VerifyFailed(f"K3s not back as expected within {self.cfg.restart_timeout}: {last}")
            if self.progress is not None:
                self.progress(f"waiting for K3s: {last}", elapsed)
            self.clock.sleep(POLL_SECONDS)

    def commit(self, step: str, target: keys.KeyFile) -> keys.KeyFile:
        intent = self._intent()
        now = self.clock.now()
        self.staging.remove()
        if step == "rollback":
            last = self.state.last_step
            snapshot = last.snapshot if last is not None else intent.snapshot
            self.state.restore(snapshot)
        else:
            new = planner.committed(self.state, step, intent.before_kids, target.kids, now)
            self.state.keys, self.state.pending = new.keys, new.pending
            self.state.published_at, self.state.last_rotation = new.published_at, new.last_rotation
        self.state.last_step = LastStep(
            step=step,
            completed_at=now,
            before_kids=intent.before_kids,
            target_kids=target.kids,
            backup=intent.backup,
            snapshot=intent.snapshot,
            backup_sha256=intent.backup_sha256,
        )
        self.state.intent = None
        self.state.last_success[step] = ts(now) or ""
        self.store.save(self.state)
        checkpoint(step, "committed")
        self.backups.trim(protect={intent.backup})
        self.backups.drop_gone_keys(target.kids, protect={intent.backup})  # a pruned key leaves the backups too
        if self.rolling is not None:  # multi-server: publish the outcome and this state; release the step lease
            self.rolling.finished(self.state, "committed")
        phase = planner.phase(self.state, target)
        for event in DONE_EVENTS.get(step, (f"{step}.done",)):
            self.log.info(
                event,
                msg=f"{step} done: {target.signer.kid} signs; keys {', '.join(target.kids)}",
                step=step,
                signer_kid=target.signer.kid,
                kids=target.kids,
                phase=phase,
            )
            self._emit(event, target, phase)
        return target

    # --- rollback
    def restore_bytes(self, backup: bytes) -> bytes:
        """The backup, plus the signer now on disk when the backup lacks it: K3s accepts no key list without
        its current signer, and tokens it signed must keep verifying."""
        before = keys.parse(backup, "backup")
        try:
            _, on_disk = self._read_live()
        except SafetyRefusal:
            return backup
        signer = on_disk.signer
        if signer.kid in before:
            return backup
        from k3srotd.node.trust import unknown_signer

        why = unknown_signer(signer.kid, self.state)
        if why is not None:
            raise SafetyRefusal(why)
        self.log.warning(
            "rollback.keep",
            msg=f"keeping {signer.kid}, the signer K3s has now, as a verify-only key",
            signer_kid=signer.kid,
        )
        return keys.compose(before, [*before.kids, signer.kid], [signer])

    def rollback_intent(self, reason: str) -> keys.KeyFile:
        """Put back the key set of the intent's backup; RollbackFailed (crit, manual steps) if that fails."""
        intent = self._intent()
        intent.stage = "rolling-back"
        self.store.save(self.state)
        try:
            backup = self.backups.read(intent.backup, intent.backup_sha256)
            self._ensure_running()
            restore = self.restore_bytes(backup)
            target = keys.parse(restore, intent.backup)
            proc = self.k3s.server_process()
            self.staging.write(restore)
            checkpoint("rollback", "staged")
            res = self._rotate_ca("rollback")
            if not res.ok:
                raise VerifyFailed(f"rotate-ca refused the backup: {res.tail()}")
            self._restart_and_verify("rollback", target, restore, proc)
        except (VerifyFailed, OSError, SafetyRefusal, keys.KeyFileError) as e:
            intent.stage = "rollback-failed"
            self.store.save(self.state)
            self.log.critical(
                "rollback.failed",
                msg=(
                    f"ROLLBACK FAILED after: {reason}. Rollback error: {e}. By hand: copy {intent.backup} to "
                    f"{self.staging.key} (mode 0600), run `{' '.join(self.k3s.rotate_ca_argv())}`, then restart "
                    f"K3s on every server ({' '.join(self.cfg.restart_command)}); check `k3srotd status`, then "
                    "run `k3srotd rollback --yes` to record it. Backups are kept in "
                    f"{self.backups.dir}"
                ),
                backup=intent.backup,
            )
            raise RollbackFailed(
                f"{intent.step} failed ({reason}) and the rollback failed too ({e}); see the log for the "
                f"manual steps; the key set before the step is in {intent.backup}"
            ) from None
        self.staging.remove()
        self.state.restore(intent.snapshot)
        self.state.intent = None
        self.store.save(self.state)
        if self.rolling is not None:  # multi-server: publish the outcome; the others restart onto it in turn
            self.rolling.finished(self.state, "rolled-back")
        self.log.info(
            "rollback.done",
            msg=f"rolled back to {', '.join(target.kids)}",
            step="rollback",
            signer_kid=target.signer.kid,
            kids=target.kids,
        )
        self._emit("rollback.done", target, planner.phase(self.state, target))
        return target

    def _ensure_running(self) -> ServerProcess:
        """rotate-ca needs a running, ready server: restart K3s (on what the datastore holds now) if it is not."""
        proc = self.k3s.server_process()
        if proc is not None and (not self.cfg.verify_api or self.k3s.api().readyz()):
            return proc
        res = self.k3s.restart()
        self.log.info("restart", msg=f"restart-command exited {res.returncode} (K3s was not running)")
        return self._wait_running()

    def _wait_running(self) -> ServerProcess:
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

    # --- after a crash
    def resume(self) -> Optional[str]:
        """Finish or undo the step an earlier k3srotd left. Returns what was done, or None."""
        intent = self.state.intent
        if intent is None:
            return None
        if intent.stage == "rollback-failed":
            raise RollbackFailed(
                f"a rollback of {intent.step} failed earlier; restore {intent.backup} by hand (see the log), "
                "then run `k3srotd rollback --yes`"
            )
        if self.rolling is not None and intent.stage in ("restarting", "rolling"):  # multi-server: a published step
            done: Optional[str] = self.rolling.resume(self, intent)
            if done is not None:
                return done
        self.log.warning(
            "resume", msg=f"an interrupted {intent.step} (stage {intent.stage}) is resumed", step=intent.step
        )
        if intent.stage == "rolling-back":
            self.rollback_intent(f"interrupted rollback of {intent.step}")
            self.resumed = (intent.step, "rolled-back")
            return f"finished the interrupted rollback of {intent.step}"
        try:
            self._wait_running()
        except VerifyFailed:
            reason = (
                f"an interrupted {intent.step} is recorded in {self.store.path}, but K3s is not running; "
                "start K3s, then run k3srotd again to finish or undo it"
            )
            try:
                _, on_disk = self._read_live()
            except (SafetyRefusal, keys.KeyFileError):
                on_disk = None
            self._fail(intent.step, reason, on_disk)
            raise StepFailed(reason) from None
        live_bytes, live = self._read_live()
        if sha256(live_bytes) == intent.staged_sha256:
            try:
                self.wait_for(live, live_bytes, None)
            except VerifyFailed as e:
                self.fail_and_roll_back(
                    intent.step, str(e), live, f"interrupted {intent.step} failed verification: {e}"
                )
                self.resumed = (intent.step, "rolled-back")
                return f"rolled back the interrupted {intent.step}"
            self.commit(intent.step, live)
            self.resumed = (intent.step, "finished")
            return f"finished the interrupted {intent.step}"
        if live.kids == intent.before_kids:
            # K3s still runs the old set; rotate-ca may have saved the new one. Put the datastore back to
            # the live set so no later restart applies an unverified step.
            res = self._rotate_ca(intent.step, live_bytes)
            if not res.ok:
                raise StepFailed(
                    f"could not undo the interrupted {intent.step}: rotate-ca failed ({res.tail()}); run k3srotd again"
                )
            return self._forget(intent, "undone", f"undid the interrupted {intent.step}; K3s keeps {live.kids}", live)
        return self._forget(
            intent, "forgotten", f"the live key set changed outside k3srotd during {intent.step}; adopted it", live
        )

    def _forget(self, intent: Intent, outcome: str, message: str, live: keys.KeyFile) -> str:
        """The step is over without a commit: no staged key left, no intent, and say so."""
        self.staging.remove()
        self.state.intent = None
        self.store.save(self.state)
        self.resumed = (intent.step, outcome)
        self.log.warning("resume", msg=message, signer_kid=live.signer.kid, kids=live.kids)
        return message
