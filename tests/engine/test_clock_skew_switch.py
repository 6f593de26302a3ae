"""The tests' clock-skew switch (tests/k3srotd_test_main.py, used by the chaos runs) reaches k3srotd's decisions:
a rotation made on a clock two hours ahead is recorded two hours ahead, and a step back takes effect at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from k3srotd_node import Node


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_skew_file_shifts_k3srotds_wall_clock_while_it_runs(node: Node, tmp_path: Path) -> None:
    skew = tmp_path / "clock-skew"
    skew.write_text("7200\n")
    env = {"K3SROTD_TEST_CLOCK_SKEW_FILE": str(skew)}
    node.ok("rotate-now", "--skip-publish-wait", env=env)
    now = dt.datetime.now(dt.timezone.utc)
    recorded = _at(node.status()["last_rotation"])
    assert dt.timedelta(hours=2) - dt.timedelta(minutes=2) < recorded - now < dt.timedelta(hours=2), recorded

    skew.write_text("0\n")
    node.ok("rotate-now", "--skip-publish-wait", env=env)
    recorded = _at(node.status()["last_rotation"])
    assert abs(recorded - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=2), recorded
