"""packaging/build on a fresh Debian 12 that lacks its build dependencies (the cached container root: Debian's
python libraries, no debhelper, no hatchling): without root it changes nothing and prints the one apt-get line
to run; as root it installs them with apt and builds both packages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from nspawn import container
from nspawn.packages import REPO, VERSION

pytestmark = [pytest.mark.nspawn, pytest.mark.slow]

BUILD = "/srv/src/packaging/build"
NEEDED = ("dpkg-dev", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all", "python3-hatchling")


@pytest.fixture(scope="module")
def fresh(nspawn_root: Path) -> Iterator[container.Container]:
    """A booted Debian 12 with the source tree read-only at /srv/src."""
    with container.Container(nspawn_root, binds_ro={str(REPO): "/srv/src"}) as c:
        yield c


def installed(c: container.Container, package: str) -> bool:
    out = c.run("dpkg-query", "-W", "-f=${Status}", package, check=False).stdout
    return out == "install ok installed"


def test_without_root_it_prints_the_one_apt_get_line(fresh: container.Container) -> None:
    assert not any(installed(fresh, p) for p in NEEDED)
    res = fresh.run("runuser", "-u", "nobody", "--", BUILD, "/tmp/out", check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    command = lines[0].split("install them with: ", 1)[1]
    assert command.startswith("sudo apt-get install --no-install-recommends "), command
    assert set(command.split()[4:]) >= set(NEEDED), command
    assert "python3-click" not in command.split()  # already there: only what is missing
    assert not fresh.exists("/tmp/out")


def test_as_root_it_installs_them_and_builds_both_packages(fresh: container.Container) -> None:
    res = fresh.run(BUILD, "/tmp/out", check=False, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert re.search(r"^packaging/build: installing the build dependencies: .*debhelper", res.stderr, re.M)
    assert all(installed(fresh, p) for p in NEEDED)
    built = fresh.run("ls", "/tmp/out").stdout.split()
    assert f"k3srotd_{VERSION}_all.deb" in built and f"k3srotd-{VERSION}-1.noarch.rpm" in built, built
