"""Fixtures for the trust tests: an emulated K3s server with a k3srotd config (tests/k3srotd_node.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from k3semu.harness import EmulatedServer
from k3srotd_node import Node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    server = EmulatedServer(tmp_path / "k3s")
    server.start()
    try:
        yield Node(tmp_path, server)
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K3SROTD_CONFIG", raising=False)
