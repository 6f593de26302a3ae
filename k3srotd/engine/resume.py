"""After a crash: finish, roll back, undo or forget the step an earlier k3srotd left, for the executor (which owns
the step's record; core/recovery.py decides, from what is read here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from k3srotd.core import keys, recovery
from k3srotd.core.model import Intent
from k3srotd.core.verify import VerifyFailed
from k3srotd.engine.restart import failure_text, want_of
from k3srotd.errors import LockHeld, RollbackFailed, SafetyRefusal, StepFailed
from k3srotd.node.files import sha256

if TYPE_CHECKING:
    from k3srotd.core.recovery import Resumed
    from k3srotd.engine.executor import Executor


def resume(ex: Executor) -> Optional[str]:
    """Finish or undo the step an earlier k3srotd left. Returns what was done, or None."""
    intent = ex.state.intent
    start = recovery.start(intent)
    if intent is None or start == "none":
        return None
    if start == "halt":
        raise RollbackFailed(
            f"a rollback of {intent.step} failed earlier; restore {intent.backup} by hand (see the log), "
            "then run `k3srotd rollback --yes`"
        )
    if start == "rejoin":
        done = _rejoin(ex, intent)
        if done is not None:
            return done
    ex.log.warning("resume", msg=f"an interrupted {intent.step} (stage {intent.stage}) is resumed", step=intent.step)
    if start == "roll-back":
        ex.rollback_intent(f"interrupted rollback of {intent.step}")
        ex.resumed = (intent.step, "rolled-back")
        return f"finished the interrupted rollback of {intent.step}"
    return _settle(ex, intent)


def _rejoin(ex: Executor, intent: Intent) -> Optional[str]:
    """A step this server published and its cluster still runs: do its part here, await the others, commit."""
    rejoined = ex.coordinator.rejoin(intent)
    if rejoined is None:
        return None
    data, live = ex._read_live()
    staged = ex.staging.key.read_bytes() if ex.staging.key.exists() else None
    act = recovery.rejoin(intent, sha256(data), live.kids, sha256(staged) if staged else None, rejoined.reported)
    if act is None:
        return None
    try:
        if act == "restart" and staged is not None:
            target = keys.parse(staged, str(ex.staging.key))
            ex._restart_in_turn(intent.step, target, want_of(target, staged), ex.k3s.server_process())
            data, live = ex._read_live()
        elif act == "verify":
            ex.restarter.wait_for(want_of(live, data), None)
            ex.coordinator.restarted(None)
        ex._set_stage("rolling")
        ex.coordinator.await_others()
    except LockHeld:
        raise
    except Exception as e:  # noqa: BLE001 - after the upload any error rolls back (exit 1: keys as before)
        why = failure_text(e)
        ex.fail_and_roll_back(intent.step, why, live, f"{intent.step} failed on the cluster: {why}")
        ex.resumed = (intent.step, "rolled-back")
        return f"rolled back the {intent.step}: {why}"
    ex.commit(intent.step, live)
    ex.resumed = (intent.step, "finished")
    return f"finished the {intent.step} on every server"


def _settle(ex: Executor, intent: Intent) -> str:
    try:
        ex.restarter.wait_running()
    except VerifyFailed:
        reason = (
            f"an interrupted {intent.step} is recorded in {ex.store.path}, but K3s is not running; "
            "start K3s, then run k3srotd again to finish or undo it"
        )
        try:
            _, on_disk = ex._read_live()
        except (SafetyRefusal, keys.KeyFileError):
            on_disk = None
        ex._fail(intent.step, reason, on_disk)
        raise StepFailed(reason) from None
    live_bytes, live = ex._read_live()
    act = recovery.settle(intent, sha256(live_bytes), live.kids)
    if act == "commit":
        try:
            ex.restarter.wait_for(want_of(live, live_bytes), None)
        except VerifyFailed as e:
            ex.fail_and_roll_back(intent.step, str(e), live, f"interrupted {intent.step} failed verification: {e}")
            ex.resumed = (intent.step, "rolled-back")
            return f"rolled back the interrupted {intent.step}"
        ex.commit(intent.step, live)
        ex.resumed = (intent.step, "finished")
        return f"finished the interrupted {intent.step}"
    if act == "undo":
        # K3s still runs the old set; rotate-ca may have saved the new one. Put the datastore back to
        # the live set so no later restart applies an unverified step.
        res = ex._rotate_ca(intent.step, live_bytes)
        if not res.ok:
            raise StepFailed(
                f"could not undo the interrupted {intent.step}: rotate-ca failed ({res.tail()}); run k3srotd again"
            )
        return _forget(ex, intent, "undone", f"undid the interrupted {intent.step}; K3s keeps {live.kids}", live)
    return _forget(
        ex, intent, "forgotten", f"the live key set changed outside k3srotd during {intent.step}; adopted it", live
    )


def _forget(ex: Executor, intent: Intent, outcome: Resumed, message: str, live: keys.KeyFile) -> str:
    """The step is over without a commit: no staged key left, no intent, and say so."""
    ex.staging.remove()
    ex.state.intent = None
    ex.store.save(ex.state)
    ex.resumed = (intent.step, outcome)
    ex.log.warning("resume", msg=message, signer_kid=live.signer.kid, kids=live.kids)
    return message
