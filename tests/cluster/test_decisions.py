"""The pure parts of multi-server coordination, as tables: lease expiry, who is awaited, whether a new step may
start, what a server owes the published step."""

from __future__ import annotations

import datetime as dt

import pytest

from k3srotd.cluster import Lease, Report, Server, Step
from k3srotd.rollplan import awaited, my_turn, out_of_step

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
A, B = "A" * 43, "B" * 43


def lease(holder: str, renew: dt.datetime | None, duration: int = 10) -> Lease:
    return Lease("k3srotd-restart", holder, duration, renew, renew, 0, {}, "1")


@pytest.mark.parametrize(
    ("holder", "renew", "now", "held"),
    [
        ("server-0", T0, T0 + dt.timedelta(seconds=9), True),
        ("server-0", T0, T0 + dt.timedelta(seconds=10), False),  # expired exactly at renew + duration
        ("", T0, T0, False),  # released
        ("server-0", None, T0, False),  # never renewed
    ],
)
def test_lease_held_until_renew_plus_duration(
    holder: str, renew: dt.datetime | None, now: dt.datetime, held: bool
) -> None:
    le = lease(holder, renew)
    assert le.held(now) is held
    assert le.held_by_other("server-1", now) is held
    assert le.held_by_other("server-0", now) is False


def step(outcome: str = "rolling", driver: str = "server-0") -> Step:
    return Step("s1", "publish", driver, [A], [A, B], A, "sha-new", outcome, T0)


def report(node: str, sha: str, step_id: str = "", result: str = "", at: dt.datetime = T0, error: str = "") -> Report:
    return Report(
        node, [A, B] if sha == "sha-new" else [A], sha, step_id, result, error, at, at + dt.timedelta(seconds=60)
    )


SERVERS = [
    Server("server-0", "True", ""),
    Server("server-1", "True", ""),
    Server("server-2", "Unknown", "Kubelet stopped posting node status."),
]


def test_awaited_names_each_server_behind_and_why() -> None:
    reports = {
        "server-0": report("server-0", "sha-new", "s1", "ok"),
        "server-1": report("server-1", "sha-old", at=T0 - dt.timedelta(hours=1)),
    }
    waiting, failed = awaited(SERVERS, step(), reports, T0)
    assert failed == []
    assert [n for n, _ in waiting] == ["server-1", "server-2"]
    assert "runs AAAAAAAA, not yet AAAAAAAA,BBBBBBBB" in waiting[0][1]
    assert "has not reported since 2026-01-01T11:00:00Z" in waiting[0][1]
    assert waiting[1][1].startswith("Node Ready Unknown (Kubelet stopped posting node status.)")
    assert "never reported" in waiting[1][1]


def test_awaited_reports_failures_and_nothing_when_all_are_on_the_step() -> None:
    reports = {n.name: report(n.name, "sha-new", "s1", "ok") for n in SERVERS}
    assert awaited(SERVERS, step(), reports, T0) == ([], [])
    reports["server-1"] = report("server-1", "sha-old", "s1", "failed", error="K3s did not apply it")
    assert awaited(SERVERS, step(), reports, T0) == ([], [("server-1", "K3s did not apply it")])
    # a report for an older step does not count, even on the same key set
    reports["server-1"] = report("server-1", "sha-new", "s0", "ok")
    assert [n for n, _ in awaited(SERVERS, step(), reports, T0)[0]] == ["server-1"]


@pytest.mark.parametrize(
    ("published", "shas", "expected"),
    [
        (None, {"server-1": "x", "server-2": "x"}, None),
        (step("committed"), {"server-1": "x", "server-2": "x"}, None),
        (step("rolling", driver="server-0"), {"server-1": "x", "server-2": "x"}, None),  # our own open step
        (step("rolling", driver="server-1"), {"server-1": "x", "server-2": "x"}, "server-1 drives publish"),
        (None, {"server-1": "x", "server-2": "y"}, "server-2 (runs"),
        (None, {"server-1": "x"}, "server-2 (its k3srotd has never reported)"),
    ],
)
def test_out_of_step(published: Step | None, shas: dict[str, str], expected: str | None) -> None:
    reports = {n: report(n, sha) for n, sha in shas.items()}
    reason = out_of_step(SERVERS, published, reports, "server-0", "x")
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


@pytest.mark.parametrize(
    ("my_sha", "mine", "tried", "turn"),
    [
        ("sha-old", None, {}, "restart"),
        ("sha-old", None, {"s1": "failed: x"}, ""),  # tried once: no restart loop
        ("sha-new", None, {}, "verify"),  # on the set already (restarted meanwhile): check and report
        ("sha-new", report("server-1", "sha-new", "s1", "ok"), {}, ""),
        ("sha-new", report("server-1", "sha-new", "s0", "ok"), {}, "verify"),
        ("sha-new", report("server-1", "sha-new", "s1", "failed"), {"s1": "failed: x"}, ""),  # a failure stands
        ("sha-old", report("server-1", "sha-old", "s1", "failed"), {"s1": "failed: x"}, ""),
        ("sha-new", report("server-1", "sha-old", "s0", "ok"), {"s1": "failed: x"}, "verify"),  # unreported
    ],
)
def test_my_turn(my_sha: str, mine: Report | None, tried: dict[str, str], turn: str) -> None:
    assert my_turn(step(), my_sha, mine, tried) == turn
    assert my_turn(None, my_sha, mine, tried) == ""


def test_step_round_trips_through_lease_annotations() -> None:
    s = step("committed")
    le = Lease("k3srotd-step", "", 10, None, None, 0, s.annotations(), "7")
    assert Step.from_lease(le) == s
    assert Step.from_lease(Lease("k3srotd-step", "", 10, None, None, 0, {}, "7")) is None
