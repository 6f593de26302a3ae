"""The systemd unit: `systemd-analyze verify` with empty stderr, and a security exposure of at most 4.0.

verify fails when ExecStart's binary does not exist, and /usr/bin/k3srotd exists only once the package is
installed; so both checks run on a copy in a temporary folder whose ExecStart names a stand-in script
there. Only that one path differs from the shipped file (asserted below).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "k3srotd.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt package systemd)")
SHIPPED_EXEC = "ExecStart=/usr/bin/k3srotd run"


def checkable_copy(folder: Path, text: str | None = None) -> Path:
    stand_in = folder / "bin" / "k3srotd"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    original = UNIT.read_text() if text is None else text
    assert original.count(SHIPPED_EXEC + "\n") == 1
    copy = folder / "k3srotd.service"
    copy.write_text(original.replace(SHIPPED_EXEC, f"ExecStart={stand_in} run"))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


def test_verify_passes_with_empty_stderr(tmp_path: Path) -> None:
    copy = checkable_copy(tmp_path)
    res = analyze("verify", "--man=no", str(copy))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_verify_check_catches_a_typo(tmp_path: Path) -> None:
    """The empty-stderr rule is what catches typos: verify only warns about them, with exit 0."""
    copy = checkable_copy(tmp_path, UNIT.read_text().replace("Type=notify\n", "Type=notfy\n"))
    res = analyze("verify", "--man=no", str(copy))
    assert "notfy" in res.stderr


def test_security_exposure_at_most_4_0(tmp_path: Path) -> None:
    copy = checkable_copy(tmp_path)
    # --threshold is in tenths: 40 means an overall exposure of 4.0; above it the exit status is 1.
    res = analyze("security", "--offline=true", "--threshold=40", str(copy))
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"Overall exposure level for k3srotd\.service: (\d+\.\d)", res.stdout)
    assert m is not None, res.stdout
    assert float(m.group(1)) <= 4.0


def test_every_setting_has_a_comment() -> None:
    """Each setting sits in a block of settings that opens with a comment saying why."""
    block_has_comment = False
    for number, line in enumerate(UNIT.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("["):
            block_has_comment = False
        elif stripped.startswith("#"):
            block_has_comment = True
        elif stripped.split("=", 1)[0] not in ("Description", "WantedBy"):
            assert block_has_comment, f"line {number} has no comment above it: {line}"


def test_the_contract_settings() -> None:
    text = UNIT.read_text()
    for setting in (
        "Type=notify",
        "NotifyAccess=main",
        SHIPPED_EXEC,
        "Restart=on-failure",
        "StateDirectory=k3srotd",
        "StateDirectoryMode=0700",
        "ReadWritePaths=-/opt/k3s",
        "ExecStartPre=+/bin/mkdir -p -m 0700 /opt/k3s",
        "ReadWritePaths=-/var/lib/node_exporter/textfile_collector",
        "TimeoutStopSec=15min",
    ):
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), setting
    assert re.search(r"^WatchdogSec=\S+$", text, re.M)
    assert not re.search(r"^PrivateUsers=", text, re.M), "systemctl restart k3s needs the real root"
