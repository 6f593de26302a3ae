#!/usr/bin/python3
"""Stands in for `k3srotd run` under the shipped unit, in a container with a real systemd and journald.

It does, inside the unit's sandbox, each thing the daemon needs to do, and logs the outcome of each as a
journald record (K3SROTD_EVENT=probe.ok / probe.failed, K3SROTD_WHAT=...) through k3srotd's own modules;
tests/daemon/test_unit_nspawn.py reads them back with journalctl. Then it is a Type=notify daemon: READY=1,
STATUS=, WATCHDOG=1 pings, SIGHUP reloads, SIGTERM stops. The repository is at $K3SROTD_SRC (read-only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, os.environ.get("K3SROTD_SRC", "/src"))

from k3srotd.output import hooks, logs, metrics, notify

log = logs.configure("auto")
notifier = notify.Notifier.from_env()


def probe(what: str, action: Callable[[], Any], expect_denied: bool = False) -> None:
    try:
        detail = action()
    except OSError as e:
        if expect_denied:
            log.info("probe.ok", msg=f"{what}: denied as it should be ({e.strerror})", what=what)
        else:
            log.error("probe.failed", msg=f"{what}: {e}", what=what)
        return
    if expect_denied:
        log.error("probe.failed", msg=f"{what}: was allowed", what=what)
    else:
        log.info("probe.ok", msg=f"{what}: {detail}", what=what)


def write(path: str) -> Callable[[], str]:
    def act() -> str:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("probe\n")
        p.unlink()
        return "written"

    return act


def restart_k3s() -> str:
    def main_pid() -> str:
        out = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "--value", "k3s"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    before = main_pid()
    res = subprocess.run(
        ["systemctl", "restart", "k3s"], capture_output=True, text=True, env=notify.child_environ(), timeout=60
    )
    if res.returncode != 0:
        raise OSError(res.returncode, f"systemctl restart k3s: {res.stderr.strip()}")
    after = main_pid()
    if after in ("0", before):
        raise OSError(0, f"k3s MainPID {before} -> {after}")
    return f"k3s MainPID {before} -> {after}"


def find_k3s_server() -> str:
    from k3srotd.node.k3s import server_processes

    found = server_processes("k3s")
    if not found:
        raise OSError(0, "no `k3s server` process found")
    return f"{len(found)} k3s server process(es), create_time {found[0][0]}"


def run_hooks() -> str:
    results = hooks.run_hooks(
        Path("/etc/k3srotd/hooks.d"), "publish.done", "kidA", ["kidA", "kidB"], "published", 10, log
    )
    if [r.ok for r in results] != [True]:
        raise OSError(0, f"hooks: {results}")
    return results[0].output.strip()


def write_metrics() -> str:
    snap = metrics.MetricsSnapshot(phase="idle", keys={"signer": 1, "verify": 0})
    metrics.write_metrics("/var/lib/node_exporter/textfile_collector/k3srotd.prom", snap)
    return "metrics written"


def main() -> int:
    probe("state-dir", write("/var/lib/k3srotd/probe"))
    probe("state-dir mode", lambda: oct(os.stat("/var/lib/k3srotd").st_mode & 0o777))
    probe("staging-dir", write("/opt/k3s/server/tls/probe"))
    probe("metrics", write_metrics)
    probe("read live key", lambda: f"{len(Path('/var/lib/rancher/k3s/server/tls/service.key').read_bytes())} bytes")
    probe("read k3s config", lambda: Path("/etc/rancher/k3s/config.yaml").read_text().strip())
    probe("write k3s data dir", write("/var/lib/rancher/k3s/probe"), expect_denied=True)
    probe("write /etc", write("/etc/k3srotd/probe"), expect_denied=True)
    probe("write /usr", write("/usr/local/bin/probe"), expect_denied=True)
    probe("read /root", lambda: os.listdir("/root"), expect_denied=True)
    probe("find k3s server", find_k3s_server)
    probe("restart k3s", restart_k3s)
    probe("hooks", run_hooks)
    log.info("publish.done", msg="published new key kidB as verify-only", signer_kid="kidA", kids=["kidA", "kidB"])
    log.info("big.record", msg="a record larger than a datagram", output="x" * (5 * 1024 * 1024))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: log.info("reload.done", msg="config reloaded"))
    interval = notify.watchdog_interval() or 30.0
    notifier.ready("phase idle; next: rotate at 2030-01-05T02:00:00+00:00")
    log.info("daemon.ready", msg="ready", backend=notifier.backend, watchdog_interval=interval)
    while not stop.wait(interval):
        notifier.watchdog()
    notifier.stopping("stopping")
    log.info("daemon.stopped", msg="stopped on SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
