"""Every state-dir file goes through the one JSON store: written 0600 in a 0700 folder, a corrupt or symlinked
file read as empty (these files only remember), a symlink refused, never followed."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

from k3srotd.cluster import book
from k3srotd.errors import SafetyRefusal
from k3srotd.identity import gates, tokenmetrics

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def _gates(d: Path) -> tuple[Callable[[], Any], Callable[[], None], str]:
    b = gates.Book(str(d))
    return b.load, lambda: b.save({"promote": {"since": "x"}}), gates.BOOK


def _cluster(d: Path) -> tuple[Callable[[], Any], Callable[[], None], str]:
    b = book.Book(str(d))
    return b.load, lambda: b.update(servers=["a", "b"]), book.BOOK


def _history(d: Path) -> tuple[Callable[[], Any], Callable[[], None], str]:
    h = tokenmetrics.History(str(d))
    reading = tokenmetrics.Reading(at=T0, start=None, counters={})
    return h.load, lambda: h.add(reading, T0 - dt.timedelta(days=1)), tokenmetrics.FILE


@pytest.mark.parametrize("make", [_gates, _cluster, _history])
def test_each_state_dir_file_is_private_and_a_bad_one_reads_empty(tmp_path: Path, make: Callable[..., Any]) -> None:
    d = tmp_path / "state"
    load, save, name = make(d)
    assert not load()
    save()
    assert load()
    assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600 and stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (d / name).write_text("{not json")
    assert not load()
    (d / name).unlink()
    other = tmp_path / "elsewhere.json"
    other.write_text('{"servers": ["x", "y"], "readings": []}')
    (d / name).symlink_to(other)
    with pytest.raises(SafetyRefusal, match="is a symlink"):  # never read through a link someone planted
        load()
