"""The .rpm installed with `rpm -ivh --nodeps` into Debian 12 under a real systemd (no RPM distribution or
repository is reachable here): its unit is known to systemd, its files verify, its Python package sits in an
RPM distribution's site-packages, an upgrade keeps state and config, and an erase removes state only."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from nspawn import container
from nspawn.conftest import boot
from nspawn.packages import DEBIAN_PATH, REPO, VERSION, Packages

pytestmark = [pytest.mark.nspawn, pytest.mark.slow]


@pytest.fixture(scope="module")
def upgrade_rpm(packages: Packages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .src.rpm rebuilt as release 1.2 (as on a target distribution: `rpmbuild --rebuild`): an upgrade."""
    top = tmp_path_factory.mktemp("rpmbuild")
    res = subprocess.run(
        ["rpmbuild", "--define", f"_topdir {top}", "--define", "dist .2", "--nodeps", "--rebuild", str(packages.srpm)],
        capture_output=True,
        text=True,
        env={"PATH": DEBIAN_PATH, "HOME": str(top)},
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rpm = top / f"RPMS/noarch/k3srotd-{VERSION}-1.2.noarch.rpm"
    assert rpm.exists()
    return rpm


@pytest.fixture(scope="module")
def box(nspawn_root: Path, packages: Packages, upgrade_rpm: Path) -> Iterator[container.Container]:
    yield from boot(nspawn_root, packages, **{str(upgrade_rpm.parent): "/srv/upgrade"})


@pytest.fixture(scope="module")
def installed(box: container.Container, packages: Packages) -> str:
    return box.run("rpm", "-ivh", "--nodeps", f"/srv/dist/{packages.rpm.name}").stdout


def test_rpm_installs_and_systemd_knows_its_unit(box: container.Container, installed: str) -> None:
    assert "k3srotd-" in installed
    props = box.show("k3srotd", "LoadState", "FragmentPath", "Type")
    assert props["LoadState"] == "loaded", props
    assert props["FragmentPath"] in ("/usr/lib/systemd/system/k3srotd.service", "/lib/systemd/system/k3srotd.service")
    assert props["Type"] == "notify"
    assert box.read("/usr/lib/systemd/system/k3srotd.service") == (REPO / "systemd/k3srotd.service").read_text()


def test_rpm_files_verify_and_python_lives_in_site_packages(box: container.Container, installed: str) -> None:
    assert box.run("rpm", "-V", "--nodeps", "k3srotd").stdout == ""
    sitelib = box.run("sh", "-c", "rpm -ql k3srotd | grep '/k3srotd/cli.py$'").stdout.strip().rsplit("/k3srotd/", 1)[0]
    assert sitelib.startswith("/usr/lib/python3.") and sitelib.endswith("/site-packages"), sitelib
    assert not box.exists("/usr/lib/python3/dist-packages/k3srotd")
    # On an RPM distribution that folder is on sys.path; here it is given by hand.
    out = box.run("k3srotd", "--version", env={"PYTHONPATH": sitelib}).stdout
    assert out.strip() == f"k3srotd {VERSION}"
    assert box.read("/etc/k3srotd/config.yaml") == (REPO / "packaging/config.yaml").read_text()
    assert box.exists("/usr/share/man/man8/k3srotd.8.gz")
    assert box.exists("/usr/share/bash-completion/completions/k3srotd")


def test_upgrade_keeps_state_and_the_operators_config(box: container.Container, installed: str) -> None:
    box.sh(
        """
        install -d -m 0700 /var/lib/k3srotd/backups
        echo backup > /var/lib/k3srotd/backups/service.key.1
        echo '# the operator was here' >> /etc/k3srotd/config.yaml
        """
    )
    box.run("rpm", "-Uvh", "--nodeps", f"/srv/upgrade/k3srotd-{VERSION}-1.2.noarch.rpm")
    assert box.run("rpm", "-q", "k3srotd").stdout.strip() == f"k3srotd-{VERSION}-1.2.noarch"
    assert box.read("/var/lib/k3srotd/backups/service.key.1") == "backup\n"
    assert box.read("/etc/k3srotd/config.yaml").endswith("# the operator was here\n")
    assert box.show("k3srotd", "LoadState")["LoadState"] == "loaded"


def test_erase_removes_state_and_unit_and_leaves_k3s_alone(box: container.Container, installed: str) -> None:
    box.sh(
        """
        install -d -m 0700 /var/lib/rancher/k3s/server/tls /opt/k3s/server/tls /etc/rancher/k3s
        head -c 1200 /dev/urandom | base64 > /var/lib/rancher/k3s/server/tls/service.key
        chmod 0600 /var/lib/rancher/k3s/server/tls/service.key
        echo 'data-dir: /var/lib/rancher/k3s' > /etc/rancher/k3s/config.yaml
        echo 'an operator file' > /opt/k3s/server/tls/service.key
        install -d -m 0700 /var/lib/k3srotd/backups
        echo backup > /var/lib/k3srotd/backups/service.key.2
        c=/etc/k3srotd/config.yaml
        grep -q 'the operator was here' $c || echo '# the operator was here' >> $c
        """
    )
    before = container.manifest(box, "/var/lib/rancher", "/etc/rancher", "/opt/k3s")
    box.run("rpm", "-e", "--nodeps", "k3srotd")
    assert container.manifest(box, "/var/lib/rancher", "/etc/rancher", "/opt/k3s") == before
    assert not box.exists("/var/lib/k3srotd")
    assert not box.exists("/usr/bin/k3srotd")
    assert not box.exists("/etc/k3srotd/config.yaml")
    # %config(noreplace) that the operator changed is kept aside, as rpm does.
    assert box.read("/etc/k3srotd/config.yaml.rpmsave").endswith("# the operator was here\n")
    assert box.show("k3srotd", "LoadState")["LoadState"] == "not-found"
