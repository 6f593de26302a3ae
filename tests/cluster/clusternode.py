"""Test support for multi-server clusters: three (or n) emulated K3s servers sharing one datastore, each with its
own k3srotd config, state-dir, staging-dir, node-name and restart-command, driven through the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

from k3semu.harness import EmulatedCluster, EmulatedServer, subprocess_env
from k3srotd_node import K3SROTD, Node

LEASE_SECONDS = 8  # K3SROTD_TEST_LEASE_SECONDS: longer than a restart and its verification here (~2 s)


class ClusterNode(Node):
    """One server of the cluster and its k3srotd; `start_daemon()` runs `k3srotd run` with its log in a file."""

    def __init__(self, root: Path, server: EmulatedServer, name: str) -> None:
        super().__init__(root, server)
        self.name = name
        self.daemon: Optional[subprocess.Popen] = None
        self.daemon_log = root / "daemon.log"
        self.extra_env: dict[str, str] = {}  # K3SEMU_VERSION: the restart-command k3srotd runs starts K3s with it
        self.write_config(node_name=name, max_splay="0s")

    def env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        return {"K3SROTD_TEST_LEASE_SECONDS": str(LEASE_SECONDS), **self.extra_env, **(extra or {})}

    def k3srotd(
        self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return super().k3srotd(*args, env=self.env(env), timeout=timeout)

    def start_bg(self, *args: str, log: Optional[Path] = None) -> subprocess.Popen:
        e = subprocess_env(self.env())
        for k in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET"):
            e.pop(k, None)
        out = open(log or self.daemon_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(
                [*K3SROTD, "--config", str(self.config), *args],
                env=e,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            out.close()

    def start_daemon(self) -> None:
        assert self.daemon is None or self.daemon.poll() is not None
        self.daemon = self.start_bg("run")

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.kill(self.daemon.pid, sig)
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait(timeout=10)
        self.daemon = None

    def daemon_events(self) -> list[dict[str, Any]]:
        try:
            text = self.daemon_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line cut short by a kill
                    out.append(json.loads(line))
        return out


class Cluster:
    def __init__(
        self, root: Path, n: int = 3, join: Optional[str] = None, version: Optional[str] = None, agent: bool = True
    ) -> None:
        # kube-controller-manager's node-monitor grace (40 s) and the kubelet's node lease, shortened with the real
        # flags so that a stopped server's Node turns Unknown within seconds, as it would after 40 s
        grace = [
            "--kube-controller-manager-arg=node-monitor-grace-period=2s",
            "--kubelet-arg=node-lease-duration-seconds=2",
        ]
        if not agent:  # servers without a Node (K3s registers one only for a server that runs an agent)
            grace.append("--disable-agent")
        self.emu = EmulatedCluster(n, root / "k3s", extra_args=grace, join=join, version=version)
        self.nodes = [
            ClusterNode(root / f"node-{i}", srv, str(srv.node_name)) for i, srv in enumerate(self.emu.servers)
        ]
        for n in self.nodes:  # a K3s restarted by k3srotd keeps its version
            n.extra_env = {"K3SEMU_VERSION": version} if version else {}

    def start(self) -> Cluster:
        self.emu.start()
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop_daemon()
        for srv in self.emu.servers:
            srv.stop()

    def __getitem__(self, i: int) -> ClusterNode:
        return self.nodes[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.nodes)

    def leases(self) -> dict[str, Any]:
        return dict(self.emu[0].objects()["leases"])

    def annotations(self, lease: str) -> dict[str, str]:
        obj = self.leases().get(f"kube-system/{lease}") or {}
        return dict(obj.get("metadata", {}).get("annotations", {}))


def downtimes(server: EmulatedServer) -> list[tuple[float, float, int]]:
    """(down from, up again, pid of the new process) for every restart in the server's own lifecycle records:
    from the old process's `stopping` to the new process's `ready`."""
    out = []
    stopping: Optional[float] = None
    for rec in server.lifecycle():
        if rec["event"] == "stopping":
            stopping = rec["t"]
        elif rec["event"] == "ready" and stopping is not None:
            out.append((stopping, rec["t"], rec["pid"]))
            stopping = None
    return out


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
