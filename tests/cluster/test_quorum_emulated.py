"""Issue 11 on the emulator, through the CLI and the daemons: servers counted by their kube-apiservers (servers
without a Node too), a kube-apiserver without k3srotd refused, and HA bootstrap on K3s before PR #11844 (the join
order; a load-balancer join URL refused on old K3s, rotated on fixed K3s)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pytest
from clusternode import Cluster, downtimes, wait_until

OLD, FIXED = "v1.31.4+k3s1", "v1.31.7+k3s1"


@pytest.fixture
def make(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    made: list[Cluster] = []

    def build(join: Optional[str] = None, version: Optional[str] = None, agent: bool = True) -> Cluster:
        c = Cluster(tmp_path, join=join, version=version, agent=agent).start()
        made.append(c)
        return c

    yield build
    for c in made:
        c.stop()


def _daemons(cluster: Cluster, *idx: int) -> None:
    for i in idx:
        cluster[i].write_config(publish_wait="1h", automatic=False)
        cluster[i].start_daemon()
    names = {f"kube-system/k3srotd-node-server-{i}" for i in idx}
    wait_until("the daemons report", lambda: names <= set(cluster.leases()))


def _unchanged(cluster: Cluster) -> tuple:  # type: ignore[type-arg]
    return (*[(n.server.pid, n.server.jwks_kids()) for n in cluster], cluster[0].server.datastore_kids())


def test_servers_without_nodes_are_servers(make) -> None:  # type: ignore[no-untyped-def]
    cluster = make(agent=False)  # --disable-agent: no Node at all
    a = cluster[0]
    _daemons(cluster, 1, 2)
    starts = {n.name: len(downtimes(n.server)) for n in cluster}
    a.ok("rotate-now", timeout=240)
    for n in cluster:  # all three restarted onto the same key set, not just this one
        assert len(downtimes(n.server)) > starts[n.name], n.name
        assert n.server.jwks_kids() == a.server.jwks_kids(), n.name
    assert "servers        3 (server-0, server-1, server-2)" in a.ok("status").stdout


def test_a_kube_apiserver_without_k3srotd_is_refused_with_nothing_changed(make) -> None:  # type: ignore[no-untyped-def]
    cluster = make(agent=False)
    a = cluster[0]
    _daemons(cluster, 1)  # server-2 runs K3s but no k3srotd
    before = _unchanged(cluster)
    proc = a.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    assert "counted 3 kube-apiservers" in proc.stderr
    assert "the kube-apiserver on server-2 has no k3srotd report" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _unchanged(cluster) == before


def test_old_k3s_restarts_each_server_after_its_join_target(make) -> None:  # type: ignore[no-untyped-def]
    """server-1 and server-2 join through server-0; the step is driven from server-1, yet server-0 restarts first
    (before #11844 a server restarted before its join target comes back on the old key set)."""
    cluster = make(join="first", version=OLD)
    d = cluster[1]
    _daemons(cluster, 0, 2)
    starts = {n.name: len(downtimes(n.server)) for n in cluster}
    d.ok("rotate-now", timeout=300)
    first = {n.name: downtimes(n.server)[starts[n.name]][0] for n in cluster}
    assert first["server-0"] < first["server-1"] and first["server-0"] < first["server-2"], first
    kids = d.server.jwks_kids()
    for n in cluster:
        assert n.server.jwks_kids() == kids, n.name
    waits = [r["msg"] for r in d.events() if r["event"] == "rolling.turn"]
    assert any("joins through server-0" in m for m in waits), waits


def test_old_k3s_with_a_load_balancer_join_url_is_refused(make) -> None:  # type: ignore[no-untyped-def]
    cluster = make(join="lb", version=OLD)
    a = cluster[0]
    _daemons(cluster, 1, 2)
    before = _unchanged(cluster)
    proc = a.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "names none of the servers' own addresses (a load balancer)" in line
    assert "v1.29.15, v1.30.11, v1.31.7, v1.32.3, v1.33.0 or later" in line and "remove the server address" in line
    assert _unchanged(cluster) == before
    doctor = a.k3srotd("doctor")
    assert doctor.returncode != 0 and "FAIL" in doctor.stdout and "load balancer" in doctor.stdout


def test_fixed_k3s_with_a_load_balancer_join_url_rotates(make) -> None:  # type: ignore[no-untyped-def]
    cluster = make(join="lb", version=FIXED)
    a = cluster[0]
    _daemons(cluster, 1, 2)
    a.ok("rotate-now", timeout=240)
    for n in cluster:
        assert n.server.jwks_kids() == a.server.jwks_kids(), n.name
