"""The join-URL bootstrap path, before and after k3s PR #11844 (k3semu/join.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from k3semu import join, keys
from k3semu.harness import EmulatedCluster, EmulatedServer
from k3semu.lb import LoadBalancer

OLD, NEW = "v1.31.4+k3s1", "v1.31.7+k3s1"


@pytest.mark.parametrize(
    "version,fixed",
    [
        ("v1.28.15+k3s1", False),
        ("v1.29.14+k3s1", False),
        ("v1.29.15+k3s1", True),
        ("v1.30.10+k3s1", False),
        ("v1.30.11+k3s1", True),
        ("v1.31.6+k3s1", False),
        ("v1.31.7+k3s1", True),
        ("v1.32.2+k3s1", False),
        ("v1.32.3+k3s1", True),
        ("v1.33.0+k3s1", True),
        ("v1.34.1+k3s1", True),
    ],
)
def test_which_releases_serve_from_the_datastore(version: str, fixed: bool) -> None:
    assert join.serves_from_datastore(version) is fixed


def _stage_new_key(srv: EmulatedServer, tmp: Path) -> str:
    new = keys.new_rsa_key(2048)
    staged = tmp / "staged"
    (staged / "tls").mkdir(parents=True)
    (staged / "tls" / "service.key").write_bytes(srv.service_key.read_bytes() + keys.marshal_private_key(new))
    assert srv.rotate_ca(staged).returncode == 0
    return keys.kid_of(new.public_key())


@pytest.mark.parametrize("version", [OLD, NEW])
def test_joined_server_restarted_before_its_join_target(tmp_path: Path, version: str) -> None:
    with EmulatedCluster(2, tmp_path / "c", join="first", version=version) as cluster:
        init, joined = cluster
        new_kid = _stage_new_key(init, tmp_path)
        joined.restart()
        if version == OLD:  # the init server answered from its own disk: the old key set
            assert new_kid not in joined.disk_kids()
            init.restart()  # the init server reads the datastore
            assert new_kid in init.disk_kids()
            joined.restart()
        assert new_kid in joined.disk_kids()
        assert new_kid in joined.jwks_kids()


def test_join_target_down_falls_back_to_the_datastore(tmp_path: Path) -> None:
    with EmulatedCluster(2, tmp_path / "c", join="first", version=OLD) as cluster:
        init, joined = cluster
        new_kid = _stage_new_key(init, tmp_path)
        init.stop()
        joined.restart()
        assert new_kid in joined.disk_kids()
        assert "Unable to reconcile with remote datastore" in joined.log()


def test_load_balancer_join_reads_the_disk_of_the_picked_peer(tmp_path: Path) -> None:
    with EmulatedCluster(3, tmp_path / "c", version=OLD) as cluster:
        a, b, c = cluster
        order: List[int] = [b.port, a.port]
        lb = LoadBalancer([a.port, b.port], choose=lambda ups: order.pop(0))
        try:
            c.stop()
            c.extra_args += ["--server", lb.url]
            c.start()  # now with the join URL; no key change yet
            lb.picks.clear()
            order[:] = [b.port, a.port]
            new_kid = _stage_new_key(a, tmp_path)
            a.restart()  # no join URL: from the datastore
            c.restart()  # through the balancer to b, whose disk is old
            assert lb.picks == [b.port] and new_kid not in c.disk_kids()
            c.restart()  # to a, whose disk is new
            assert lb.picks == [b.port, a.port] and new_kid in c.disk_kids()
        finally:
            lb.close()
