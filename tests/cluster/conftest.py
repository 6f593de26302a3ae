"""Fixtures for the multi-server tests: `cluster`, three emulated K3s servers with a k3srotd each."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from clusternode import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K3SROTD_CONFIG", raising=False)
    monkeypatch.delenv("K3SROTD_TEST_CRASH_AT", raising=False)
