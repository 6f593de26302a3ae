"""Workload-identity gates: checks the engine runs around steps. (No checks yet: see issue 7.)

- step_checks(): objects with before_restart(step, target) and after_restart(step, target); the latter raises
  steps.VerifyFailed to fail the step (which is then rolled back).
- promote_gate(): None when the new key may start signing, else a one-line description of what is awaited.
- prune_gate(): None when the retired keys may go, else why not (a prune --force overrides it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional, Protocol, Sequence

from k3srotd.config import Config
from k3srotd.keys import KeyFile


class StepCheck(Protocol):
    def before_restart(self, step: str, target: KeyFile) -> None: ...

    def after_restart(self, step: str, target: KeyFile) -> None: ...


def step_checks(cfg: Config, k3s: Any, log: Any) -> list[StepCheck]:
    return []


def promote_gate(cfg: Config, k3s: Any, log: Any, new_kid: str, now: dt.datetime) -> Optional[str]:
    return None


def prune_gate(cfg: Config, k3s: Any, log: Any, drop: Sequence[str], now: dt.datetime) -> Optional[str]:
    return None
