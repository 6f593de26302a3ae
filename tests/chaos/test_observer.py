"""The observer's and the schedule's own rules, on literal cases (no cluster): so that a chaos run that passes
means the invariants held, not that the observer could not see."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from chaos.observer import Observer
from chaos.schedule import KINDS, keep, make, shrink_candidates


class FakeServer:
    def __init__(self, records: List[Dict[str, Any]]) -> None:
        self.records = records

    def lifecycle(self) -> List[Dict[str, Any]]:
        return self.records


def rec(event: str, t: float, pid: int) -> Dict[str, Any]:
    return {"event": event, "t": t, "pid": pid}


def up(pid: int) -> List[Dict[str, Any]]:
    return [rec("start", 0, pid), rec("ready", 1, pid)]


def restart(t: float, old: int, new: int, ready: float) -> List[Dict[str, Any]]:
    return [rec("stopping", t, old), rec("stopped", t + 0.1, old), rec("start", t + 0.2, new), rec("ready", ready, new)]


def observer(*servers: List[Dict[str, Any]], injected: tuple = ()) -> Observer:
    o = Observer([FakeServer(r) for r in servers], "/nonexistent", 20.0, 0)  # type: ignore[misc]
    o.t0 = 0.0
    for i, a, b in injected:
        o.injected_down(i, a, b)
    o.check_quorum()
    return o


@pytest.mark.parametrize(
    "servers, injected, expected",
    [
        # one at a time: no finding
        ([up(1) + restart(10, 1, 2, 12), up(3) + restart(13, 3, 4, 15), up(5)], (), []),
        # k3srotd restarts server-1 while its own restart of server-0 is not ready yet
        ([up(1) + restart(10, 1, 2, 14), up(3) + restart(12, 3, 4, 15), up(5)], (), ["server-1 at t+12.0s"]),
        # the harness stopped server-2 at 5 (injected), k3srotd restarts server-0 at 10: a finding
        ([up(1) + restart(10, 1, 2, 12), up(3), up(5) + restart(5, 5, 6, 30)], ((2, 4.9, 5.2),), ["server-0"]),
        # k3srotd's restart begins 0.5 s after the injected stop: decided before it, no finding
        ([up(1) + restart(5.5, 1, 2, 12), up(3), up(5) + restart(5, 5, 6, 30)], ((2, 4.9, 5.2),), []),
        # ... but 2 s after it is a finding (seed 9: the turn was taken 1.4 s after the down)
        ([up(1) + restart(7, 1, 2, 12), up(3), up(5) + restart(5, 5, 6, 30)], ((2, 4.9, 5.2),), ["server-0"]),
        # the injected stop itself, while k3srotd restarts nobody else: no finding
        ([up(1), up(3), up(5) + restart(5, 5, 6, 30)], ((2, 4.9, 5.2),), []),
        # k3srotd restarts server-0 while server-2 was down since a kill -9 (no record): the harness's times count
        (
            [up(1) + restart(10, 1, 2, 12), up(3), [*up(5), rec("start", 20, 6), rec("ready", 21, 6)]],
            ((2, 5.0, 5.1),),
            ["server-0"],
        ),
        # a second start that failed on a taken port (another pid's `stopped`) is no down
        ([up(1) + restart(10, 1, 2, 12), [*up(3), rec("start", 9, 7), rec("stopped", 9.5, 7)], up(5)], (), []),
        # a crash at start: down until the later start serves
        (
            [up(1) + restart(10, 1, 2, 11) + restart(11.5, 2, 8, 30), up(3) + restart(20, 3, 4, 22), up(5)],
            (),
            ["server-1 at t+20.0s"],
        ),
    ],
)
def test_quorum_findings(servers: list, injected: tuple, expected: List[str]) -> None:
    found = [v.detail for v in observer(*servers, injected=injected).violations]
    assert len(found) == len(expected), found
    for f, e in zip(found, expected):
        assert e in f, f


def test_a_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a, b, c = make(7, 3, 60), make(7, 3, 60), make(8, 3, 60)
    assert a == b and a != c
    assert all(0 <= f.at < 60 and f.kind in KINDS and 0 <= f.server < 3 for f in a)
    assert len(a) >= 5  # about one fault every 6 s
    assert keep(a, [3, 0]) == [a[0], a[3]]


def test_every_fault_kind_occurs_over_a_few_seeds() -> None:
    seen = {f.kind for s in range(10) for f in make(s, 5, 60)}
    assert seen == set(KINDS)


def test_shrink_candidates_drop_halves_then_single_faults() -> None:
    cands = shrink_candidates([0, 1, 2, 3])
    assert cands[:2] == [[2, 3], [0, 1]]
    assert [0, 1, 3] in cands and all(len(c) < 4 for c in cands)
