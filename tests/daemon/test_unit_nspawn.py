"""The shipped unit under a real systemd and journald (systemd-nspawn): the sandbox lets the daemon do its job.

A Debian 12 root file system (debootstrap, about a minute, cached in $K3SROTD_NSPAWN_CACHE, default
/var/tmp/k3srotd-nspawn) boots as an ephemeral container. In it: systemd/k3srotd.service byte for byte, with
/usr/bin/k3srotd running tests/daemon/sandbox_probe.py; a stand-in k3s.service (`k3s server` as a shell
loop); K3s's files; a hook. The probe tries everything the daemon needs inside the sandbox and logs each outcome
to journald; here journalctl reads them back. Needs root, debootstrap and systemd-nspawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "k3srotd.service"
CACHE = Path(os.environ.get("K3SROTD_NSPAWN_CACHE", "/var/tmp/k3srotd-nspawn"))
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-systemd",
    "python3-psutil",
    "python3-structlog",
    "python3-yaml",
    "python3-click",
    "python3-cffi-backend",
]
MIRROR = os.environ.get("K3SROTD_DEBIAN_MIRROR", "http://deb.debian.org/debian")

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root"),
    pytest.mark.skipif(
        not (shutil.which("debootstrap") and shutil.which("systemd-nspawn") and shutil.which("nsenter")),
        reason="needs debootstrap and systemd-nspawn (apt packages debootstrap, systemd-container)",
    ),
]

K3S_STANDIN = """#!/bin/sh
# Stands in for the k3s binary: `k3s server` runs until stopped.
trap 'exit 0' TERM
while :; do sleep 1; done
"""
K3S_SERVICE = """[Unit]
Description=K3s stand-in
[Service]
ExecStart=/usr/local/bin/k3s server
"""
HOOK = """#!/bin/sh
echo "hook saw $K3SROTD_EVENT $K3SROTD_SIGNER_KID $K3SROTD_KIDS $K3SROTD_PHASE"
echo ran > /tmp/hook-ran
"""
SETUP = """set -eu
install -d -m 0700 /var/lib/rancher/k3s/server/tls
head -c 1679 /dev/urandom > /var/lib/rancher/k3s/server/tls/service.key
chmod 0600 /var/lib/rancher/k3s/server/tls/service.key
install -d -m 0755 /etc/rancher/k3s /etc/k3srotd/hooks.d /var/lib/node_exporter/textfile_collector
echo "write-kubeconfig-mode: '0600'" > /etc/rancher/k3s/config.yaml
install -m 0755 /stage/k3s /usr/local/bin/k3s
install -m 0644 /stage/k3s.service /etc/systemd/system/k3s.service
install -m 0644 /stage/k3srotd.service /etc/systemd/system/k3srotd.service
install -m 0755 /stage/k3srotd /usr/bin/k3srotd
install -m 0755 /stage/hook /etc/k3srotd/hooks.d/10-probe
systemctl daemon-reload
systemctl start k3s
"""


def rootfs() -> Path:
    """The cached Debian root file system, built once."""
    key = "bookworm-daemon-" + hashlib.sha256(",".join(PACKAGES).encode()).hexdigest()[:12]
    root = CACHE / key
    if (root / "usr" / "bin" / "python3").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f".{key}.{uuid.uuid4().hex[:8]}"
    res = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), "bookworm", str(build), MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        pytest.skip(f"debootstrap failed (no mirror reachable?): {res.stdout[-300:]}{res.stderr[-300:]}")
    build.rename(root)
    return root


class Container:
    def __init__(self, root: Path, stage: Path, log: Path) -> None:
        self.name = f"k3srotd-{uuid.uuid4().hex[:8]}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-b",
                    "-D",
                    str(root),
                    "-M",
                    self.name,
                    "--register=no",
                    "--keep-unit",
                    "--console=pipe",
                    "--ephemeral",
                    f"--bind-ro={REPO}:/src",
                    f"--bind-ro={stage}:/stage",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.leader = self._find_leader()
        self._wait_running()

    def _find_leader(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            res = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True)
            if res.stdout.strip():
                return int(res.stdout.split()[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the container did not boot: {self.log.read_text()[-2000:]}")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the container's systemd is {state!r}")

    def sh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{command}: exit {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        out = self.sh("journalctl --no-pager -o json --all -u k3srotd " + " ".join(matches)).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root = rootfs()
    stage = tmp_path_factory.mktemp("stage")
    (stage / "k3srotd.service").write_bytes(UNIT.read_bytes())
    (stage / "k3srotd").write_text('#!/bin/sh\nexec /usr/bin/python3 /src/tests/daemon/sandbox_probe.py "$@"\n')
    (stage / "k3s").write_text(K3S_STANDIN)
    (stage / "k3s.service").write_text(K3S_SERVICE)
    (stage / "hook").write_text(HOOK)
    (stage / "setup.sh").write_text(SETUP)
    c = Container(root, stage, stage / "nspawn.log")
    try:
        c.sh("sh /stage/setup.sh")
        c.sh("systemctl start k3srotd", timeout=120)  # Type=notify: returns once READY=1 arrived
        yield c
    finally:
        c.stop()


def by_event(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("K3SROTD_EVENT") == event]


def test_ready_with_status(container: Container) -> None:
    assert container.show("k3srotd", "ActiveState") == "active"
    assert container.show("k3srotd", "StatusText") == "phase idle; next: rotate at 2030-01-05T02:00:00+00:00"
    [ready] = by_event(container.journal(), "daemon.ready")
    assert ready["K3SROTD_BACKEND"] == "python-systemd"
    assert ready["K3SROTD_WATCHDOG_INTERVAL"] == "60.0"


def test_everything_the_daemon_needs_is_allowed_and_the_rest_denied(container: Container) -> None:
    records = container.journal()
    failed = {r["K3SROTD_WHAT"]: r["MESSAGE"] for r in by_event(records, "probe.failed")}
    assert failed == {}
    ok = {r["K3SROTD_WHAT"]: r["MESSAGE"] for r in by_event(records, "probe.ok")}
    assert set(ok) == {
        "state-dir",
        "state-dir mode",
        "staging-dir",
        "metrics",
        "read live key",
        "read k3s config",
        "write k3s data dir",
        "write /etc",
        "write /usr",
        "read /root",
        "find k3s server",
        "restart k3s",
        "hooks",
    }
    assert ok["state-dir mode"] == "state-dir mode: 0o700"
    assert "hook saw publish.done kidA kidA,kidB published" in ok["hooks"]
    assert container.sh("stat -c %a /var/lib/node_exporter/textfile_collector/k3srotd.prom").stdout.strip() == "644"


def test_journal_fields_of_a_step_event(container: Container) -> None:
    [rec] = container.journal("K3SROTD_EVENT=publish.done")
    assert rec["SYSLOG_IDENTIFIER"] == "k3srotd"
    assert rec["PRIORITY"] == "6"
    assert rec["MESSAGE"] == "published new key kidB as verify-only"
    assert rec["K3SROTD_SIGNER_KID"] == "kidA"
    assert rec["K3SROTD_KIDS"] == "kidA,kidB"
    assert rec["_SYSTEMD_UNIT"] == "k3srotd.service"


def test_a_record_larger_than_a_datagram_arrives_whole(container: Container) -> None:
    [rec] = by_event(container.journal(), "big.record")
    assert rec["K3SROTD_OUTPUT"] == "x" * (5 * 1024 * 1024)


def test_reload_then_stop(container: Container) -> None:
    container.sh("systemctl reload k3srotd")
    deadline = time.monotonic() + 10
    while not by_event(container.journal(), "reload.done"):
        assert time.monotonic() < deadline, "no reload.done after systemctl reload"
        time.sleep(0.2)
    container.sh("systemctl stop k3srotd")
    assert container.show("k3srotd", "ActiveState") == "inactive"
    assert container.show("k3srotd", "Result") == "success"
    assert by_event(container.journal(), "daemon.stopped")
