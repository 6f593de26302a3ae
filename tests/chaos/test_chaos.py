"""Chaos in the suite: a short seeded schedule of random faults on three servers, and the shrunk schedules of
failures found before, kept as regression tests. The long run is bench/chaos.py.

Replay any seed: `python tests/chaos --seed N`, or `CHAOS_SEED=N pytest tests/chaos -k replay`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

from chaos.harness import Result, run
from chaos.schedule import Fault

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chaos")]

# One short schedule in the suite (30 s of faults, about a minute in all); bench/chaos.py runs the long ones.
SUITE_SEEDS = [
    pytest.param(17, 30.0, id="seed17"),  # api_cut, clock_skew, disk_full, k3s_stop, manual, reply_lost
]


def _assert_ok(r: Result) -> None:
    assert r.injected > 0, r.report()
    assert r.ok, r.report()


@pytest.mark.parametrize("seed, length", SUITE_SEEDS)
def test_three_servers_under_random_faults_keep_every_invariant(tmp_path: Path, seed: int, length: float) -> None:
    _assert_ok(run(tmp_path, seed, servers=3, length=length))


@pytest.mark.skipif(not os.environ.get("CHAOS_SEED"), reason="set CHAOS_SEED (and CHAOS_SERVERS, CHAOS_KEEP) to replay")
def test_replay(tmp_path: Path) -> None:
    keep: Optional[list[int]] = None
    if os.environ.get("CHAOS_KEEP"):
        keep = [int(x) for x in os.environ["CHAOS_KEEP"].split(",")]
    servers = int(os.environ.get("CHAOS_SERVERS", "3"))
    length = float(os.environ.get("CHAOS_LENGTH", "60"))
    _assert_ok(run(tmp_path, int(os.environ["CHAOS_SEED"]), servers, length, keep))


# Shrunk schedules of failures found by the chaos runs.
def test_regression_a_step_while_a_server_is_stopped_keeps_quorum(tmp_path: Path) -> None:
    """The pattern of seeds 3, 5 and 6 (K3s stopped on one server, then k3srotd restarts another), shrunk by hand to
    two faults: server-2's K3s is stopped (systemctl stop) and a rotate-now runs on server-0 meanwhile."""
    schedule = [
        Fault(1.0, "k3s_stop", 2, hold=40.0),
        Fault(3.0, "manual", 0, args={"command": "rotate-now"}),
    ]
    _assert_ok(run(tmp_path, 0, servers=3, length=45, schedule=schedule))
