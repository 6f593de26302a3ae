"""The .deb on Debian 12 and 13 under a real systemd (systemd-nspawn): installed with apt, its dependencies
Debian's own, the unit enabled and started, the CLI and completion working, and a purge that removes k3srotd's state and
nothing of K3s's."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from nspawn import container
from nspawn.conftest import boot
from nspawn.packages import REPO, VERSION, Packages

pytestmark = [pytest.mark.nspawn, pytest.mark.slow]

DEB = f"/srv/dist/k3srotd_{VERSION}_all.deb"
LIBS = {
    "cryptography": "python3-cryptography",
    "apscheduler": "python3-apscheduler",
    "psutil": "python3-psutil",
    "structlog": "python3-structlog",
    "click": "python3-click",
    "yaml": "python3-yaml",
}
DAEMON_MISSING = not (REPO / "k3srotd/daemon/service.py").exists()


@pytest.fixture(scope="module")
def upgrade_deb(packages: Packages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package as a later version (repacked with `dpkg-deb`): an upgrade."""
    tree, out = tmp_path_factory.mktemp("deb-tree"), tmp_path_factory.mktemp("upgrade")
    subprocess.run(["dpkg-deb", "-R", str(packages.deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    control.write_text(control.read_text().replace(f"Version: {VERSION}\n", f"Version: {VERSION}+upgrade\n"))
    deb = out / f"k3srotd_{VERSION}+upgrade_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def debian(debian_root: Path, packages: Packages, upgrade_deb: Path) -> Iterator[container.Container]:
    yield from boot(debian_root, packages, **{str(upgrade_deb.parent): "/srv/upgrade"})


@pytest.fixture(scope="module")
def installed(debian: container.Container) -> str:
    """apt-get install of the .deb; returns apt's output. No network is needed: the dependencies are in the
    root already, as on a node that has them from Debian's archive."""
    return debian.run("apt-get", "install", "-y", "--no-install-recommends", DEB, timeout=300).stdout


def test_apt_installs_it_with_debians_own_libraries(debian: container.Container, installed: str) -> None:
    assert "Setting up k3srotd" in installed
    assert "Need to get 0 B" in installed or "Get:" not in installed  # nothing downloaded
    status = debian.run("dpkg-query", "-W", "-f=${Status} ${Version}", "k3srotd").stdout
    assert status == f"install ok installed {VERSION}"
    # Each library is imported from Debian's package, not from a copy vendored or installed with pip.
    code = "import importlib, sys\nfor m in sys.argv[1:]: print(importlib.import_module(m).__file__)"
    files = debian.run("python3", "-c", code, *LIBS).stdout.split()
    for (module, package), path in zip(LIBS.items(), files):
        assert path.startswith("/usr/lib/python3/dist-packages/"), path
        owner = debian.run("dpkg-query", "-S", path).stdout.split(":")[0]
        assert owner == package, (module, owner)
    assert debian.run("sh", "-c", "ls -d /usr/local/lib/python3*/dist-packages/* 2>/dev/null", check=False).stdout == ""


def test_systemd_knows_the_unit_enabled(debian: container.Container, installed: str) -> None:
    props = debian.show("k3srotd", "LoadState", "UnitFileState", "FragmentPath", "Type", "WatchdogUSec")
    assert props["LoadState"] == "loaded"
    assert props["UnitFileState"] == "enabled"
    # Debian 13's systemd reads units from /usr/lib only, where merged /usr puts the package's /lib
    assert props["FragmentPath"] in ("/lib/systemd/system/k3srotd.service", "/usr/lib/systemd/system/k3srotd.service")
    assert props["Type"] == "notify"
    # postinst started it (whatever the daemon then did, systemd ran it).
    starts = debian.journal(_SYSTEMD_UNIT="init.scope", UNIT="k3srotd.service")
    assert starts, "postinst did not start k3srotd.service"


@pytest.mark.skipif(DAEMON_MISSING, reason="the daemon (k3srotd/daemon/service.py, `k3srotd run`) is not written yet")
def test_on_a_node_without_k3s_the_daemon_idles_and_says_why(debian: container.Container, installed: str) -> None:
    def settled() -> dict[str, str] | None:
        props = debian.show("k3srotd", "ActiveState", "SubState", "StatusText", "NRestarts")
        return props if props["ActiveState"] == "active" and props["StatusText"] else None

    props = debian.wait_for("k3srotd.service active with a status", settled, timeout=60)
    assert props["SubState"] == "running" and props["NRestarts"] == "0", props
    assert "k3s" in props["StatusText"].lower(), props["StatusText"]
    said = [e["MESSAGE"] for e in debian.journal(SYSLOG_IDENTIFIER="k3srotd")]
    assert any("k3s" in m.lower() for m in said), said


def test_cli_runs_with_debians_python(debian: container.Container, installed: str) -> None:
    assert debian.run("k3srotd", "--version").stdout.strip() == f"k3srotd {VERSION}"
    assert "rotate-now" in debian.run("k3srotd", "--help").stdout
    head = debian.run("head", "-n1", "/usr/bin/k3srotd").stdout
    assert head.strip() == "#! /usr/bin/python3" or head.strip() == "#!/usr/bin/python3"


def test_conffile_dirs_man_page_and_completion(debian: container.Container, installed: str) -> None:
    assert debian.read("/etc/k3srotd/config.yaml") == (REPO / "packaging/config.yaml").read_text()
    conffiles = debian.run("dpkg-query", "-W", "-f=${Conffiles}", "k3srotd").stdout
    assert "/etc/k3srotd/config.yaml" in conffiles
    for d in ("/etc/k3srotd/config.yaml.d", "/etc/k3srotd/hooks.d"):
        assert debian.run("stat", "-c", "%F %a %U", d).stdout.strip() == "directory 755 root"
    assert debian.exists("/usr/share/man/man8/k3srotd.8.gz")
    # click's completion, as bash calls it: the completion script asks k3srotd itself.
    out = debian.run(
        "k3srotd", env={"_K3SROTD_COMPLETE": "bash_complete", "COMP_WORDS": "k3srotd ro", "COMP_CWORD": "1"}
    ).stdout.split()
    assert "plain,rotate-now" in out and "plain,rollback" in out, out
    script = debian.read("/usr/share/bash-completion/completions/k3srotd")
    assert "_K3SROTD_COMPLETE=bash_complete" in script


def test_upgrade_keeps_state_and_the_operators_config_and_restarts(debian: container.Container, installed: str) -> None:
    debian.sh(
        """
        install -d -m 0700 /var/lib/k3srotd/backups
        echo backup > /var/lib/k3srotd/backups/service.key.1
        echo '# the operator was here' >> /etc/k3srotd/config.yaml
        """
    )
    pid = debian.show("k3srotd", "MainPID")["MainPID"]
    out = debian.run("apt-get", "install", "-y", f"/srv/upgrade/k3srotd_{VERSION}+upgrade_all.deb", timeout=300).stdout
    assert f"Unpacking k3srotd ({VERSION}+upgrade) over ({VERSION})" in out
    assert debian.read("/var/lib/k3srotd/backups/service.key.1") == "backup\n"
    assert debian.read("/etc/k3srotd/config.yaml").endswith("# the operator was here\n")
    assert not debian.exists("/etc/k3srotd/config.yaml.dpkg-new")
    props = debian.show("k3srotd", "UnitFileState", "ActiveState", "MainPID")
    assert props["UnitFileState"] == "enabled"
    if not DAEMON_MISSING:  # restarted onto the new code
        assert props["ActiveState"] == "active" and props["MainPID"] not in (pid, "0"), (pid, props)


def test_purge_removes_state_and_unit_and_leaves_k3s_alone(debian: container.Container, installed: str) -> None:
    # K3s's files as on a server node, plus a staging leftover in /opt/k3s (the documented rotate-ca folder).
    debian.sh(
        """
        install -d -m 0700 /var/lib/rancher/k3s/server/tls /var/lib/rancher/k3s/server/cred /opt/k3s/server/tls
        head -c 1679 /dev/urandom | base64 > /var/lib/rancher/k3s/server/tls/service.key
        cp /var/lib/rancher/k3s/server/tls/service.key /var/lib/rancher/k3s/server/tls/service.current.key
        chmod 0600 /var/lib/rancher/k3s/server/tls/*.key
        echo 'K10abc::server:secret' > /var/lib/rancher/k3s/server/token
        ln -s token /var/lib/rancher/k3s/server/node-token
        install -d /etc/rancher/k3s/config.yaml.d
        printf 'write-kubeconfig-mode: "0600"\\n' > /etc/rancher/k3s/config.yaml
        echo 'apiVersion: v1' > /etc/rancher/k3s/k3s.yaml
        echo 'an operator file' > /opt/k3s/server/tls/service.key
        touch -d '2024-01-02 03:04:05' /var/lib/rancher/k3s/server/token /opt/k3s/server/tls/service.key
        # k3srotd's own state and a backup (the daemon may have made the folder already)
        install -d -m 0700 /var/lib/k3srotd/backups
        echo backup > /var/lib/k3srotd/backups/service.key.1
        echo '{}' > /var/lib/k3srotd/state.json
        """
    )
    before = container.manifest(debian, "/var/lib/rancher", "/etc/rancher", "/opt/k3s")
    assert len(before) > 10

    out = debian.run("apt-get", "purge", "-y", "k3srotd", timeout=300).stdout
    assert "Purging configuration files for k3srotd" in out

    assert container.manifest(debian, "/var/lib/rancher", "/etc/rancher", "/opt/k3s") == before
    assert not debian.exists("/var/lib/k3srotd")
    assert not debian.exists("/etc/k3srotd/config.yaml")
    assert not debian.exists("/usr/bin/k3srotd")
    assert debian.run("dpkg-query", "-W", "k3srotd", check=False).returncode != 0
    debian.run("systemctl", "daemon-reload")
    props = debian.show("k3srotd", "LoadState", "ActiveState")
    assert props == {"LoadState": "not-found", "ActiveState": "inactive"}, props
    assert not debian.exists("/etc/systemd/system/multi-user.target.wants/k3srotd.service")
