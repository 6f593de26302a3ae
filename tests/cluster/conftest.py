"""Fixtures for the multi-server tests: `cluster`, three emulated K3s servers with a k3srotd each."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from clusternode import Cluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        if request.node.stash.get(FAILED, False):  # what each server's daemon was doing: shown with the failure
            for n in c:
                if n.daemon_log.exists():
                    tail = n.daemon_log.read_text(errors="replace").splitlines()[-40:]
                    print(f"--- {n.name}'s daemon log, last lines ---", *tail, sep="\n")
        c.stop()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K3SROTD_CONFIG", raising=False)
    monkeypatch.delenv("K3SROTD_TEST_CRASH_AT", raising=False)
