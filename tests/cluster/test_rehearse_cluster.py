"""`k3srotd rehearse` on three servers: every server restarts in turn, never two at once, and no key changes."""

from __future__ import annotations

from clusternode import Cluster, downtimes, wait_until


def test_a_rehearsal_restarts_every_server_in_turn(cluster: Cluster) -> None:
    a, b, c = cluster
    signer = a.server.signer_kid()
    live = {n.name: n.live_bytes() for n in cluster}
    starts = {n.name: len(downtimes(n.server)) for n in cluster}
    for n in (b, c):
        n.write_config(automatic=False)
        n.start_daemon()
    wait_until(
        "every daemon reports",
        lambda: {"k3srotd-node-server-1", "k3srotd-node-server-2"} <= {k.split("/")[1] for k in cluster.leases()},
    )
    proc = a.ok("rehearse", "--yes", timeout=240)
    assert "rehearsal passed" in proc.stdout, proc.stdout
    windows = []
    for n in cluster:
        mine = downtimes(n.server)[starts[n.name] :]
        assert len(mine) == 1, (n.name, mine)  # each server restarted exactly once
        windows += [(s, e, n.name) for s, e, _ in mine]
        assert n.live_bytes() == live[n.name], n.name
        assert n.server.jwks_kids() == [signer] and n.server.signer_kid() == signer, n.name
    ordered = sorted(windows)
    assert all(x[1] <= y[0] for x, y in zip(ordered, ordered[1:])), ordered  # one at a time
    assert "rehearse.done" in [e["event"] for e in a.events()]
