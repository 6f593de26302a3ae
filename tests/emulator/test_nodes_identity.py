"""Nodes (agent or not, readiness after the node-monitor grace) and kube-apiserver identity Leases
(k3semu/nodes.py, k3semu/apiserverid.py)."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import pytest
from k3semu import apiserverid, nodes
from k3semu.harness import EmulatedCluster, EmulatedServer

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
SELECTOR = "?labelSelector=apiserver.kubernetes.io%2Fidentity%3Dkube-apiserver"
# the real upstream flags, shortened so the test does not wait 40 s
FAST_NODES = [
    "--kube-controller-manager-arg=node-monitor-grace-period=2s",
    "--kubelet-arg=node-lease-duration-seconds=2",
]


def _ready(srv: EmulatedServer, name: str) -> Dict[str, Any]:
    node = srv.client().json("GET", f"/api/v1/nodes/{name}")
    return dict(node["status"]["conditions"][0])


def _identity(srv: EmulatedServer) -> List[Dict[str, Any]]:
    return list(srv.client().json("GET", LEASES + SELECTOR)["items"])


def test_server_without_agent_has_no_node(tmp_path) -> None:
    cluster = EmulatedCluster(2, tmp_path, extra_args=["--disable-agent"])
    cluster.servers[0].extra_args.remove("--disable-agent")
    with cluster:
        nodes = cluster[1].client().json("GET", "/api/v1/nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == ["server-0"]
        assert nodes[0]["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true"
        # but both kube-apiservers publish their identity
        assert len(_identity(cluster[0])) == 2


def test_stopped_node_turns_unknown_only_after_the_grace(tmp_path) -> None:
    with EmulatedCluster(2, tmp_path, extra_args=FAST_NODES) as cluster:
        a, b = cluster
        b.stop()
        stopped = time.time()
        assert _ready(a, "server-1")["status"] == "True"  # the controller has not given up yet
        while _ready(a, "server-1")["status"] == "True":
            assert time.time() - stopped < 10
            time.sleep(0.2)
        cond = _ready(a, "server-1")
        assert cond["status"] == "Unknown" and cond["message"] == "Kubelet stopped posting node status."
        assert time.time() - stopped >= 1.0  # grace 2 s after the last heartbeat (every 0.5 s)
        b.start()
        assert _ready(a, "server-1")["status"] == "True"


@pytest.mark.parametrize(
    "since_beat,grace,status",
    [(0, 40.0, "True"), (39.9, 40.0, "True"), (40.0, 40.0, "True"), (40.1, 40.0, "Unknown"), (3, 2.0, "Unknown")],
)
def test_ready_from_the_last_heartbeat(since_beat: float, grace: float, status: str) -> None:
    node = {"metadata": {"name": "n"}, "status": {}}
    cond = nodes._view(node, 1000.0, 900.0, grace, 1000.0 + since_beat)["status"]["conditions"][0]
    assert cond["status"] == status
    assert nodes.DEFAULT_GRACE == 40.0


def test_identity_leases_name_holder_label_and_renewal(tmp_path) -> None:
    env = {"K3SEMU_IDENTITY_LEASE_RENEW": "0.5"}
    with EmulatedCluster(2, tmp_path, env=env) as cluster:
        leases = {le["metadata"]["labels"]["kubernetes.io/hostname"]: le for le in _identity(cluster[0])}
        assert set(leases) == {"server-0", "server-1"}
        lease = leases["server-0"]
        name = lease["metadata"]["name"]
        assert name == apiserverid.lease_name("server-0") and name.startswith("apiserver-")
        assert lease["metadata"]["namespace"] == "kube-system"
        assert lease["spec"]["holderIdentity"].startswith(name + "_")
        assert lease["spec"]["leaseDurationSeconds"] == 3600
        first = lease["spec"]["renewTime"]
        time.sleep(1.5)
        again = {le["metadata"]["name"]: le for le in _identity(cluster[1])}[name]
        assert again["spec"]["renewTime"] > first
        cluster[0].restart()
        after = {le["metadata"]["name"]: le for le in _identity(cluster[1])}[name]
        assert after["spec"]["holderIdentity"] != lease["spec"]["holderIdentity"]  # a new uuid at every start


def test_lease_name_matches_kubernetes_test_vector() -> None:
    # the name is base32(sha256(len16(host) host len16("kube-apiserver") "kube-apiserver")[:16]), lower case
    import base64
    import hashlib

    data = b"\x00\x04host" + b"\x00\x0ekube-apiserver"
    want = "apiserver-" + base64.b32encode(hashlib.sha256(data).digest()[:16]).decode().rstrip("=").lower()
    assert apiserverid.lease_name("host") == want


def test_expired_identity_leases_are_collected(tmp_path) -> None:
    env = {
        "K3SEMU_IDENTITY_LEASE_DURATION": "1",
        "K3SEMU_IDENTITY_LEASE_RENEW": "0.3",
        "K3SEMU_IDENTITY_LEASE_GC": "0.5",
    }
    with EmulatedCluster(2, tmp_path, env=env) as cluster:
        gone = apiserverid.lease_name("server-1")
        cluster[1].stop()
        deadline = time.time() + 10
        while gone in [le["metadata"]["name"] for le in _identity(cluster[0])]:
            assert time.time() < deadline, "the expired identity lease was never collected"
            time.sleep(0.2)
        assert [le["metadata"]["name"] for le in _identity(cluster[0])] == [apiserverid.lease_name("server-0")]
