"""`k3srotd doctor` on the emulator: one FAIL per root cause, SKIP for what did not run, a K3s in another mount
namespace is not this node's, the restart-command's unit, the K3s version floors, and the Key Manager check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k3srotd_node import Node


def lines(node: Node, **env: str) -> tuple[int, list[str]]:
    proc = node.k3srotd("doctor", env=env)
    return proc.returncode, proc.stdout.splitlines()


def line(found: list[str], subject: str) -> str:
    hits = [ln for ln in found if ln[6:].startswith(subject + ":")]
    assert len(hits) == 1, (subject, found)
    return hits[0]


def test_on_a_healthy_node_nothing_fails_and_nothing_unchecked_passes(node: Node) -> None:
    code, found = lines(node)
    assert code == 0, found
    assert all(ln[:4] in ("PASS", "WARN", "SKIP") for ln in found), found
    assert line(found, "K3s running").startswith("PASS  K3s running: pid ")
    assert line(found, "K3s version") == "PASS  K3s version: K3s v1.31.4"
    # the emulator's cluster has no Arc extensions: the API answers 404 for their group
    assert line(found, "other rotators").startswith("PASS")
    # no public issuer is configured: the check did not run, and says why
    assert line(found, "public issuer").startswith("SKIP  public issuer: not checked")


def test_no_k3s_is_one_fail_and_a_k3s_in_another_mount_namespace_is_not_ours(node: Node, tmp_path: Path) -> None:
    node.server.stop()
    # a `k3s server` of the same data dir path in its own mount namespace, as in a container
    fake = tmp_path / "bin" / "k3s"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    fake.chmod(0o755)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], check=False).returncode != 0:
        pytest.skip("needs unshare -m (util-linux, CAP_SYS_ADMIN)")
    other = subprocess.Popen(["unshare", "-m", str(fake), "server", "--data-dir", str(node.server.data_dir)])
    try:
        code, found = lines(node)
    finally:
        other.kill()
        other.wait()
    assert code == 1
    assert [ln for ln in found if ln.startswith("FAIL")] == [line(found, "K3s running")], found
    running = line(found, "K3s running")
    assert "runs in another mount namespace (a container)" in running and "start K3s" in running
    for subject in ("API", "other rotators", "public issuer", "legacy tokens"):
        assert line(found, subject).endswith("follows from the FAIL of `K3s running` above"), found


def test_a_k3s_bin_too_old_fails_with_the_releases_that_fix_it(node: Node) -> None:
    code, found = lines(node, K3SEMU_VERSION="v1.28.13+k3s1")
    assert code == 1
    assert line(found, "K3s version") == (
        "FAIL  K3s version: K3s v1.28.13 is too old: needs a release where rotate-ca accepts service.key alone on "
        "K3s's default CAs (K3s issue 10689): v1.28.14, v1.29.9, v1.30.5, v1.31.1 or later; upgrade K3s"
    )


def test_a_systemctl_restart_command_is_checked_for_its_unit(node: Node) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed here")
    node.write_config(restart_command=["systemctl", "restart", "k3srotd-test-no-such-unit"])
    code, found = lines(node)
    text = line(found, "restart-command")
    if os.path.isdir("/run/systemd/system"):  # booted with systemd: the unit is looked up
        assert code == 1 and text.startswith("FAIL") and "k3srotd-test-no-such-unit does not exist" in text
    else:  # no systemd as PID 1 (a container): the check cannot run here, and says why
        assert code == 0 and text.startswith("SKIP  restart-command: systemctl cannot answer here ("), text
