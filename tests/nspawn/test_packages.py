"""The packages as files: packaging/build makes both, lintian and rpmlint find nothing, they hold what an
operator expects, and the hand-written conffile and man page stay in step with the program."""

from __future__ import annotations

import dataclasses
import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nspawn.packages import DEBIAN_PATH, REPO, VERSION, Packages, code_lines

SETTING = re.compile(r"^#([a-z0-9-]+): (.*)$")

pytestmark = pytest.mark.slow


def sh(*argv: str | Path) -> str:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env={"PATH": DEBIAN_PATH}, check=False)
    assert res.returncode == 0, f"{argv}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


# --- the build ---------------------------------------------------------------------------------------------


def test_build_makes_both_packages_with_the_version_of_the_code(packages: Packages) -> None:
    assert sh("dpkg-deb", "--field", packages.deb, "Version").strip() == VERSION
    assert sh("rpm", "-qp", "--qf", "%{VERSION} %{ARCH}", packages.rpm) == f"{VERSION} noarch"
    assert sh("rpm", "-qp", "--qf", "%{VERSION}", packages.srpm) == VERSION


def test_lintian_finds_no_error_or_warning(packages: Packages) -> None:
    out = sh("lintian", "--fail-on", "error,warning", "--suppress-tags", "", packages.changes)
    problems = [line for line in out.splitlines() if re.match(r"^[EW]: ", line)]
    assert problems == [], out


def test_rpmlint_is_clean_under_the_project_config(packages: Packages) -> None:
    res = subprocess.run(
        ["rpmlint", "-r", REPO / "packaging/rpm/rpmlintrc", packages.rpm, packages.srpm],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "0 errors, 0 warnings" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 0, res.stdout + res.stderr


# --- the .deb ----------------------------------------------------------------------------------------------


DEB_NAMES = {
    "cryptography": "python3-cryptography",
    "click": "python3-click",
    "psutil": "python3-psutil",
    "structlog": "python3-structlog",
    "APScheduler": "python3-apscheduler",
    "PyYAML": "python3-yaml",
}
RPM_NAMES = {**DEB_NAMES, "APScheduler": "python3-APScheduler", "PyYAML": "python3-PyYAML"}


def floors() -> dict[str, str]:
    """The project's own dependency floors (pyproject.toml), e.g. {"cryptography": "3.4.8"}."""
    deps = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert deps
    found = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)', deps.group(1)))
    assert set(found) == set(DEB_NAMES), found
    return found


def deb_files(packages: Packages) -> dict[str, str]:
    """path -> mode string, from the .deb's data."""
    files = {}
    for line in sh("dpkg-deb", "--contents", packages.deb).splitlines():
        parts = line.split()
        files[parts[5].lstrip(".").rstrip("/") or "/"] = parts[0]
    return files


def test_deb_depends_on_the_distributions_libraries(packages: Packages) -> None:
    depends = sh("dpkg-deb", "--field", packages.deb, "Depends")
    names = {re.sub(r"\s*\(.*\)", "", d).strip() for d in depends.split(",")}
    wanted = {"python3-cryptography", "python3-apscheduler", "python3-psutil", "python3-structlog"}
    assert wanted | {"python3-click", "python3-yaml"} <= names
    for dist, floor in floors().items():  # apt refuses a distribution whose libraries are older than tested
        assert f"{DEB_NAMES[dist]} (>= {floor})" in depends, dist
    assert sh("dpkg-deb", "--field", packages.deb, "Recommends").strip() == "python3-systemd"
    assert sh("dpkg-deb", "--field", packages.deb, "Architecture").strip() == "all"


