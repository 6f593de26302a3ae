"""tests/k3semu/k3s.service under a real systemd (systemd-nspawn): Type=notify start, a rotation with
`systemctl restart k3s`, and a crash at start that Restart=always recovers from.

A Debian 12 root file system with Debian's python3-cryptography and python3-yaml is built once with debootstrap
(about a minute) and cached in $K3SEMU_NSPAWN_CACHE (default /var/tmp/k3semu-nspawn). The container shares the
host's network, so the server's port (from its config.yaml) is chosen free on the host and reached from here."""

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
from typing import Iterator

import pytest
from k3semu.client import KubeClient
from k3semu.harness import free_port, kid_of
from k3semu.keys import marshal_private_key, new_rsa_key

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "k3semu" / "k3s.service"
CACHE = Path(os.environ.get("K3SEMU_NSPAWN_CACHE", "/var/tmp/k3semu-nspawn"))
MIRROR = os.environ.get("K3SROTD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "python3",
    "python3-cryptography",
    "python3-yaml",
    "python3-cffi-backend",
]

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root"),
    pytest.mark.skipif(
        not (shutil.which("debootstrap") and shutil.which("systemd-nspawn") and shutil.which("nsenter")),
        reason="needs debootstrap and systemd-nspawn (apt packages debootstrap, systemd-container)",
    ),
]


def rootfs() -> Path:
    key = "bookworm-k3semu-" + hashlib.sha256(",".join(PACKAGES).encode()).hexdigest()[:12]
    root = CACHE / key
    if (root / "usr" / "lib" / "python3" / "dist-packages" / "cryptography").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f".{key}.{uuid.uuid4().hex[:8]}"
    res = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), "bookworm", str(build), MIRROR],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        pytest.skip(f"debootstrap failed (no mirror reachable?): {res.stdout[-300:]}{res.stderr[-300:]}")
    build.rename(root)
    return root


class Container:
    def __init__(self, root: Path, stage: Path) -> None:
        self.log = stage / "nspawn.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-b",
                    "-D",
                    str(root),
                    "-M",
                    f"k3semu-{uuid.uuid4().hex[:8]}",
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
        self.leader = self._leader()
        deadline = time.monotonic() + 60
        while self.sh("systemctl is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, "the container's systemd did not come up"
            time.sleep(0.2)

    def _leader(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            res = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True, check=False
            )
            if res.stdout.strip():
                return int(res.stdout.split()[0])
            time.sleep(0.1)
        raise AssertionError(f"the container did not boot: {self.log.read_text()[-2000:]}")

    def sh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{command}: exit {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value k3s").stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


SETUP = """set -eu
ln -sf /src/tests/k3semu/bin/k3s /usr/local/bin/k3s
install -m 0644 /stage/k3s.service /etc/systemd/system/k3s.service
install -d -m 0755 /etc/rancher/k3s
install -m 0600 /stage/config.yaml /etc/rancher/k3s/config.yaml
systemctl daemon-reload
systemctl start k3s
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    root = rootfs()
    stage = tmp_path_factory.mktemp("k3s-unit")
    port = free_port()
    (stage / "k3s.service").write_bytes(UNIT.read_bytes())
    (stage / "config.yaml").write_text(f"https-listen-port: {port}\n")
    (stage / "setup.sh").write_text(SETUP)
    c = Container(root, stage)
    try:
        c.sh("sh /stage/setup.sh")  # Type=notify: `systemctl start` returns once READY=1 arrived
        yield c, stage, port
    finally:
        c.sh("systemctl stop k3s", check=False, timeout=60)
        c.stop()


def client(c: Container, stage: Path) -> KubeClient:
    (stage / "k3s.yaml").write_text(c.sh("cat /etc/rancher/k3s/k3s.yaml").stdout)
    return KubeClient(str(stage / "k3s.yaml"))


def test_started_as_notify_unit(box: tuple) -> None:
    c, stage, _ = box
    assert c.show("ActiveState") == "active"
    assert c.show("StatusText") == "k3s is up and running"
    pid = c.show("MainPID")
    argv = c.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout.split()
    assert argv[1:3] == ["/usr/local/bin/k3s", "server"]
    assert client(c, stage).ready()
    assert c.sh("stat -c %a /var/lib/rancher/k3s/server/tls/service.key").stdout.strip() == "600"


def test_rotation_with_systemctl_restart(box: tuple) -> None:
    c, stage, port = box
    new = new_rsa_key()
    (stage / "new.key").write_bytes(marshal_private_key(new))
    old_kids = [k["kid"] for k in client(c, stage).json("GET", "/openid/v1/jwks")["keys"]]
    c.sh(
        "install -d -m 0700 /opt/k3s/server/tls && cat /stage/new.key /var/lib/rancher/k3s/server/tls/service.key"
        " > /opt/k3s/server/tls/service.key"
    )
    out = c.sh(f"K3S_URL=https://127.0.0.1:{port} k3s certificate rotate-ca --path=/opt/k3s/server").stdout
    assert "certificates saved to datastore" in out
    c.sh("systemctl restart k3s")
    kids = [k["kid"] for k in client(c, stage).json("GET", "/openid/v1/jwks")["keys"]]
    assert kids == [kid_of(new.public_key()), *old_kids]


def test_crash_at_start_is_restarted_by_systemd(box: tuple) -> None:
    c, stage, _ = box
    c.sh('echo \'{"crash_at_start": {"times": 1}}\' > /var/lib/rancher/k3s/emulator/faults.json')
    restarts = int(c.show("NRestarts"))
    assert c.sh("systemctl restart k3s", check=False).returncode != 0
    deadline = time.monotonic() + 30
    while c.show("ActiveState") != "active":
        assert time.monotonic() < deadline, c.sh("journalctl -u k3s --no-pager | tail -5").stdout
        time.sleep(0.5)
    assert int(c.show("NRestarts")) > restarts
    journal = c.sh("journalctl -u k3s --no-pager -o json").stdout
    messages = [json.loads(line).get("MESSAGE", "") for line in journal.splitlines() if line.strip()]
    assert any("level=fatal" in m and "crash_at_start" in m for m in messages)
    assert client(c, stage).ready()
