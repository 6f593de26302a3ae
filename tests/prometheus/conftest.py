"""Fixtures of the Prometheus tests: promtool from Debian's prometheus package (tests/prometheus/promtool.py), and
`node`, an emulated K3s server with a k3srotd config (tests/k3srotd_node.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from k3srotd_node import node as node

from prometheus import promtool as fetch


@pytest.fixture(scope="session")
def promtool() -> Path:
    tool = fetch.promtool()
    if tool is None:
        pytest.skip(fetch.why_not())
    return tool