def test_deb_installs_the_unit_conffile_man_page_and_completion(packages: Packages, tmp_path: Path) -> None:
    files = deb_files(packages)
    for path in (
        "/usr/bin/k3srotd",
        "/usr/lib/python3/dist-packages/k3srotd/cli.py",
        "/lib/systemd/system/k3srotd.service",
        "/etc/k3srotd/config.yaml",
        "/etc/k3srotd/config.yaml.d",
        "/etc/k3srotd/hooks.d",
        "/usr/share/man/man8/k3srotd.8.gz",
        "/usr/share/bash-completion/completions/k3srotd",
        "/usr/share/zsh/vendor-completions/_k3srotd",
        "/usr/share/doc/k3srotd/README.md.gz",
        "/usr/share/k3srotd/prometheus/k3srotd.rules.yml",
    ):
        assert path in files, path
    assert files["/usr/bin/k3srotd"] == "-rwxr-xr-x"
    assert files["/etc/k3srotd/hooks.d"] == "drwxr-xr-x"  # hooks run as root: never group/other-writable
    assert not any(p.startswith(("/var/lib/k3srotd", "/opt", "/var/lib/rancher", "/etc/rancher")) for p in files)

    sh("dpkg-deb", "-R", packages.deb, tmp_path)
    assert (tmp_path / "DEBIAN/conffiles").read_text().split() == ["/etc/k3srotd/config.yaml"]
    assert (tmp_path / "lib/systemd/system/k3srotd.service").read_bytes() == (
        REPO / "systemd/k3srotd.service"
    ).read_bytes()
    assert (tmp_path / "etc/k3srotd/config.yaml").read_bytes() == (REPO / "packaging/config.yaml").read_bytes()
    # The operator's guide, as `zless /usr/share/doc/k3srotd/README.md.gz` shows it (compressed, as Debian's policy
    # wants for documents over 4 KiB), and the alert rules for Prometheus.
    readme = gzip.decompress((tmp_path / "usr/share/doc/k3srotd/README.md.gz").read_bytes())
    assert readme == (REPO / "README.md").read_bytes()
    rules = tmp_path / "usr/share/k3srotd/prometheus/k3srotd.rules.yml"
    assert rules.read_bytes() == (REPO / "packaging/prometheus/k3srotd.rules.yml").read_bytes()
    bash = (tmp_path / "usr/share/bash-completion/completions/k3srotd").read_text()
    assert "_K3SROTD_COMPLETE=bash_complete" in bash and "complete " in bash and "k3srotd" in bash
    postinst = (tmp_path / "DEBIAN/postinst").read_text()
    assert "deb-systemd-helper" in postinst and "enable" in postinst and "k3srotd.service" in postinst
    assert "deb-systemd-invoke" in postinst  # started on install
    postrm = (tmp_path / "DEBIAN/postrm").read_text()
    assert re.search(r'if \[ "\$1" = "purge" \]; then\s+rm -rf /var/lib/k3srotd\s+fi', postrm)
    assert not re.search(r"rancher|/opt", code_lines(postrm))


# --- the .rpm ----------------------------------------------------------------------------------------------


def test_rpm_layout_and_dependencies_are_an_rpm_distributions(packages: Packages) -> None:
    files = sh("rpm", "-qlp", packages.rpm).split()
    sitelib = next(p for p in files if p.endswith("/k3srotd/cli.py")).rsplit("/k3srotd/", 1)[0]
    assert re.fullmatch(r"/usr/lib/python3\.\d+/site-packages", sitelib), sitelib
    for path in (
        "/usr/bin/k3srotd",
        "/usr/lib/systemd/system/k3srotd.service",
        "/etc/k3srotd/config.yaml",
        "/etc/k3srotd/config.yaml.d",
        "/etc/k3srotd/hooks.d",
        "/usr/share/man/man8/k3srotd.8.gz",
        "/usr/share/bash-completion/completions/k3srotd",
        "/usr/share/zsh/site-functions/_k3srotd",
        "/usr/share/k3srotd/prometheus/k3srotd.rules.yml",
    ):
        assert path in files, path
    # %doc: /usr/share/doc/k3srotd on Fedora and SUSE, /usr/share/doc/k3srotd-VERSION with an older rpm's default
    docs = sh("rpm", "-qdp", packages.rpm).split()
    assert any(re.fullmatch(rf"/usr/share/doc/k3srotd(-{re.escape(VERSION)})?/README\.md", d) for d in docs), docs
    assert sh("rpm", "-qcp", packages.rpm).split() == ["/etc/k3srotd/config.yaml"]
    flags = sh("rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", packages.rpm).splitlines()
    assert "cn /etc/k3srotd/config.yaml" in flags  # %config(noreplace)
    requires = sh("rpm", "-qp", "--requires", packages.rpm)
    for dist, floor in floors().items():
        assert re.search(rf"^{RPM_NAMES[dist]} >= {re.escape(floor)}$", requires, re.M), dist
    assert f"python(abi) = {sitelib.split('python')[1].split('/')[0]}" in requires
    assert sh("rpm", "-qp", "--recommends", packages.rpm).strip() == "python3-systemd"


