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

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chaos")]

SUITE_SEEDS = [1]  # one schedule of 60 s of faults: about two to three minutes with convergence


def _assert_ok(r: Result) -> None:
    assert r.injected > 0, r.report()
    assert r.ok, r.report()


@pytest.mark.parametrize("seed", SUITE_SEEDS)
def test_three_servers_under_random_faults_keep_every_invariant(tmp_path: Path, seed: int) -> None:
    _assert_ok(run(tmp_path, seed, servers=3, length=60))


@pytest.mark.skipif(not os.environ.get("CHAOS_SEED"), reason="set CHAOS_SEED (and CHAOS_SERVERS, CHAOS_KEEP) to replay")
def test_replay(tmp_path: Path) -> None:
    keep: Optional[list[int]] = None
    if os.environ.get("CHAOS_KEEP"):
        keep = [int(x) for x in os.environ["CHAOS_KEEP"].split(",")]
    servers = int(os.environ.get("CHAOS_SERVERS", "3"))
    length = float(os.environ.get("CHAOS_LENGTH", "60"))
    _assert_ok(run(tmp_path, int(os.environ["CHAOS_SEED"]), servers, length, keep))
