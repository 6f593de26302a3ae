"""Whether what K3s serves after a restart matches the target: a pure verdict on one look, polled by the engine.

A look (`Seen`) is what the engine read at one moment: the server process, /readyz, the live file's sha256, the
kid in service.current.key, and (read only when all else matches) the kids the JWKS lists. The verdict says
done, keep waiting (and for what), read the JWKS, or failed (K3s answers but serves something else).
Tables: tests/unit/test_verify.py.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

from k3srotd.core import keys

Outcome = Literal["ok", "wait", "jwks", "fail"]


class VerifyFailed(Exception):
    """K3s is not back as the step expects: the step rolls back."""


@dataclasses.dataclass(frozen=True)
class Want:
    """What the restarted K3s must serve: the staged file (by sha256), its kids in order and its signer."""

    kids: tuple[str, ...]
    signer: str
    sha: str

    def outline(self) -> keys.KeyFile:
        """The target as a key file of kids only (no key material): what the checks around a restart need, on a
        server that restarts onto another server's upload and has no copy of the file."""
        blocks = tuple(
            keys.KeyBlock(b"", "private" if k == self.signer else "public", k, "", 0) for k in unique(self.kids)
        )
        return keys.KeyFile(blocks, "the published key set")


@dataclasses.dataclass(frozen=True)
class Seen:
    pid: Optional[int]  # the `k3s server` process, None when there is none
    restarted: bool  # it is not the process from before the restart (or there was none to compare with)
    ready: Optional[bool]  # /readyz; None when verify-api is off
    live_sha: str  # "" when the live file cannot be read
    current_kid: Optional[str]  # service.current.key
    served: Optional[Sequence[str]] = None  # the JWKS kids; None when not read (yet)
    served_error: str = ""  # why the JWKS could not be read


def unique(kids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for k in kids:
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def judge(want: Want, seen: Seen) -> tuple[Outcome, str]:
    """One look's verdict, with what is awaited (wait), or why it failed (fail)."""
    if seen.pid is None:
        return "wait", "no K3s server process yet"
    if not seen.restarted:
        return "wait", f"K3s has not restarted yet (still pid {seen.pid})"
    api = seen.ready is not None
    if seen.live_sha != want.sha:
        if api and seen.ready:
            return "fail", (
                f"K3s restarted (pid {seen.pid}) but serves another key set than the one staged "
                "(K3s did not apply the rotate-ca data)"
            )
        return "wait", "the live service.key differs from the staged key set"
    if seen.current_kid != want.signer:
        return "wait", f"service.current.key holds {seen.current_kid}, expected {want.signer}"
    if not api:
        return "ok", ""
    if not seen.ready:
        return "wait", "/readyz is not ok yet"
    if seen.served is None and not seen.served_error:
        return "jwks", ""
    expected = unique(want.kids)
    served = unique(seen.served or [])
    if served == expected:
        return "ok", ""
    if served:
        return "fail", f"the JWKS lists {served}, expected {expected}"
    return "wait", seen.served_error or "the JWKS lists no keys yet"