def test_rpm_scriptlets_enable_restart_and_clean_up_only_on_erase(packages: Packages) -> None:
    scripts = sh("rpm", "-qp", "--scripts", packages.rpm)
    post, rest = scripts.split("preuninstall scriptlet", 1)
    preun, postun = rest.split("postuninstall scriptlet", 1)
    assert "preset k3srotd.service" in post
    assert "disable --now k3srotd.service" in preun and "$1 -eq 0" in preun
    assert "try-restart k3srotd.service" in postun and "$1 -ge 1" in postun
    assert re.search(r"if \[ \$1 -eq 0 \]; then\s+rm -rf /var/lib/k3srotd\s+fi", postun)
    assert not re.search(r"rancher|/opt", code_lines(scripts))


def test_build_checks_every_build_dependency_of_the_packages() -> None:
    """packaging/build installs (or names) the Debian packages both builds need: debian/control's Build-Depends,
    dpkg-buildpackage's dpkg-dev, and rpmbuild's rpm."""
    script = (REPO / "packaging/build").read_text()
    listed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", script.split("build_deps() {", 1)[1].split("\n}", 1)[0]))
    control = (REPO / "packaging/debian/control").read_text()
    build_depends = control.split("Build-Depends:", 1)[1].split("\n\n", 1)[0].split("\nStandards-Version", 1)[0]
    wanted = {re.sub(r"\s*\(.*\)", "", d).strip() for d in build_depends.split(",") if d.strip()}
    wanted = {"debhelper" if d == "debhelper-compat" else d for d in wanted} | {"dpkg-dev", "rpm"}
    assert wanted <= listed, wanted - listed


def test_spec_gets_its_version_from_the_code() -> None:
    spec = (REPO / "packaging/rpm/k3srotd.spec").read_text()
    assert re.search(r"^Version:\s+@VERSION@$", spec, re.M)


# --- the hand-written files against the program --------------------------------------------------------------


def settings(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in map(SETTING.match, text.splitlines()) if m}


def test_conffile_lists_every_key_commented_out_at_its_default(tmp_path: Path) -> None:
    from k3srotd import config

    text = (REPO / "packaging/config.yaml").read_text()
    keys = [k for k in map(SETTING.match, text.splitlines()) if k]
    assert sorted(k.group(1) for k in keys) == sorted(config.SCHEMA), "every key of the program, once"
    assert not [line for line in text.splitlines() if line and not line.startswith("#")], "all commented out"
    # Uncommented, the file means the same as no file at all.
    k3s = tmp_path / "no-k3s-config.yaml"
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"k3s-config: {k3s}\n")
    uncommented = tmp_path / "uncommented.yaml"
    uncommented.write_text(
        "\n".join(f"{k}: {v}" for k, v in settings(text).items() if k != "k3s-config") + f"\nk3s-config: {k3s}\n"
    )
    defaults = config.load(str(empty), environ={})
    loaded = config.load(str(uncommented), environ={})
    assert dataclasses.replace(loaded, sources=()) == dataclasses.replace(defaults, sources=())


def man_text() -> str:
    return (REPO / "packaging/k3srotd.8").read_text().replace("\\-", "-")


def test_man_page_names_every_key_command_option_and_exit_code() -> None:
    from k3srotd import config, errors
    from k3srotd.cli import cli

    man = man_text()
    for key in config.SCHEMA:
        assert re.search(rf"^\.B {re.escape(key)}$", man, re.M), f"config key {key} not in the man page"
    for opt in (o for p in cli.params for o in p.opts if o.startswith("--") and o != "--help"):
        assert opt in man, opt
    items = man.split(".SH COMMANDS", 1)[1].split("\n.SH ", 1)[0].split("\n.TP\n")
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        item = [i for i in items if re.match(rf"\.B {re.escape(name)}\b", i)]
        assert len(item) == 1, f"command {name} in COMMANDS"
        for opt in (o for p in command.params for o in p.opts if o.startswith("--") and o != "--help"):
            assert opt in item[0], f"{name} {opt}"
    exit_section = man.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)}
    for code in codes | {0}:
        assert f".B {code}\n" in exit_section, code
    for field in ("SYSLOG_IDENTIFIER=k3srotd", "K3SROTD_EVENT", "K3SROTD_SIGNER_KID", "K3SROTD_KIDS"):
        assert field in man, field
    for event in ("publish.done", "promote.done", "prune.done", "rollback.done", "step.failed"):
        assert event in man, event


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man-db")
def test_man_page_renders_without_warnings() -> None:
    res = subprocess.run(
        ["man", "--warnings", "-l", "-Tutf8", str(REPO / "packaging/k3srotd.8")],
        capture_output=True,
        text=True,
        env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"},
        check=False,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert "rotate-now" in res.stdout
