"""The Lease watch, on the emulated kube-apiserver: changes arrive within a second, a stream ends after
timeoutSeconds, a resourceVersion from before the apiserver started is answered 410 (Expired), and the daemon's
Watcher wakes on every change of the step Lease."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from clusternode import Cluster

from k3srotd.cluster import watch
from k3srotd.cluster.leases import LEASES
from k3srotd.node.kubeapi import KubeAPI


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeAPI]:
    c = Cluster(tmp_path, n=1).start()
    try:
        srv = c[0].server
        yield KubeAPI(str(srv.kubeconfig), srv.url)
    finally:
        c.stop()


def _lease(name: str, holder: str) -> dict:  # type: ignore[type-arg]
    spec = {"holderIdentity": holder, "leaseDurationSeconds": 10}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec}


def test_a_change_arrives_within_a_second_and_the_stream_ends_after_its_timeout(api: KubeAPI) -> None:
    rv = watch._list_version(api, "k3srotd-step")
    got: list[tuple[str, float]] = []
    start = time.monotonic()

    def write() -> None:
        time.sleep(1.0)
        api.call("POST", LEASES, _lease("k3srotd-other", "x"))  # another Lease: not this watch's
        api.call("POST", LEASES, _lease("k3srotd-step", "server-0"))
        got.append(("written", time.monotonic()))

    threading.Thread(target=write).start()
    seen = [(kind, obj, time.monotonic()) for kind, obj in watch.events(api, "k3srotd-step", rv, timeout=4)]
    ended = time.monotonic() - start
    changes = [(k, o, t) for k, o, t in seen if k]
    assert [(k, o["metadata"]["name"]) for k, o, _ in changes] == [("ADDED", "k3srotd-step")]
    assert changes[0][2] - got[0][1] < 1.0
    assert 3.5 < ended < 8, ended


def test_a_resource_version_older_than_the_apiserver_is_expired(api: KubeAPI) -> None:
    with pytest.raises(watch.Expired, match="too old resource version"):
        list(watch.events(api, "k3srotd-step", "1", timeout=2))


def test_the_watcher_wakes_at_each_change_of_the_step_lease_only(api: KubeAPI) -> None:
    woken: list[float] = []
    w = watch.Watcher(lambda: api, ("k3srotd-step",), lambda: woken.append(time.monotonic()))
    w.start()
    try:
        deadline = time.monotonic() + 10
        while not w.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.healthy
        api.call("POST", LEASES, _lease("k3srotd-node-x", "x"))
        time.sleep(1.0)
        assert woken == []
        t = time.monotonic()
        api.call("POST", LEASES, _lease("k3srotd-step", "server-0"))
        while not woken and time.monotonic() < t + 5:
            time.sleep(0.05)
        assert woken and woken[0] - t < 1.0
    finally:
        w.stop()
