"""Fixtures for the engine's tests: `node`, an emulated K3s server with a k3srotd config (tests/k3srotd_node.py)."""

from __future__ import annotations

import pytest
from k3srotd_node import no_stray_env as no_stray_env
from k3srotd_node import node as node


@pytest.fixture(autouse=True)
def _no_stray_env(no_stray_env: None) -> None:
    return None
