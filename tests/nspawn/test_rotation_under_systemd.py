"""The installed .deb against the K3s emulator running as k3s.service, both under a real systemd and journald, on
Debian 12 and 13: doctor passes, rotate-now rotates through real `systemctl restart k3s`, the step events reach
the journal with their fields, the daemon (the packaged, hardened unit) reports READY and its phase, rotates on
its own once the operator opts in with `automatic: true` (and not before), and is killed and restarted by the
watchdog when it hangs."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from k3srotd import config
from nspawn import container
from nspawn.conftest import boot
from nspawn.packages import REPO, VERSION, Packages

EMULATOR = REPO / "tests/k3semu"
EMULATOR_MISSING = not ((EMULATOR / "bin/k3s").exists() and (EMULATOR / "k3s.service").exists())
DAEMON_MISSING = not (REPO / "k3srotd/daemon/service.py").exists()
# The opt-in for automatic steps (`automatic: true`, default false): where the config knows the key, the daemon
# must not rotate by itself before it is set.
AUTOMATIC = "automatic" in config.SCHEMA
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # systemd's MESSAGE_ID for "unit started"
STEP_EVENTS = ("publish.done", "promote.done", "prune.done", "rollback.done", "step.failed")

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.slow,
    pytest.mark.skipif(EMULATOR_MISSING, reason="the K3s emulator (tests/k3semu/bin/k3s, k3s.service) is missing"),
]
needs_daemon = pytest.mark.skipif(DAEMON_MISSING, reason="the daemon (k3srotd/daemon/service.py) is not written yet")


def free_port() -> int:
    """The container shares the host's loopback: the emulated K3s listens on a port free on the host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SETUP = """
ln -s /usr/local/lib/k3semu/k3semu/bin/k3s /usr/local/bin/k3s
install -m 0644 /usr/local/lib/k3semu/k3semu/k3s.service /etc/systemd/system/k3s.service
install -d -m 0755 /etc/rancher/k3s
printf 'https-listen-port: %s\\n' "$1" > /etc/rancher/k3s/config.yaml
chmod 0600 /etc/rancher/k3s/config.yaml
cat > /etc/k3srotd/config.yaml.d/50-test.yaml <<EOF
k3s-server-url: https://127.0.0.1:$1
publish-wait: 3s
EOF
systemctl daemon-reload
systemctl enable --now k3s
"""


@pytest.fixture(scope="module")
def node(debian_root: Path, packages: Packages) -> Iterator[container.Container]:
    """A K3s server node: the .deb installed with apt, the emulator as /usr/local/bin/k3s and k3s.service."""
    for c in boot(debian_root, packages, **{str(EMULATOR): "/usr/local/lib/k3semu/k3semu"}):
        c.run("apt-get", "install", "-y", f"/srv/dist/k3srotd_{VERSION}_all.deb", timeout=300)
        c.run("sh", "-ec", SETUP, "setup", str(free_port()), timeout=120)  # returns once k3s sent READY=1
        assert c.show("k3s", "ActiveState")["ActiveState"] == "active"
        # Manual commands first: the daemon stays stopped until the daemon tests start it.
        c.run("systemctl", "stop", "k3srotd")
        try:
            yield c
        finally:
            c.run("systemctl", "stop", "k3srotd", "k3s", check=False, timeout=120)


def status(c: container.Container) -> Dict[str, Any]:
    return dict(json.loads(c.run("k3srotd", "status", "--json").stdout))


def kids_of(st: Dict[str, Any]) -> list[str]:
    return [k["kid"] for k in st["keys"]]


def test_doctor_passes_on_the_node(node: container.Container) -> None:
    res = node.run("k3srotd", "doctor", check=False, timeout=120)
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines and all(line.startswith(("PASS", "WARN", "SKIP")) for line in lines), res.stdout
    assert any("K3s running" in line and line.startswith("PASS") for line in lines), res.stdout


@pytest.fixture(scope="module")
def rotation(node: container.Container) -> Dict[str, Any]:
    """One `k3srotd rotate-now` (staged: publish, wait, promote), with what was seen before and after."""
    before = status(node)
    k3s_before = node.show("k3s", "InvocationID")["InvocationID"]
    cursor = node.cursor()
    res = node.run("k3srotd", "--log-format", "journal", "rotate-now", check=False, timeout=600)
    return {"before": before, "after": status(node), "k3s_before": k3s_before, "cursor": cursor, "res": res}


def test_rotate_now_rotates_through_systemctl_restart_k3s(node: container.Container, rotation: Any) -> None:
    res = rotation["res"]
    assert res.returncode == 0, res.stdout + res.stderr
    before, after = rotation["before"], rotation["after"]
    old = before["signer_kid"]
    assert after["signer_kid"] != old
    assert kids_of(after) == [after["signer_kid"], old]
    assert [k["role"] for k in after["keys"]] == ["signer", "verify"]
    assert after["phase"] == "promoted"
    # K3s was restarted by systemd, once for publish and once for promote.
    assert node.show("k3s", "InvocationID")["InvocationID"] != rotation["k3s_before"]
    starts = node.journal(after=rotation["cursor"], MESSAGE_ID=UNIT_STARTED, UNIT="k3s.service")
    assert len(starts) >= 2, starts
    # The key file for rotate-ca is gone; the backups are private.
    assert not node.exists("/opt/k3s/server/tls/service.key")
    modes = node.run("sh", "-c", "stat -c %a /var/lib/k3srotd/backups/*").stdout.split()
    assert modes and set(modes) == {"600"}, modes


def test_journal_has_the_step_events_with_their_fields(node: container.Container, rotation: Any) -> None:
    old, new = rotation["before"]["signer_kid"], rotation["after"]["signer_kid"]
    records = node.journal(after=rotation["cursor"], SYSLOG_IDENTIFIER="k3srotd")
    steps = [r for r in records if r.get("K3SROTD_EVENT") in STEP_EVENTS]
    assert [r["K3SROTD_EVENT"] for r in steps] == ["publish.done", "promote.done"], steps
    publish, promote = steps
    assert publish["K3SROTD_SIGNER_KID"] == old and publish["K3SROTD_KIDS"] == f"{old},{new}"
    assert promote["K3SROTD_SIGNER_KID"] == new and promote["K3SROTD_KIDS"] == f"{new},{old}"
    for r in records:
        assert r.get("K3SROTD_EVENT") and r.get("PRIORITY") and r.get("MESSAGE"), r
        assert "PRIVATE KEY" not in json.dumps(r)


@needs_daemon
def test_daemon_reaches_ready_and_its_status_names_the_phase(node: container.Container, rotation: Any) -> None:
    node.run("systemctl", "restart", "k3srotd", timeout=300)  # Type=notify: returns once READY=1 arrived
    props = node.show("k3srotd", "ActiveState", "SubState", "StatusText", "Result")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    phase = status(node)["phase"]
    assert phase in props["StatusText"], (phase, props["StatusText"])


@needs_daemon
def test_daemon_rotates_by_itself_under_the_hardened_unit(node: container.Container, rotation: Any) -> None:
    """With a short rotation-interval the daemon itself publishes and promotes, once `automatic: true` is set
    (where the config has that key): rotate-ca and the restart of K3s work from inside the unit's sandbox."""
    before = status(node)
    node.write("/etc/k3srotd/config.yaml.d/60-fast.yaml", "rotation-interval: 20s\nmax-splay: 0s\n")
    try:
        if AUTOMATIC:
            not_before_the_opt_in(node, before)
            node.write("/etc/k3srotd/config.yaml.d/61-automatic.yaml", "automatic: true\n")
        cursor = node.cursor()
        node.run("systemctl", "restart", "k3srotd", timeout=300)

        def promoted() -> Any:
            return node.journal(after=cursor, SYSLOG_IDENTIFIER="k3srotd", K3SROTD_EVENT="promote.done")

        node.wait_for("the daemon's promote.done", promoted, timeout=150, every=1)
    finally:
        node.run("rm", "-f", "/etc/k3srotd/config.yaml.d/60-fast.yaml", "/etc/k3srotd/config.yaml.d/61-automatic.yaml")
        node.run("systemctl", "restart", "k3srotd", timeout=300)
    events = [
        r["K3SROTD_EVENT"]
        for r in node.journal(after=cursor, SYSLOG_IDENTIFIER="k3srotd")
        if r.get("K3SROTD_EVENT") in STEP_EVENTS
    ]
    assert events[:2] == ["publish.done", "promote.done"], events
    from_unit = node.journal(after=cursor, _SYSTEMD_UNIT="k3srotd.service", K3SROTD_EVENT="promote.done")
    assert from_unit, "promote.done did not come from k3srotd.service"
    assert status(node)["signer_kid"] != before["signer_kid"]


