"""promtool, Prometheus's own checker, from Debian's `prometheus` package (a plain module, no pytest in here).

Installing that package would also start a Prometheus server, so the package is only downloaded
(`apt-get download`, about 20 MB) and promtool alone unpacked from it into a cache folder (48 MB), once:

    path = promtool()        # a promtool to run, or None (with the reason in why_not())

Environment:
    K3SROTD_PROMTOOL       use this promtool
    K3SROTD_NSPAWN_CACHE   the cache folder, shared with the Debian roots (default /var/cache/k3srotd-tests)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

DEFAULT_CACHE = "/var/cache/k3srotd-tests"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_why = ""


def why_not() -> str:
    return _why


def promtool() -> Optional[Path]:
    """The promtool to use: $K3SROTD_PROMTOOL, one on PATH, the cached one, or one unpacked now (as root on
    Debian). None if there is none; why_not() says why."""
    global _why
    given = os.environ.get("K3SROTD_PROMTOOL") or shutil.which("promtool")
    if given:
        return Path(given)
    cache = Path(os.environ.get("K3SROTD_NSPAWN_CACHE", DEFAULT_CACHE)) / "promtool"
    tool = cache / "promtool"
    if tool.exists():
        return tool
    if os.geteuid() != 0 or shutil.which("apt-get", path=DEBIAN_PATH) is None:
        _why = "needs promtool: on Debian, as root, the tests fetch it from the `prometheus` package"
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download when several test processes ask at once
        if not tool.exists():
            _why = _fetch(cache)
    return tool if tool.exists() else None


def _fetch(cache: Path) -> str:
    """Download Debian's prometheus package, keep promtool; '' or what went wrong."""
    env = {"PATH": DEBIAN_PATH, "LC_ALL": "C"}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for attempt in (1, 2):
            got = subprocess.run(
                ["apt-get", "download", "prometheus"], cwd=tmp, env=env, capture_output=True, text=True
            )
            if got.returncode == 0 or attempt == 2:
                break
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)  # no package lists yet
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if got.returncode != 0 or not debs:
            return f"apt-get download prometheus failed: {got.stderr.strip()[-500:]}"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/x"], env=env, check=True)
        version = subprocess.run(
            ["dpkg-deb", "--field", str(debs[0]), "Version"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        (cache / "VERSION").write_text(f"prometheus {version} (Debian)\n")
        os.replace(f"{tmp}/x/usr/bin/promtool", cache / "promtool")
    return ""
