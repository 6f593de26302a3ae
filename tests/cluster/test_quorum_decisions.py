"""Issue 11's decisions as tables: who the servers are (by kube-apiserver identity Leases, Nodes and reports),
which other servers are not up and serving, the join order and the load-balancer refusal on K3s without #11844,
and the release table of that fix."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import pytest

from k3srotd.core import versions
from k3srotd.core.cluster import Apiserver, Report, Server, Step
from k3srotd.core.rollout import join_refusal, join_target, join_wait, members, not_serving

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
S = dt.timedelta(seconds=1)
SHA = "f" * 64


def rep(
    node: str,
    at: Optional[dt.datetime] = T0,
    host: str = "",
    version: str = "v1.31.4+k3s1",
    join: str = "",
    addrs: tuple[str, ...] = (),
    join_addrs: tuple[str, ...] = (),
    step_id: str = "",
    result: str = "",
    sha: str = "",
) -> Report:
    until = at + 100 * S if at is not None else None
    return Report(
        node, [], sha, step_id, result, "", at, until, host=host, version=version, join=join, addrs=addrs,
        join_addrs=join_addrs,
    )  # fmt: skip


def api(host: str, renew: Optional[dt.datetime] = T0) -> Apiserver:
    return Apiserver(host, f"apiserver-x_{host}", renew)


def node(name: str, ready: str = "True") -> Server:
    return Server(name, ready, "" if ready == "True" else "Kubelet stopped posting node status.")


# --- members: counted by kube-apiservers
@pytest.mark.parametrize(
    ("nodes", "apis", "reports", "names", "why"),
    [
        # Kubernetes < 1.26: no identity Leases, the Nodes alone
        (["s0", "s1"], [], ["s0"], ["s0", "s1"], None),
        # three servers with --disable-agent: no Node at all, still three servers
        ([], ["s0", "s1", "s2"], ["s0", "s1", "s2"], ["s0", "s1", "s2"], None),
        # one server with an agent, two without
        (["s0"], ["s0", "s1", "s2"], ["s0", "s1", "s2"], ["s0", "s1", "s2"], None),
        # a kube-apiserver without a k3srotd report: the counts cannot be explained
        (
            ["s0", "s1"],
            ["s0", "s1", "s2"],
            ["s0", "s1"],
            ["s0", "s1", "s2"],
            "the kube-apiserver on s2 has no k3srotd report",
        ),
        # a Node whose kube-apiserver published no identity Lease: a server that is down, still counted
        (["s0", "s1", "s2"], ["s0", "s1"], ["s0", "s1", "s2"], ["s0", "s1", "s2"], None),
        # a report of a server gone (no Node, no kube-apiserver): not a server
        (["s0", "s1"], ["s0", "s1"], ["s0", "s1", "old"], ["s0", "s1"], None),
    ],
)
def test_servers_are_counted_by_their_kube_apiservers(
    nodes: list[str], apis: list[str], reports: list[str], names: list[str], why: Optional[str]
) -> None:
    got, disagree = members([node(n) for n in nodes], [api(h) for h in apis], {r: rep(r) for r in reports})
    assert [s.name for s in got] == names
    if why is None:
        assert disagree is None
    else:
        assert disagree is not None and why in disagree
        assert "counted 3 kube-apiservers" in disagree and "2 k3srotd reports (s0, s1)" in disagree


def test_a_kube_apiserver_is_matched_to_its_report_by_hostname() -> None:
    """The identity Lease names the host (os.Hostname); the report its node name and its hostname."""
    got, disagree = members([node("s1")], [api("host-a"), api("s1")], {"n0": rep("n0", host="host-a"), "s1": rep("s1")})
    assert disagree is None
    assert [(s.name, s.node) for s in got] == [("n0", False), ("s1", True)]


# --- not_serving: a step starts, and a restart begins, only when every other server is up
def servers3(**over: Server) -> list[Server]:
    out = []
    for n in ("s0", "s1", "s2"):
        out.append(over.get(n) or Server(n, "True", "", api=api(n)))
    return out


@pytest.mark.parametrize(
    ("servers", "reports", "now", "reported", "down"),
    [
        (servers3(), {n: rep(n) for n in ("s0", "s1", "s2")}, T0 + 5 * S, True, []),
        # s2's kube-apiserver stopped renewing its identity Lease (renewed every 10 s): 30 s without is down
        (servers3(s2=Server("s2", "True", "", api=api("s2", T0 - 31 * S))), {}, T0, False, ["s2"]),
        (servers3(s2=Server("s2", "True", "", api=api("s2", T0 - 29 * S))), {}, T0, False, []),
        # its Node went NotReady (the node-monitor grace ran out)
        (servers3(s1=Server("s1", "Unknown", "stopped", api=api("s1"))), {}, T0, False, ["s1"]),
        # no Node (--disable-agent): the identity Lease alone says it runs
        (servers3(s1=Server("s1", "", "", node=False, api=api("s1"))), {}, T0, False, []),
        # a Node without a kube-apiserver identity Lease, where the others publish theirs
        (servers3(s2=Server("s2", "True", "")), {}, T0, False, ["s2"]),
        # before a step: every other k3srotd's report fresh too; a restart does not wait for a k3srotd
        (servers3(), {"s1": rep("s1"), "s2": rep("s2", at=T0 - 200 * S)}, T0, True, ["s2"]),
        (servers3(), {"s1": rep("s1")}, T0, True, ["s2"]),
        (servers3(), {"s1": rep("s1")}, T0, False, []),
        # this server itself is never judged here (it is the one about to restart)
        (servers3(s0=Server("s0", "False", "x", api=api("s0", None))), {}, T0, False, []),
    ],
)
def test_other_servers_must_be_up_and_serving(
    servers: list[Server], reports: dict[str, Report], now: dt.datetime, reported: bool, down: list[str]
) -> None:
    got = not_serving(servers, reports, "s0", now, reported=reported)
    assert [line.split(" ")[0] for line in got] == down


def test_not_serving_says_why() -> None:
    srv = servers3(s2=Server("s2", "Unknown", "Kubelet stopped posting node status.", api=api("s2", T0 - 60 * S)))
    (line,) = not_serving(srv, {"s1": rep("s1"), "s2": rep("s2", at=T0 - 200 * S)}, "s0", T0)
    assert line.startswith("s2 (its kube-apiserver has not renewed its identity Lease since 2026-01-01T11:59:00Z")
    assert "Node Ready Unknown (Kubelet stopped posting node status.)" in line
    assert "its k3srotd has not reported since 2026-01-01T11:56:40Z" in line


# --- K3s without PR #11844
@pytest.mark.parametrize(
    ("version", "old"),
    [
        ("v1.28.15+k3s1", True),
        ("v1.29.14+k3s1", True),
        ("v1.29.15+k3s1", False),
        ("v1.30.10+k3s1", True),
        ("v1.30.11+k3s1", False),
        ("v1.31.6+k3s1", True),
        ("v1.31.7+k3s1", False),
        ("v1.32.2+k3s1", True),
        ("v1.32.3+k3s1", False),
        ("v1.33.0+k3s1", False),
        ("v1.34.1+k3s1", False),
    ],
)
def test_old_bootstrap_releases(version: str, old: bool) -> None:
    v = versions.parse(version)
    assert v is not None and versions.old_bootstrap(v) is old


OLD, NEW = "v1.31.4+k3s1", "v1.31.7+k3s1"
A0, A1, A2, LB = "10.0.0.10:6443", "10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.99:6443"


def joined(version: str, via: str) -> dict[str, Report]:
    return {
        "s0": rep("s0", version=version, addrs=(A0,)),
        "s1": rep("s1", version=version, addrs=(A1,), join=f"https://{via}", join_addrs=(via,)),
        "s2": rep("s2", version=version, addrs=(A2,), join=f"https://{via}", join_addrs=(via,)),
    }


@pytest.mark.parametrize(
    ("who", "via", "target", "single"),
    [("s0", A0, None, True), ("s1", A0, "s0", True), ("s1", LB, None, False), ("s2", A1, "s1", True)],
)
def test_join_target(who: str, via: str, target: Optional[str], single: bool) -> None:
    assert join_target(joined(OLD, via)[who], joined(OLD, via)) == (target, single)


@pytest.mark.parametrize(
    ("version", "via", "refused"),
    [(OLD, LB, True), (NEW, LB, False), (OLD, A0, False), ("v1.28.15+k3s1", LB, True)],
)
def test_a_load_balancer_join_url_is_refused_on_old_k3s(version: str, via: str, refused: bool) -> None:
    reports = joined(version, via)
    why = join_refusal([Server(n, "True", "") for n in reports], reports)
    assert (why is not None) is refused
    if why is not None:
        assert why.startswith(f"s1 joins through https://{LB}, which names none of the servers' own addresses")
        assert "v1.29.15, v1.30.11, v1.31.7, v1.32.3, v1.33.0 or later" in why
        assert "remove the server address (`server:` / K3S_URL) from s1's K3s config" in why


STEP = Step("publish-1", "publish", "s1", [], ["k"], "k", SHA, "rolling", T0)


@pytest.mark.parametrize(
    ("version", "me", "s0_on_step", "waits"),
    [
        (OLD, "s0", False, False),  # the init server (no join URL) goes first
        (OLD, "s1", False, True),  # its join target s0 has not run the step yet
        (OLD, "s1", True, False),
        (OLD, "s2", True, False),
        (NEW, "s1", False, False),  # #11844: every restart reads the datastore, any order
    ],
)
def test_a_server_restarts_after_its_join_target(version: str, me: str, s0_on_step: bool, waits: bool) -> None:
    reports = joined(version, A0)
    if s0_on_step:
        reports["s0"] = rep("s0", version=version, addrs=(A0,), step_id=STEP.id, result="ok", sha=SHA)
    why = join_wait(STEP, reports, me)
    assert (why is not None) is waits
    if why is not None:
        assert why == f"{me} joins through s0 (https://{A0}), and K3s {OLD} restarts it from s0's disk: s0 restarts " \
            "onto publish first"  # fmt: skip