def not_before_the_opt_in(node: container.Container, before: Dict[str, Any]) -> None:
    """A rotation is due (the signer is older than rotation-interval), yet without `automatic: true` the daemon
    changes nothing and its status line says how to opt in."""
    cursor = node.cursor()
    node.run("systemctl", "restart", "k3srotd", timeout=300)
    node.run("sleep", "25")  # past the due time, several looks of the daemon
    props = node.show("k3srotd", "ActiveState", "StatusText")
    assert props["ActiveState"] == "active" and "automatic" in props["StatusText"], props
    steps = [r for r in node.journal(after=cursor, SYSLOG_IDENTIFIER="k3srotd") if r.get("K3SROTD_EVENT")]
    assert not [r["K3SROTD_EVENT"] for r in steps if r["K3SROTD_EVENT"].split(".")[0] in ("publish", "rotate")]
    assert status(node)["signer_kid"] == before["signer_kid"]
    assert node.journal(after=cursor, MESSAGE_ID=UNIT_STARTED, UNIT="k3s.service") == []  # K3s not restarted


@needs_daemon
def test_watchdog_kills_and_restarts_a_stopped_daemon(node: container.Container, rotation: Any) -> None:
    """The packaged unit's WatchdogSec, shortened by a drop-in so that the test takes seconds, not minutes."""
    node.write(
        "/etc/systemd/system/k3srotd.service.d/50-test-watchdog.conf", "[Service]\nWatchdogSec=4s\nRestartSec=1s\n"
    )
    node.run("systemctl", "daemon-reload")
    try:
        node.run("systemctl", "restart", "k3srotd", timeout=300)
        pid = node.show("k3srotd", "MainPID")["MainPID"]
        restarts = int(node.show("k3srotd", "NRestarts")["NRestarts"])
        # Alive and pinging: after three watchdog periods it is the same process.
        node.run("sleep", "12")
        assert node.show("k3srotd", "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}
        cursor = node.cursor()
        node.run("kill", "-STOP", pid)

        def restarted() -> Any:
            props = node.show("k3srotd", "MainPID", "ActiveState", "NRestarts")
            return props["ActiveState"] == "active" and props["MainPID"] not in (pid, "0") and props

        props = node.wait_for("a new k3srotd after the watchdog fired", restarted, timeout=60, every=0.5)
        assert int(props["NRestarts"]) > restarts
        messages = [r.get("MESSAGE", "") for r in node.journal(after=cursor, UNIT="k3srotd.service")]
        assert any("Watchdog timeout" in m for m in messages), messages
    finally:
        node.run("rm", "-f", "/etc/systemd/system/k3srotd.service.d/50-test-watchdog.conf")
        node.run("systemctl", "daemon-reload")
