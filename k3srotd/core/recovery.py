"""What to do with a step an earlier k3srotd left (its intent in state.json): pure decisions, tables in
tests/unit/test_recovery.py. The engine reads the facts (the live file, whether K3s runs, the cluster) and acts.

  start      from the intent's stage alone: halt after a failed rollback, finish an interrupted rollback,
             rejoin a step this server may have published to its cluster, or check what K3s runs now
  rejoin     a published step still open: restart here onto the staged file, verify and report, or only await
             the others (None: nothing of ours is there to rejoin; check instead)
  settle     K3s runs again: verify and commit when it serves the staged file, undo when it still serves the
             set from before (the datastore may hold the new one), else adopt what someone else put there
A rehearsal (its target is the live set) is committed only after a restart proven here: rejoined by restarting
again, never committed by settle.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

from k3srotd.core.model import Intent

Start = Literal["none", "halt", "roll-back", "rejoin", "check"]  # rejoin: when published, else check
Rejoin = Literal["restart", "verify", "await"]
Settle = Literal["commit", "undo", "forget"]
Resumed = Literal["finished", "undone", "rolled-back", "forgotten"]  # how the engine ended the step


def start(intent: Optional[Intent]) -> Start:
    """From the stage: "rejoin" asks the cluster whether this server published the step and it is still open
    (then rejoin() decides); when not, or on one server, the engine goes on with "check"."""
    if intent is None:
        return "none"
    if intent.stage == "rollback-failed":
        return "halt"
    if intent.stage in ("restarting", "rolling"):
        return "rejoin"
    if intent.stage == "rolling-back":
        return "roll-back"
    return "check"


def rejoin(
    intent: Intent, live_sha: str, live_kids: Sequence[str], staged_sha: Optional[str], reported: bool
) -> Optional[Rejoin]:
    """This server's part of its own published step. `staged_sha`: of the staged file, None when it is gone;
    `reported`: this server's report already names the step."""
    if intent.step == "rehearse" and not reported:
        # its target is the live set: the file cannot tell whether K3s restarted here, so restart again
        return "restart" if staged_sha == intent.staged_sha256 else None
    if live_sha != intent.staged_sha256:
        if list(live_kids) != list(intent.before_kids) or staged_sha != intent.staged_sha256:
            return None
        return "restart"
    return "await" if reported else "verify"


def settle(intent: Intent, live_sha: str, live_kids: Sequence[str]) -> Settle:
    """A rehearsal is never committed here: its target is the live set, so nothing shows that its restart and
    checks passed; it is undone (the datastore gets the live set again) and the operator runs it again."""
    if live_sha == intent.staged_sha256 and intent.step != "rehearse":
        return "commit"
    if list(live_kids) == list(intent.before_kids):
        return "undo"
    return "forget"
