"""Fixtures of the package and container tests: the packages, built once per run by packaging/build, and the
cached Debian root file systems that containers boot from (tests/nspawn/debian_root.py, container.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from nspawn import container
from nspawn.packages import Packages, build, build_tools_missing


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    """Both packages, built from the working tree into a temporary dist folder."""
    missing = build_tools_missing()
    if missing:
        pytest.skip(missing)
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def nspawn_root() -> Path:
    """The cached Debian 12 root (debootstrapped on first use: about a minute)."""
    reason = container.missing_prerequisites()
    if reason:
        pytest.skip(reason)
    return container.rootfs()


@pytest.fixture(scope="session", params=container.SUITES)
def debian_root(request: pytest.FixtureRequest) -> Path:
    """The cached root of each supported Debian release, 12 (bookworm) and 13 (trixie): a test that uses it
    runs once on each. Each is debootstrapped on first use (one to several minutes, 300-400 MB)."""
    reason = container.missing_prerequisites()
    if reason:
        pytest.skip(reason)
    return container.rootfs(suite=request.param)


def boot(root: Path, packages: Packages, **binds: str) -> Iterator[container.Container]:
    """A booted container with the packages at /srv/dist (read-only) and `binds` (host path -> inside)."""
    with container.Container(root, binds_ro={str(packages.dir): "/srv/dist", **binds}) as c:
        yield c
