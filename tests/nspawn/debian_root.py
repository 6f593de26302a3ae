"""The cached Debian root file systems that the containers boot from: Debian 12 (bookworm) and 13 (trixie).

A plain module (no pytest in here); tests/nspawn/container.py re-exports rootfs() for the tests that boot one.

    root = rootfs()                  # Debian 12, debootstrapped once (about a minute, 380 MB), then cached
    root = rootfs(suite="trixie")    # Debian 13, the same way

Environment:
    K3SROTD_NSPAWN_CACHE   folder of cached root file systems (default /var/cache/k3srotd-tests)
    K3SROTD_NSPAWN_ROOTFS  use this prepared Debian 12 root file system instead (nothing is built)
    K3SROTD_DEBIAN_MIRROR  Debian mirror for debootstrap (default: debootstrap's own)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

SUITE = "bookworm"  # the default: what the package, unit and emulator container tests boot
SUITES = ("bookworm", "trixie")  # Debian 12 and 13: the .deb's install and rotation tests run on both
# What the .deb depends on comes from Debian's own packages, already in the root: apt then resolves the .deb
# offline, the unit test's sandbox probe runs k3srotd's modules from the source tree with them, and the K3s
# emulator runs with Debian's cryptography and PyYAML. python3-cffi-backend is named because debootstrap cannot
# resolve all of cryptography's dependencies by itself; rpm is there for the rpm tests. The same names exist in
# bookworm and trixie.
INCLUDE = (
    "systemd,systemd-sysv,dbus,python3,python3-systemd,python3-cffi-backend,python3-cryptography,"
    "python3-yaml,python3-apscheduler,python3-psutil,python3-structlog,python3-click,iproute2,procps,"
    "ca-certificates,rpm"
)
# Part of the cache key: bump it when the preparation below changes.
RECIPE = "1"
DEFAULT_CACHE = "/var/cache/k3srotd-tests"


def rootfs_key(suite: str = SUITE) -> str:
    return hashlib.sha256(f"{suite}\n{INCLUDE}\n{RECIPE}".encode()).hexdigest()[:12]


def rootfs(log: Callable[[str], None] = lambda _msg: None, suite: str = SUITE) -> Path:
    """The root file system of `suite`, built with debootstrap on first use (about a minute) and cached.

    Several processes may ask at once: one builds under a lock, in a temporary folder renamed when complete;
    the others wait for it. A failed build leaves nothing behind.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown Debian suite {suite!r}; one of {', '.join(SUITES)}")
    given = os.environ.get("K3SROTD_NSPAWN_ROOTFS")
    if given and suite == SUITE:
        return Path(given)
    cache = Path(os.environ.get("K3SROTD_NSPAWN_CACHE", DEFAULT_CACHE))
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"{suite}-{rootfs_key(suite)}"
    if (root / ".complete").exists():
        return root
    with open(cache / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root
        if root.exists():  # an older, incomplete attempt
            shutil.rmtree(root)
        partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=cache))
        try:
            log(f"debootstrap {suite} into {root} (once; about a minute)")
            argv = ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", suite, str(partial)]
            mirror = os.environ.get("K3SROTD_DEBIAN_MIRROR")
            if mirror:
                argv.append(mirror)
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(f"debootstrap {suite} failed ({out.returncode}):\n{out.stdout[-4000:]}")
            _prepare(partial)
            (partial / ".complete").write_text(f"{suite} {INCLUDE}\n")
            partial.rename(root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return root


def _prepare(root: Path) -> None:
    """Make the fresh root boot quietly as a container."""
    # The downloaded .debs are installed already: 60 MB less to copy.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # A machine id is made at each boot (the overlay's upper layer keeps it for that boot only).
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("k3srotd-test\n")


def codename(root: Path) -> str:
    """The Debian release of a root file system ("bookworm", "trixie"), from its os-release; '' if unknown."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""
