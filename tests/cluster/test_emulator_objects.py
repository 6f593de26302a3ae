"""The emulator's Nodes and Leases, as kube-apiserver answers them: shared by the servers of one datastore,
optimistic concurrency on resourceVersion."""

from __future__ import annotations

import json

from k3semu.harness import EmulatedCluster

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


def test_servers_register_nodes_and_share_leases_with_conflicts(k3s_cluster: EmulatedCluster) -> None:
    a, b, c = k3s_cluster
    nodes = a.client().json("GET", "/api/v1/nodes?labelSelector=node-role.kubernetes.io%2Fcontrol-plane%3Dtrue")
    assert [n["metadata"]["name"] for n in nodes["items"]] == ["server-0", "server-1", "server-2"]
    assert (
        a.client().json("GET", "/api/v1/nodes?labelSelector=node-role.kubernetes.io%2Fcontrol-plane%3Dfalse")["items"]
        == []
    )
    assert {cond["status"] for n in nodes["items"] for cond in n["status"]["conditions"]} == {"True"}

    body = {
        "metadata": {"name": "x", "annotations": {"k": "v"}},
        "spec": {"holderIdentity": "server-1", "leaseDurationSeconds": 5},
    }
    created = b.client().json("POST", LEASES, body)
    status, _, data = c.client().request("POST", LEASES, body)
    assert status == 409 and json.loads(data)["reason"] == "AlreadyExists"
    assert a.client().json("GET", f"{LEASES}/x")["metadata"]["annotations"] == {"k": "v"}

    stale = dict(created, spec=dict(created["spec"], holderIdentity="server-2"))
    updated = c.client().json("PUT", f"{LEASES}/x", stale)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    status, _, data = a.client().request("PUT", f"{LEASES}/x", stale)  # the resourceVersion read is old now
    assert status == 409 and json.loads(data)["reason"] == "Conflict"
    assert "the object has been modified" in json.loads(data)["message"]
    status, _, _ = a.client().request("PUT", f"{LEASES}/missing", dict(stale, metadata={"name": "missing"}))
    assert status == 201  # the lease strategy allows create on update
    status, _, _ = a.client().request("PUT", f"{LEASES}/x", dict(stale, metadata={"name": "y"}))
    assert status == 400
    mine = [le["metadata"]["name"] for le in a.client().json("GET", LEASES)["items"]]
    assert [n for n in mine if not n.startswith("apiserver-")] == ["missing", "x"]

    # a stopped server's Node stays, still Ready until the node-monitor grace (40 s) has passed
    c.stop()
    node = a.client().json("GET", "/api/v1/nodes/server-2")
    assert node["status"]["conditions"][0]["status"] == "True"
    c.start()
    node = a.client().json("GET", "/api/v1/nodes/server-2")
    assert node["status"]["conditions"][0]["status"] == "True"
    assert [r["event"] for r in c.lifecycle()] == ["start", "ready", "stopping", "stopped", "start", "ready"]
