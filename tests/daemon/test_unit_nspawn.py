"""The shipped unit under a real systemd and journald (systemd-nspawn): the sandbox lets the daemon do its job.

The container (tests/nspawn/container.py: Debian 12, debootstrapped once and cached with every other container
test's, booted as a throwaway overlay) holds systemd/k3srotd.service byte for byte, with /usr/bin/k3srotd
running tests/daemon/sandbox_probe.py; a stand-in k3s.service (`k3s server` as a shell loop); K3s's files; a
hook. The probe tries everything the daemon needs inside the sandbox and logs each outcome to journald; here
journalctl reads them back. Needs root, debootstrap and systemd-nspawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from nspawn import container as nspawn

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "k3srotd.service"
MISSING = nspawn.missing_prerequisites()

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
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


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    stage = tmp_path_factory.mktemp("stage")
    (stage / "k3srotd.service").write_bytes(UNIT.read_bytes())
    (stage / "k3srotd").write_text('#!/bin/sh\nexec /usr/bin/python3 /src/tests/daemon/sandbox_probe.py "$@"\n')
    (stage / "k3s").write_text(K3S_STANDIN)
    (stage / "k3s.service").write_text(K3S_SERVICE)
    (stage / "hook").write_text(HOOK)
    with nspawn.Container(nspawn.rootfs(), binds_ro={str(REPO): "/src", str(stage): "/stage"}) as c:
        c.sh(SETUP)
        c.run("systemctl", "start", "k3srotd")  # Type=notify: returns once READY=1 arrived
        yield c


def show(c: nspawn.Container, unit: str, prop: str) -> str:
    return c.show(unit, prop)[prop]


def journal(c: nspawn.Container, **fields: str) -> List[Dict[str, Any]]:
    """k3srotd.service's journal (`journalctl -u k3srotd -o json --all`), entries whose fields equal `fields`."""
    return c.journal(unit="k3srotd", **fields)


def by_event(records: List[Dict[str, Any]], event: str) -> List[Dict[str, Any]]:
    return [r for r in records if r.get("K3SROTD_EVENT") == event]


def test_ready_with_status(container: nspawn.Container) -> None:
    assert show(container, "k3srotd", "ActiveState") == "active"
    assert show(container, "k3srotd", "StatusText") == "phase idle; next: rotate at 2030-01-05T02:00:00+00:00"
    [ready] = by_event(journal(container), "daemon.ready")
    assert ready["K3SROTD_BACKEND"] == "python-systemd"
    assert ready["K3SROTD_WATCHDOG_INTERVAL"] == "60.0"


def test_everything_the_daemon_needs_is_allowed_and_the_rest_denied(container: nspawn.Container) -> None:
    records = journal(container)
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
    prom = "/var/lib/node_exporter/textfile_collector/k3srotd.prom"
    assert container.run("stat", "-c", "%a", prom).stdout.strip() == "644"


def test_journal_fields_of_a_step_event(container: nspawn.Container) -> None:
    [rec] = journal(container, K3SROTD_EVENT="publish.done")
    assert rec["SYSLOG_IDENTIFIER"] == "k3srotd"
    assert rec["PRIORITY"] == "6"
    assert rec["MESSAGE"] == "published new key kidB as verify-only"
    assert rec["K3SROTD_SIGNER_KID"] == "kidA"
    assert rec["K3SROTD_KIDS"] == "kidA,kidB"
    assert rec["_SYSTEMD_UNIT"] == "k3srotd.service"


def test_a_record_larger_than_a_datagram_arrives_whole(container: nspawn.Container) -> None:
    [rec] = by_event(journal(container), "big.record")
    assert rec["K3SROTD_OUTPUT"] == "x" * (5 * 1024 * 1024)


def test_reload_then_stop(container: nspawn.Container) -> None:
    container.run("systemctl", "reload", "k3srotd")
    deadline = time.monotonic() + 10
    while not by_event(journal(container), "reload.done"):
        assert time.monotonic() < deadline, "no reload.done after systemctl reload"
        time.sleep(0.2)
    container.run("systemctl", "stop", "k3srotd")
    assert show(container, "k3srotd", "ActiveState") == "inactive"
    assert show(container, "k3srotd", "Result") == "success"
    assert by_event(journal(container), "daemon.stopped")
