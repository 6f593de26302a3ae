"""tests/k3semu/k3s.service under a real systemd (systemd-nspawn): Type=notify start, a rotation with
`systemctl restart k3s`, and a crash at start that Restart=always recovers from.

The container is tests/nspawn/container.py's: Debian 12 with Debian's own python3-cryptography and python3-yaml,
debootstrapped once and cached with every other container test's, booted as a throwaway overlay. It shares the
host's network, so the server's port (from its config.yaml) is chosen free on the host and reached from here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from k3semu.client import KubeClient
from k3semu.harness import free_port, kid_of
from k3semu.keys import marshal_private_key, new_rsa_key
from nspawn import container as nspawn

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tests" / "k3semu" / "k3s.service"
MISSING = nspawn.missing_prerequisites()

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]

SETUP = """set -eu
ln -sf /src/tests/k3semu/bin/k3s /usr/local/bin/k3s
install -m 0644 /stage/k3s.service /etc/systemd/system/k3s.service
install -d -m 0755 /etc/rancher/k3s
install -m 0600 /stage/config.yaml /etc/rancher/k3s/config.yaml
systemctl daemon-reload
systemctl start k3s
"""

Box = Tuple[nspawn.Container, Path, int]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    stage = tmp_path_factory.mktemp("k3s-unit")
    port = free_port()
    (stage / "k3s.service").write_bytes(UNIT.read_bytes())
    (stage / "config.yaml").write_text(f"https-listen-port: {port}\n")
    with nspawn.Container(nspawn.rootfs(), binds_ro={str(REPO): "/src", str(stage): "/stage"}) as c:
        c.sh(SETUP)  # Type=notify: `systemctl start` returns once READY=1 arrived
        try:
            yield c, stage, port
        finally:
            c.run("systemctl", "stop", "k3s", check=False, timeout=60)


def show(c: nspawn.Container, prop: str) -> str:
    return c.show("k3s", prop)[prop]


def client(c: nspawn.Container, stage: Path) -> KubeClient:
    (stage / "k3s.yaml").write_text(c.read("/etc/rancher/k3s/k3s.yaml"))
    return KubeClient(str(stage / "k3s.yaml"))


def test_started_as_notify_unit(box: Box) -> None:
    c, stage, _ = box
    assert show(c, "ActiveState") == "active"
    assert show(c, "StatusText") == "k3s is up and running"
    pid = show(c, "MainPID")
    argv = c.read(f"/proc/{pid}/cmdline").split("\0")
    assert argv[1:3] == ["/usr/local/bin/k3s", "server"]
    assert client(c, stage).ready()
    assert c.run("stat", "-c", "%a", "/var/lib/rancher/k3s/server/tls/service.key").stdout.strip() == "600"


def test_rotation_with_systemctl_restart(box: Box) -> None:
    c, stage, port = box
    new = new_rsa_key()
    (stage / "new.key").write_bytes(marshal_private_key(new))
    old_kids = [k["kid"] for k in client(c, stage).json("GET", "/openid/v1/jwks")["keys"]]
    c.sh(
        "install -d -m 0700 /opt/k3s/server/tls && cat /stage/new.key /var/lib/rancher/k3s/server/tls/service.key"
        " > /opt/k3s/server/tls/service.key"
    )
    out = c.run(
        "k3s", "certificate", "rotate-ca", "--path=/opt/k3s/server", env={"K3S_URL": f"https://127.0.0.1:{port}"}
    )
    assert "certificates saved to datastore" in out.stdout
    c.run("systemctl", "restart", "k3s")
    kids = [k["kid"] for k in client(c, stage).json("GET", "/openid/v1/jwks")["keys"]]
    assert kids == [kid_of(new.public_key()), *old_kids]


def test_crash_at_start_is_restarted_by_systemd(box: Box) -> None:
    c, stage, _ = box
    c.write("/var/lib/rancher/k3s/emulator/faults.json", '{"crash_at_start": {"times": 1}}\n')
    restarts = int(show(c, "NRestarts"))
    assert c.run("systemctl", "restart", "k3s", check=False).returncode != 0
    deadline = time.monotonic() + 30
    while show(c, "ActiveState") != "active":
        assert time.monotonic() < deadline, c.sh("journalctl -u k3s --no-pager | tail -5").stdout
        time.sleep(0.5)
    assert int(show(c, "NRestarts")) > restarts
    messages = [e.get("MESSAGE", "") for e in c.journal(unit="k3s")]
    assert any("level=fatal" in m and "crash_at_start" in m for m in messages)
    assert client(c, stage).ready()
