"""The seam between one server's step and the other servers of its cluster.

The executor drives every step the same way and asks its coordinator at each point where other servers matter:
may the step begin, announce it, wait for my turn to restart, report how the restart went, wait for the others,
say how it ended. On one server there is nothing to coordinate (OneServer: every answer is "go on"); on a
cluster, cluster.driver.ClusterCoordinator answers through Leases. The coordinator never touches the executor or
the step's intent: the executor owns the step's durable record.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ContextManager, Optional, Protocol, Sequence

from k3srotd.core.model import Intent, State


@dataclasses.dataclass(frozen=True)
class Run:
    """How this run was started, for every session in it."""

    background: bool = False  # the daemon: never block on other servers
    ignore_window: bool = False  # the step was started with --ignore-window: the others restart at once too
    crash_at: Optional[str] = None  # the crash tests' kill point (engine.restart.Checkpoints); None in production
    lease_seconds: Optional[float] = None  # the tests' short leases; None: from restart-timeout


@dataclasses.dataclass(frozen=True)
class Announcement:
    step: str
    before_kids: Sequence[str]
    target_kids: Sequence[str]
    signer_kid: str
    target_sha: str


@dataclasses.dataclass(frozen=True)
class Rejoined:
    """A step this server published before it was interrupted, still open on the cluster."""

    reported: bool  # this server's report names it already


class Coordinator(Protocol):
    servers: Sequence[str]  # every server of the cluster, this one included; decided once per run

    def catch_up(self, state: State, wait: bool) -> Optional[tuple[str, float]]:
        """Do this server's part of a step another server drives, and adopt a finished one. None when a new step
        may start here; else what is awaited and when to look again (`wait`: look again until then)."""

    def begin(self, step: str) -> None:
        """Before the step's first side effect; Waiting (a LockHeld) when another server's step comes first."""

    def announce(self, a: Announcement) -> None:
        """After the upload: tell the others to restart onto it. VerifyFailed when it cannot."""

    def my_turn(self, step: str) -> ContextManager[None]:
        """Held while this server's K3s restarts: one server at a time."""

    def restarted(self, error: Optional[str]) -> None:
        """This server's restart for the announced step: ok (None) or failed (why)."""

    def await_others(self) -> None:
        """Until every server runs the announced step. VerifyFailed when one failed it; Waiting in the background."""

    def finished(self, state: State, outcome: str) -> None:
        """The step is committed or rolled back: tell the others, with the state to adopt."""

    def rejoin(self, intent: Intent) -> Optional[Rejoined]:
        """After a crash: the intent's step, when this server published it and it is still open."""

    def close(self, state: State) -> None:
        """Session end."""

    def token_check(self) -> Optional[str]:
        """Before a prune: None when no other server saw old tokens presented; else who saw what."""

    def refuse_direct(self) -> None:
        """Strategy direct: SafetyRefusal when there are other servers to sign before they verify."""


class OneServer:
    """A single server: nothing to coordinate."""

    def __init__(self, me: str) -> None:
        self.servers: Sequence[str] = (me,)

    def catch_up(self, state: State, wait: bool) -> Optional[tuple[str, float]]:
        return None

    def begin(self, step: str) -> None:
        return None

    def announce(self, a: Announcement) -> None:
        return None

    def my_turn(self, step: str) -> ContextManager[None]:
        return contextlib.nullcontext()

    def restarted(self, error: Optional[str]) -> None:
        return None

    def await_others(self) -> None:
        return None

    def finished(self, state: State, outcome: str) -> None:
        return None

    def rejoin(self, intent: Intent) -> Optional[Rejoined]:
        return None

    def close(self, state: State) -> None:
        return None

    def token_check(self) -> Optional[str]:
        return None

    def refuse_direct(self) -> None:
        return None
