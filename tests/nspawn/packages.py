"""The packages under test: packaging/build's output (a plain module, no pytest in here)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_version = re.search(r'^__version__ = "([^"]+)"$', (REPO / "k3srotd/__init__.py").read_text(), re.M)
assert _version, "no __version__ in k3srotd/__init__.py"
VERSION = _version.group(1)


@dataclasses.dataclass(frozen=True)
class Packages:
    dir: Path
    deb: Path
    changes: Path
    rpm: Path
    srpm: Path


def build_tools_missing() -> str:
    """Why the packages cannot be built and linted here, or ''."""
    for tool in ("dpkg-buildpackage", "dh", "rpmbuild", "lintian", "rpmlint"):
        if shutil.which(tool, path=DEBIAN_PATH) is None:
            return f"needs {tool} (tests/run installs the apt packages)"
    return ""


def build(out: Path) -> Packages:
    """Run packaging/build into `out`."""
    res = subprocess.run(
        [str(REPO / "packaging/build"), str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"packaging/build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return Packages(
        dir=out,
        deb=out / f"k3srotd_{VERSION}_all.deb",
        changes=next(out.glob(f"k3srotd_{VERSION}_*.changes")),
        rpm=next(out.glob(f"k3srotd-{VERSION}-*.noarch.rpm")),
        srpm=next(out.glob(f"k3srotd-{VERSION}-*.src.rpm")),
    )


def code_lines(script: str) -> str:
    """A shell script without its comment lines."""
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
