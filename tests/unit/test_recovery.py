"""core.recovery: what to do with a step an earlier k3srotd left, as tables of literal cases."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import pytest

from k3srotd.core import recovery
from k3srotd.core.model import Intent

A, B = "A" * 43, "B" * 43
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def intent(stage: str) -> Intent:
    return Intent("publish", T0, [A], [A, B], "/backup", "sha-new", stage, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stage", "start"),
    [
        (None, "none"),
        ("rollback-failed", "halt"),  # a human restores the backup first
        ("staged", "check"),
        ("upload-failed", "check"),  # the datastore may hold the new set: undo
        ("restarting", "rejoin"),  # on a cluster it may be published; else check
        ("rolling", "rejoin"),
        ("rolling-back", "roll-back"),
    ],
)
def test_start(stage: Optional[str], start: str) -> None:
    assert recovery.start(intent(stage) if stage else None) == start


@pytest.mark.parametrize(
    ("live_sha", "live_kids", "staged_sha", "reported", "act"),
    [
        ("sha-old", [A], "sha-new", False, "restart"),  # crashed before its own restart: restart here, in turn
        ("sha-old", [A], None, False, None),  # the staged file is gone: nothing to restart onto
        ("sha-old", [A], "sha-other", False, None),  # staging holds something else
        ("sha-old", [B], "sha-new", False, None),  # the live set changed under us
        ("sha-new", [A, B], None, False, "verify"),  # restarted, never reported: verify and report
        ("sha-new", [A, B], None, True, "await"),  # reported already: await the others
    ],
)
def test_rejoin(live_sha: str, live_kids: list[str], staged_sha: Optional[str], reported: bool, act: str) -> None:
    assert recovery.rejoin(intent("rolling"), live_sha, live_kids, staged_sha, reported) == act


@pytest.mark.parametrize(
    ("live_sha", "live_kids", "act"),
    [
        ("sha-new", [A, B], "commit"),  # K3s runs the staged set: verify, then commit
        ("sha-old", [A], "undo"),  # K3s runs the set from before: put the datastore back
        ("sha-odd", [B], "forget"),  # someone else changed it: adopt it
    ],
)
def test_settle(live_sha: str, live_kids: list[str], act: str) -> None:
    assert recovery.settle(intent("restarting"), live_sha, live_kids) == act


def rehearsal(stage: str) -> Intent:
    return Intent("rehearse", T0, [A], [A], "/backup", "sha-live", stage, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("live_sha", "staged_sha", "reported", "act"),
    [
        ("sha-live", "sha-live", False, "restart"),  # the file cannot show a restart: restart here again
        ("sha-live", None, False, None),  # the staged file is gone: nothing to rejoin; settle undoes it
        ("sha-live", "sha-live", True, "await"),  # this server reported its restart: await the others
    ],
)
def test_rejoin_rehearsal(live_sha: str, staged_sha: Optional[str], reported: bool, act: Optional[str]) -> None:
    assert recovery.rejoin(rehearsal("rolling"), live_sha, [A], staged_sha, reported) == act


@pytest.mark.parametrize(
    ("live_sha", "live_kids", "act"),
    [
        ("sha-live", [A], "undo"),  # never committed by settle: nothing proves the restart
        ("sha-other", [A], "undo"),
        ("sha-other", [B], "forget"),  # changed by someone else meanwhile
    ],
)
def test_settle_rehearsal(live_sha: str, live_kids: list[str], act: str) -> None:
    assert recovery.settle(rehearsal("restarting"), live_sha, live_kids) == act
