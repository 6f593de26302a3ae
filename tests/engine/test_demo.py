"""The README's first command: tests/demo rotates an emulated K3s server end to end, status between the steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_rotates_end_to_end_with_status_between_the_steps() -> None:
    env = {**os.environ, "K3SROTD_VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run([str(REPO / "tests" / "demo")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    phases = [ln.split()[1] for ln in out.splitlines() if ln.startswith("phase  ")]  # the status tables
    assert phases == ["idle", "published", "promoted", "idle"], out
    assert "a token minted before the rotation still verifies: True" in out
    assert "that old token, its key pruned, now verifies: False" in out
    assert "FAIL" not in out
    # quiet: rotate-ca's output (K3s's warnings about each file it skips) only at debug level or on failure
    both = (out + proc.stderr).splitlines()  # the steps log to stderr
    said = [ln for ln in both if "[rotate-ca]" in ln]
    assert len(said) == 3 and all("rotate-ca exited 0" in ln and "output=" not in ln for ln in said), said
    assert max(len(ln) for ln in both) < 600, max(both, key=len)
