"""A server's k3srotd stays responsive: killed during its turn to restart, it gives the turn back within seconds
of starting again (not after the lease expires)."""

from __future__ import annotations

import datetime as dt

import clusternode
import pytest
from clusternode import Cluster, downtimes, wait_until


def _holder(cluster: Cluster, lease: str) -> tuple[str, str]:
    spec = (cluster.leases().get(f"kube-system/{lease}") or {}).get("spec", {})
    return str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")


def _reported(cluster: Cluster, *names: str) -> bool:
    return {f"k3srotd-node-{n}" for n in names} <= {k.split("/")[1] for k in cluster.leases()}


def _rfc(t: str) -> float:
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def test_a_follower_killed_during_its_turn_gives_it_back_within_seconds_of_starting_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clusternode, "LEASE_SECONDS", 120)  # an expiry would show: the next turn after 120 s
    a, b, c = cluster
    for n in cluster:
        n.write_config(publish_wait="1h")  # this test ends with the publish
    b.start_daemon()
    c.start_daemon()
    wait_until("every daemon reports", lambda: _reported(cluster, "server-1", "server-2"))
    b.server.set_faults({"slow_start": {"times": 1, "seconds": 6}})  # time to kill server-1's k3srotd in its turn
    c.stop_daemon()  # server-2 joins later, so that server-1 takes the restart lease first
    driver = a.start_bg("rotate-now", log=a.root / "rotate-now.log")
    try:
        wait_until("server-1 holds the restart lease", lambda: _holder(cluster, "k3srotd-restart")[0] == "server-1")
        _, renewed = _holder(cluster, "k3srotd-restart")
        starts = len([r for r in b.server.lifecycle() if r["event"] == "start"])
        wait_until(
            "server-1's K3s is restarting",
            lambda: len([r for r in b.server.lifecycle() if r["event"] == "start"]) > starts,
            every=0.05,
        )
        b.stop_daemon(sig=9)  # only its k3srotd dies, in the middle of its turn; its K3s restart goes on
        c.start_daemon()
        b.start_daemon()
        wait_until(
            "server-2 restarts onto the published set",
            lambda: any(e["event"] == "rolling.restarted" for e in c.daemon_events()),
            timeout=90,
        )
        b_up = downtimes(b.server)[-1][1]
        c_down = downtimes(c.server)[-1][0]
        assert c_down - b_up < 15, (c_down - b_up, _rfc(renewed))
        assert c_down < _rfc(renewed) + 60
        events = [e["event"] for e in b.daemon_events()]
        assert "rolling.turn-returned" in events or "rolling.restarted" in events, events
        wait_until("the publish is committed", lambda: "rolling" not in a.ok("status").stdout, timeout=60)
    finally:
        driver.terminate()
        driver.wait(timeout=30)
    new = a.status()["keys"][-1]["kid"]
    for n in cluster:
        assert new in n.server.jwks_kids(), n.name
