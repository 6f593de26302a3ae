"""The pure parts of multi-server coordination, as tables: lease expiry, who is awaited, whether a new step may
start, what a server owes the published step, this server's node name."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest

from k3srotd import config
from k3srotd.cluster.book import node_name
from k3srotd.core.cluster import STEP_LEASE as STEP
from k3srotd.core.cluster import Lease, Report, Server, Step
from k3srotd.core.rollout import awaited, held_by_window, my_turn, orphaned, out_of_step
from k3srotd.core.window import MaintenanceWindow

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


@pytest.mark.parametrize(
    ("ours", "k3s_config", "env_file", "hostname", "name"),
    [
        ("server-a", "node-name: b\n", "K3S_NODE_NAME=c\n", "D", "server-a"),  # k3srotd's own key first
        ("", "node-name: b\n", "K3S_NODE_NAME=c\n", "D", "b"),  # then K3s's config
        ("", "", "K3S_TOKEN=secret\nK3S_NODE_NAME='c'\n", "D", "c"),  # then the installer's environment file
        ("", "", "", "Server-D.Example", "server-d.example"),  # then the hostname, lower case like K3s
    ],
)
def test_node_name_as_k3s_picks_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ours: str,
    k3s_config: str,
    env_file: str,
    hostname: str,
    name: str,
) -> None:
    (tmp_path / "k3s.yaml").write_text(k3s_config)
    units = tmp_path / "systemd"
    units.mkdir()
    if env_file:
        (units / "k3s.service.env").write_text(env_file)
    main = tmp_path / "k3srotd.yaml"
    main.write_text(f"k3s-config: {tmp_path / 'k3s.yaml'}\n" + (f"node-name: {ours}\n" if ours else ""))
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert node_name(config.load(str(main), unit_dir=str(units))) == name


WINDOW = MaintenanceWindow.parse({"start": "02:00", "end": "04:00"}, tz=dt.timezone.utc)


@pytest.mark.parametrize(
    ("name", "window", "at", "held"),
    [
        ("publish", "", "03:00", False),  # inside this server's window
        ("publish", "", "12:00", True),  # outside: it restarts at the next opening
        ("promote", "ignored", "12:00", False),  # the driver started it with --ignore-window
        ("rollback", "", "12:00", False),  # a rollback repairs
    ],
)
def test_held_by_window(name: str, window: str, at: str, held: bool) -> None:
    s = Step("s1", name, "server-0", [A], [A, B], A, "sha-new", "rolling", T0, window=window)
    now = dt.datetime.fromisoformat(f"2026-01-02T{at}:00+00:00")
    why = held_by_window(s, WINDOW, now)
    assert (why is not None) == held
    if why:
        assert "opens next at 2026-01-03T02:00:00Z" in why
    assert held_by_window(s, None, now) is None
    assert Step.from_lease(Lease(STEP, "server-0", 10, T0, T0, 0, s.annotations(), "1")) == s


def _step_lease(renew: dt.datetime) -> Lease:
    return Lease(STEP, "server-0", 10, renew, renew, 0, {}, "1")


DONE = {n.name: report(n.name, "sha-new", "s1", "ok") for n in SERVERS}


@pytest.mark.parametrize(
    ("published", "lease_renewed", "reports", "me", "orphan"),
    [
        (step(), T0 - dt.timedelta(seconds=11), DONE, "server-1", True),  # the driver stopped renewing; all done
        (step(), T0 - dt.timedelta(seconds=5), DONE, "server-1", False),  # its lease still runs
        (step(), T0 - dt.timedelta(seconds=11), DONE, "server-0", False),  # the driver resumes its own step
        (step("committed"), T0 - dt.timedelta(seconds=11), DONE, "server-1", False),
        (step(), T0 - dt.timedelta(seconds=11), {**DONE, "server-2": report("server-2", "sha-old")}, "server-1", False),
        (
            step(),
            T0 - dt.timedelta(seconds=11),
            {**DONE, "server-2": report("server-2", "sha-old", "s1", "failed")},
            "server-1",
            False,  # a failed server: only the driver has the backup to roll back to
        ),
        (
            Step("s1", "rollback", "server-0", [A], [A, B], A, "sha-new", "rolling", T0),
            T0 - dt.timedelta(seconds=11),
            DONE,
            "server-1",
            False,
        ),
    ],
)
def test_orphaned(
    published: Step, lease_renewed: dt.datetime, reports: dict[str, Report], me: str, orphan: bool
) -> None:
    assert orphaned(published, _step_lease(lease_renewed), SERVERS, reports, me, T0) is orphan
