"""Which paths root may trust: owned by root (or the user k3srotd runs as), and writable by nobody else.

Every folder on the way to a path counts too, up to /: whoever may rename an entry of a folder may swap what
lies below it. A folder owned by root with the sticky bit (like /tmp) is safe as a parent, as for sshd's
StrictModes and sudo: others cannot rename or remove what root owns in it. A path that does not exist yet is
judged by the folders it would be created in. Symlinks are judged on both sides: the link's own folders and
owner, and the path it leads to.

This is the check of one path, which the config loader needs for its own files; node/trust.py applies it to
every path the config names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from k3srotd.errors import SafetyRefusal


@dataclass(frozen=True)
class Problem:
    path: str
    key: str  # the config key (or what) that names it
    why: str

    def line(self) -> str:
        fix = f"chown root:root {self.path} && chmod go-w {self.path}"
        return f"{self.path}: {self.why}; root trusts it as {self.key}. Fix it ({fix}) or set {self.key} elsewhere"


def trusted_uids() -> tuple[int, ...]:
    return (0, os.geteuid())


def unsafe(st: os.stat_result, parent: bool = False) -> Optional[str]:
    """Why a file or folder with this status may not be trusted by root, or None. `parent`: a folder on the way
    to the path, where root's sticky folders are safe."""
    if st.st_uid not in trusted_uids():
        return f"is owned by uid {st.st_uid}, not root"
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's mode means nothing; its folder and its target are judged
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if parent and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            return None
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _chain(path: Path) -> Iterable[tuple[Path, bool]]:
    """The path (False) and each folder above it up to / (True), without resolving links."""
    yield path, False
    for p in path.parents:
        yield p, True


def path_problem(path: str, key: str) -> Optional[Problem]:
    """The first reason not to trust `path` or a folder on its way, or None."""
    if not path or not os.path.isabs(path):
        return None
    for candidate in (Path(os.path.normpath(path)), Path(os.path.realpath(path))):
        for p, parent in _chain(candidate):
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                continue  # to be created, by root, in a folder judged next
            except OSError as e:
                return Problem(str(p), key, f"cannot be checked ({e.strerror})")
            why = unsafe(st, parent)
            if why is not None:
                return Problem(str(p), key, why + ("" if p == candidate else f" (a folder above {path})"))
    return None


def require_path(path: str, key: str) -> None:
    p = path_problem(path, key)
    if p is not None:
        raise SafetyRefusal(p.line())
