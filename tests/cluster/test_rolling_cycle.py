"""A full staged cycle on three servers: one rotate-ca per step, every server restarted in turn, never two at once."""

from __future__ import annotations

import re
import time

from clusternode import Cluster, downtimes, wait_until


def _overlaps(intervals: list[tuple[float, float, str]]) -> list[tuple[str, str]]:
    ordered = sorted(intervals)
    return [(a[2], b[2]) for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]


def test_staged_cycle_rolls_every_server_one_at_a_time(cluster: Cluster) -> None:
    a, b, c = cluster
    old = a.server.signer_kid()
    old_token = b.server.request_token("default", "app")
    starts = {n.name: len(downtimes(n.server)) for n in cluster}
    for n in (b, c):
        # their daemons follow, also without the opt-in (automatic false); rotate-now on server-0 drives both steps
        n.write_config(publish_wait="1h", automatic=False)
        n.start_daemon()
    wait_until(
        "every daemon reports",
        lambda: {"k3srotd-node-server-1", "k3srotd-node-server-2"} <= {k.split("/")[1] for k in cluster.leases()},
    )

    proc = a.ok("rotate-now", timeout=240)
    new = a.status()["signer_kid"]
    assert new != old and new in proc.stdout
    for n in cluster:  # every server: the new key signs, both verify, the token from before still passes
        assert n.server.jwks_kids() == [new, old], n.name
        assert n.server.signer_kid() == new, n.name
        assert n.server.review_token(old_token)["authenticated"] is True, n.name
    # the followers adopted the driver's state: the same phase, keys and next step everywhere
    wait_until("followers adopt", lambda: all(n.status() == a.status() for n in (b, c)), timeout=30)

    # each server restarted exactly twice (publish, then promote), one at a time, publish everywhere first
    windows = []
    for n in cluster:
        mine = downtimes(n.server)[starts[n.name] :]
        assert len(mine) == 2, (n.name, mine)
        windows += [(s, e, n.name) for s, e, _ in mine]
    assert _overlaps(windows) == []
    ordered = sorted(windows)
    assert {w[2] for w in ordered[:3]} == {"server-0", "server-1", "server-2"}
    # the driver published each step once and committed it only when all three ran it
    events = [e["event"] for e in a.events()]
    assert events.count("rolling.published") == 2 and events.count("rolling.complete") == 2
    assert events.index("rolling.complete") < events.index("publish.done") < events.index("promote.done")
    for n in (b, c):
        restarted = [e for e in n.daemon_events() if e["event"] == "rolling.restarted"]
        assert len(restarted) == 2 and restarted[1]["kids"] == [new, old], n.name

    table = a.ok("status").stdout
    # labels are padded to the longest one
    assert re.search(r"^servers +3 \(server-0, server-1, server-2\)", table, re.M), table
    for n in cluster:
        line = next(ln for ln in table.splitlines() if ln.startswith(n.name))
        assert line.split()[1:4] == ["True", f"{new[:8]},{old[:8]}", "yes"], line
    assert set(a.status()) == {"phase", "signer_kid", "keys", "last_rotation", "next_action"}

    # prune after the grace: one more rolling step, and the old token stops working everywhere
    for n in cluster:
        n.write_config(grace_period="1s")
    time.sleep(1.1)
    a.ok("prune", timeout=240)
    for n in cluster:
        assert n.server.jwks_kids() == [new], n.name
        assert n.server.review_token(old_token)["authenticated"] is False, n.name
    windows = []
    for n in cluster:
        mine = downtimes(n.server)[starts[n.name] :]
        assert len(mine) == 3, (n.name, mine)
        windows += [(s, e, n.name) for s, e, _ in mine]
    assert _overlaps(windows) == []
    assert "prune.done" in [e["event"] for e in a.events()]

    # and the next rotation, from a cluster that has seen steps before
    a.ok("rotate-now", timeout=240)
    newer = a.status()["signer_kid"]
    for n in cluster:
        assert n.server.jwks_kids() == [newer, new], n.name


def test_direct_is_refused_with_more_than_one_server(cluster: Cluster) -> None:
    a = cluster[0]
    for n in cluster:
        n.write_config(strategy="direct")
    for n in cluster[1], cluster[2]:  # every kube-apiserver has a k3srotd (else the count alone refuses)
        n.start_daemon()
    wait_until(
        "the daemons report",
        lambda: {"kube-system/k3srotd-node-server-1", "kube-system/k3srotd-node-server-2"} <= set(cluster.leases()),
    )
    pids = [n.server.pid for n in cluster]
    datastore = a.server.datastore_kids()
    proc = a.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    assert "strategy direct is refused on a cluster of 3 servers" in proc.stderr
    assert "staged" in proc.stderr
    assert [n.server.pid for n in cluster] == pids
    assert a.server.datastore_kids() == datastore
    assert not (a.staging_dir / "server" / "tls" / "service.key").exists()
    # the dry run says the same, from what this server knows of its cluster
    dry = a.k3srotd("rotate-now", "--dry-run")
    assert dry.returncode == 3 and "strategy direct is refused on a cluster of 3 servers" in dry.stderr, dry.stderr


def test_daemons_alone_rotate_the_cluster_one_driver_per_step(cluster: Cluster) -> None:
    """No command by hand: the daemons decide; whichever takes k3srotd-step drives, the others follow."""
    old = cluster[0].server.signer_kid()
    starts = {n.name: len(downtimes(n.server)) for n in cluster}
    for n in cluster:
        n.write_config(rotation_interval="12s")  # the signer falls due a few seconds after the start
        n.start_daemon()
    wait_until(
        "a promote done by some daemon",
        lambda: [e for n in cluster for e in n.daemon_events() if e["event"] == "promote.done"],
        timeout=120,
    )
    for n in cluster:
        n.stop_daemon()
    drivers = [(n.name, e["event"]) for n in cluster for e in n.daemon_events() if e["event"] == "rolling.published"]
    assert len(drivers) >= 2, drivers  # publish and promote, each published by exactly one server
    done = [e for n in cluster for e in n.daemon_events() if e["event"] in ("publish.done", "promote.done")]
    assert sorted(e["event"] for e in done)[:2] == ["promote.done", "publish.done"]
    new = next(e for e in done if e["event"] == "promote.done")["signer_kid"]
    assert new != old
    for n in cluster:
        assert new in n.server.jwks_kids(), n.name
    windows = [(s, e, n.name) for n in cluster for s, e, _ in downtimes(n.server)[starts[n.name] :]]
    assert len(windows) >= 6 and _overlaps(windows) == []
