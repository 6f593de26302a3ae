"""The thin executor: one step's side effects, in order, each checked; rollback (resume after a crash: resume.py).

Order of every step (each line a side-effect boundary, named for the crash tests):
  backup      the live file copied to <state-dir>/backups (0600)
  intent      the state records the step, its target and its backup, durably, before anything else changes
  staged      <staging-dir>/server/tls/service.key written (0600, folders 0700)
  uploaded    `k3s certificate rotate-ca` saved it to the datastore (K3s's disk files are unchanged)
  restarted   restart-command ran
  verified    K3s is back: a new server process, the live file equal to the staged one, service.current.key
              holding the expected signer, and (verify-api) /readyz ok and the JWKS listing the expected kids
  committed   staging removed, the state records the new key set, the intent is cleared
On a cluster, `announce`, `my turn` and `wait for the others` go through the coordinator (engine/coordinator.py);
on one server they do nothing. After the upload any error rolls the step back, so that exit 1 keeps its meaning.
A crash anywhere leaves an intent; the next start finishes the step if K3s already runs its key set, or else
puts the datastore back to the live set (no restart needed) and forgets the step (core/recovery.py decides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core.clock import Clock
from k3srotd.core.model import Intent, LastStep, Stage, State, StepName, ts
from k3srotd.core.ports import Log
from k3srotd.core.recovery import Resumed
from k3srotd.core.verify import VerifyFailed, Want
from k3srotd.engine.coordinator import Announcement, Coordinator
from k3srotd.engine.restart import Progress, Restarter, failure_text, want_of
from k3srotd.errors import LockHeld, RollbackFailed, SafetyRefusal, StepFailed
from k3srotd.node.files import Backups, Staging, sha256
from k3srotd.node.k3s import K3s, ServerProcess
from k3srotd.node.store import Store

if TYPE_CHECKING:
    from k3srotd.node.runner import Result

__all__ = ["Events", "Executor", "Progress", "VerifyFailed"]

# The step events the README documents; a direct rotation publishes and promotes the new key in one step, so
# it reports both (with step=rotate), and whoever watches promote.done learns of every new signer.
DONE_EVENTS = {"rotate": ("publish.done", "promote.done")}

Events = Callable[[str, str, Sequence[str], str], None]  # event, signer kid, kids, phase


class Executor:
    """The one owner of the step's durable record (the intent): nothing else writes it."""

    def __init__(
        self,
        cfg: Config,
        k3s: K3s,
        store: Store,
        state: State,
        clock: Clock,
        log: Log,
        restarter: Restarter,
        coordinator: Coordinator,
        events: Optional[Events] = None,
    ) -> None:
        self.cfg = cfg
        self.k3s = k3s
        self.store = store
        self.state = state
        self.clock = clock
        self.log = log
        self.restarter = restarter
        self.coordinator = coordinator
        self.events = events
        self.checkpoint = restarter.checkpoint
        self.staging = Staging(cfg.staging_dir)
        self.backups = Backups(cfg.backup_dir, cfg.backup_keep)
        self.resumed: Optional[tuple[str, Resumed]] = None

    # --- one step
    def run(self, step: StepName, live_bytes: bytes, live: keys.KeyFile, staged: bytes) -> keys.KeyFile:
        """Take the live file from `live` to `staged`; return the new live file. StepFailed on failure, with
        the live keys as they were (or restored)."""
        target = keys.parse(staged, str(self.staging.key))
        want = want_of(target, staged)
        self.staging.prepare()
        proc = self._server_running()
        self.coordinator.begin(step)
        self._log_start(step, live, target)
        backup = self.backups.save(live_bytes, step, self.clock.now())
        self.checkpoint(step, "backup")
        self._record_intent(step, live, target, str(backup), want.sha, proc, sha256(live_bytes))
        self.checkpoint(step, "intent")
        self._stage(staged)
        self.checkpoint(step, "staged")
        self._upload(step, live_bytes, live)
        self.checkpoint(step, "uploaded")
        self._set_stage("restarting")
        try:
            self.coordinator.announce(Announcement(step, live.kids, target.kids, target.signer.kid, want.sha))
            self._restart_in_turn(step, target, want, proc)
            if len(self.coordinator.servers) > 1:  # the others restart in turn: status shows it as committed
                self._set_stage("rolling")
            self.coordinator.await_others()
        except LockHeld:
            raise  # waiting for the other servers (the daemon looks again): the step goes on
        except Exception as e:  # noqa: BLE001 - after the upload any error rolls back (exit 1: keys as before)
            why = failure_text(e)
            self.fail_and_roll_back(step, why, live, f"{step} failed verification: {why}")
            raise StepFailed(f"{step} failed: {why}; the previous key set was restored") from None
        return self.commit(step, target)

    def _server_running(self) -> ServerProcess:
        proc = self.k3s.server_process()
        if proc is None:
            raise SafetyRefusal(
                f"{self.cfg.k3s_bin}: no `k3s server` process is running for {self.cfg.k3s_data_dir}; "
                "rotate-ca needs a running server. Start K3s and try again"
            )
        return proc

    def _log_start(self, step: str, live: keys.KeyFile, target: keys.KeyFile) -> None:
        self.log.info(
            "step.start",
            msg=f"{step}: {live.kids} -> {target.kids}",
            step=step,
            signer_kid=live.signer.kid,
            kids=live.kids,
            target_kids=target.kids,
        )

    def _record_intent(
        self,
        step: StepName,
        live: keys.KeyFile,
        target: keys.KeyFile,
        backup: str,
        sha: str,
        proc: ServerProcess,
        backup_sha: str,
    ) -> None:
        self.state.intent = Intent(
            step=step,
            started_at=self.clock.now(),
            before_kids=live.kids,
            target_kids=target.kids,
            backup=backup,
            staged_sha256=sha,
            stage="staged",
            snapshot=self.state.snapshot(),
            server_pid=proc.pid,
            server_started=proc.started,
            backup_sha256=backup_sha,
        )
        self.store.save(self.state)

    def _set_stage(self, stage: Stage) -> None:
        self._intent().stage = stage
        self.store.save(self.state)

    def _stage(self, staged: bytes) -> None:
        try:
            self.staging.write(staged)
        except BaseException:
            # nothing reached K3s: forget the step, leave no half-written key behind
            self.staging.remove()
            self.state.intent = None
            self.store.save(self.state)
            raise

    def _upload(self, step: str, live_bytes: bytes, live: keys.KeyFile) -> None:
        res = self._rotate_ca(step)
        if res.ok:
            return
        # A failed rotate-ca may still have saved (a timeout, a reply lost after the save): put the live set
        # back in the datastore, so that no later restart applies a key set nobody verified.
        undo = self._rotate_ca(step, live_bytes)
        if undo.ok:
            self.staging.remove()
            self.state.intent = None
            reason = f"`k3s certificate rotate-ca` failed: {res.tail()}; the datastore holds the live key set"
        else:
            self._intent().stage = "upload-failed"  # the next run uploads the live set again (resume)
            reason = (
                f"`k3s certificate rotate-ca` failed: {res.tail()}, and uploading the live key set back "
                f"failed too ({undo.tail()}); K3s's live keys are unchanged, the next k3srotd run puts the "
                "datastore back before anything else"
            )
        self._fail(step, reason, live)
        raise StepFailed(f"{step} failed: {reason}")

    def _restart_in_turn(self, step: str, target: keys.KeyFile, want: Want, old: Optional[ServerProcess]) -> None:
        """My turn to restart, restart here, verify, and report it to the others (nothing to do on one server)."""
        with self.coordinator.my_turn(step):
            try:
                self.restarter.restart_and_verify(step, target, want, old)
            except Exception as e:
                self.coordinator.restarted(failure_text(e))
                raise
        self.coordinator.restarted(None)
        self.checkpoint(step, "reported")

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

    def commit(self, step: str, target: keys.KeyFile) -> keys.KeyFile:
        intent = self._intent()
        now = self.clock.now()
        self.staging.remove()
        if step == "rollback":
            last = self.state.last_step
            self.state.restore(last.snapshot if last is not None else intent.snapshot)
        else:
            new = planner.committed(self.state, step, intent.before_kids, target.kids, now)
            self.state.keys, self.state.pending = new.keys, new.pending
            self.state.published_at, self.state.last_rotation = new.published_at, new.last_rotation
        if step == "rehearse":  # changes no key: `rollback` still undoes the last real step
            self.state.rehearsed = {"at": ts(now) or "", "k3s_version": self.k3s.version() or "unknown"}
        else:
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
        self.checkpoint(step, "committed")
        self.backups.trim(protect={intent.backup})
        self.backups.drop_gone_keys(target.kids, protect={intent.backup})  # a pruned key leaves the backups too
        self.coordinator.finished(self.state, "committed")
        self._done(step, target)
        return target

    def _done(self, step: str, target: keys.KeyFile) -> None:
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
            if step != "rehearse":  # the hooks' step events are the contract's; a rehearsal is logged only
                self._emit(event, target, phase)

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
        self._set_stage("rolling-back")
        try:
            target = self._roll_back(intent)
        except LockHeld:
            raise
        except Exception as e:  # noqa: BLE001 - after the upload any error rolls back (exit 1: keys as before)
            self._set_stage("rollback-failed")
            self._rollback_failed(intent, reason, failure_text(e))
        self.staging.remove()
        self.state.restore(intent.snapshot)
        self.state.intent = None
        self.store.save(self.state)
        self.coordinator.finished(self.state, "rolled-back")
        self.log.info(
            "rollback.done",
            msg=f"rolled back to {', '.join(target.kids)}",
            step="rollback",
            signer_kid=target.signer.kid,
            kids=target.kids,
        )
        self._emit("rollback.done", target, planner.phase(self.state, target))
        return target

    def _roll_back(self, intent: Intent) -> keys.KeyFile:
        """Upload the backup (with today's signer kept) and restart onto it, here and in turn on every server;
        the others catch up as they can (a rollback waits for no one)."""
        backup = self.backups.read(intent.backup, intent.backup_sha256)
        self.restarter.ensure_running()
        restore = self.restore_bytes(backup)
        target = keys.parse(restore, intent.backup)
        proc = self.k3s.server_process()
        self.staging.write(restore)
        self.checkpoint("rollback", "staged")
        res = self._rotate_ca("rollback")
        if not res.ok:
            raise VerifyFailed(f"rotate-ca refused the backup: {res.tail()}")
        want = want_of(target, restore)
        self.coordinator.announce(Announcement("rollback", intent.before_kids, target.kids, want.signer, want.sha))
        if self._never_restarted(intent, proc, want):
            # K3s here still runs the process from before the step, on the same file: it serves the rolled-back
            # set already (rotate-ca changes only the datastore). No restart: a restart here is what the step
            # could not get (another server down), and the others catch up with the rollback as they can.
            self.log.info("rollback.no-restart", msg="K3s here never restarted onto the step; no restart needed")
            self.coordinator.restarted(None)
            return target
        self._restart_in_turn("rollback", target, want, proc)
        return target

    def _never_restarted(self, intent: Intent, proc: Optional[ServerProcess], want: Want) -> bool:
        if proc is None or intent.server_pid is None:
            return False
        same = proc.pid == intent.server_pid and proc.started == intent.server_started
        try:
            on_disk = self.k3s.live_bytes()
        except SafetyRefusal:
            return False
        return same and sha256(on_disk) == want.sha

    def _rollback_failed(self, intent: Intent, reason: str, error: str) -> None:
        self.log.critical(
            "rollback.failed",
            msg=(
                f"ROLLBACK FAILED after: {reason}. Rollback error: {error}. By hand: copy {intent.backup} to "
                f"{self.staging.key} (mode 0600), run `{' '.join(self.k3s.rotate_ca_argv())}`, then restart "
                f"K3s on every server ({' '.join(self.cfg.restart_command)}); check `k3srotd status`, then "
                "run `k3srotd rollback --yes` to record it. Backups are kept in "
                f"{self.backups.dir}"
            ),
            backup=intent.backup,
        )
        raise RollbackFailed(
            f"{intent.step} failed ({reason}) and the rollback failed too ({error}); see the log for the "
            f"manual steps; the key set before the step is in {intent.backup}"
        ) from None
