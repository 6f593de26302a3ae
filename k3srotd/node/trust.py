"""Which paths root may trust: owned by root (or the user k3srotd runs as), and writable by nobody else.

Every folder on the way to a path counts too, up to /: whoever may rename an entry of a folder may swap what
lies below it. A folder owned by root with the sticky bit (like /tmp) is safe as a parent, as for sshd's
StrictModes and sudo: others cannot rename or remove what root owns in it. A path that does not exist yet is
judged by the folders it would be created in. Symlinks are judged on both sides: the link's own folders and
owner, and the path it leads to.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from k3srotd.errors import SafetyRefusal

if TYPE_CHECKING:
    from k3srotd.config import Config
    from k3srotd.core.keys import KeyFile
    from k3srotd.core.model import State


@dataclass(frozen=True)
class Problem:
    path: str
    key: str  # the config key (or what) that names it
    why: str

    def line(self) -> str:
        fix = f"chown root:root {self.path} && chmod go-w {self.path}"
        return f"{self.path}: {self.why}; root trusts it as {self.key}. Fix it ({fix}) or set {self.key} elsewhere"


def _trusted_uids() -> tuple[int, ...]:
    return (0, os.geteuid())


def unsafe(st: os.stat_result, parent: bool = False) -> Optional[str]:
    """Why a file or folder with this status may not be trusted by root, or None. `parent`: a folder on the way
    to the path, where root's sticky folders are safe."""
    if st.st_uid not in _trusted_uids():
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


def _argv0(cfg: Config) -> str:
    cmd = cfg.restart_command[0] if cfg.restart_command else ""
    return cmd if os.path.isabs(cmd) else (shutil.which(cmd) or "")


def _hooks(hooks_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError:
        return []
    return [os.path.join(hooks_dir, n) for n in names if not n.startswith(".")]


def config_paths(cfg: Config) -> list[tuple[str, str]]:
    """(path, key) for everything root trusts or writes, as the config names it."""
    out = [(cfg.state_dir, "state-dir"), (str(cfg.backup_dir), "state-dir"), (str(cfg.staging_key), "staging-dir")]
    out += [(src, "the config") for src in cfg.sources]
    out += [(cfg.hooks_dir, "hooks-dir")] + [(h, "hooks-dir") for h in _hooks(cfg.hooks_dir)]
    out += [(cfg.k3s_bin, "k3s-bin"), (_argv0(cfg), "restart-command"), (cfg.kubeconfig, "kubeconfig")]
    return out


def problems(cfg: Config) -> list[Problem]:
    """Every path root would trust that someone else could change: for doctor (one FAIL each)."""
    found: list[Problem] = []
    for path, key in config_paths(cfg):
        p = path_problem(path, key)
        if p is not None and all(p.path != q.path for q in found):
            found.append(p)
    return found


def require(cfg: Config) -> None:
    """Refuse (exit 3) before anything is read or written, naming the first untrusted path and the fix."""
    found = problems(cfg)
    if found:
        raise SafetyRefusal(found[0].line())


def require_path(path: str, key: str) -> None:
    p = path_problem(path, key)
    if p is not None:
        raise SafetyRefusal(p.line())


def unknown_signer(kid: str, state: State) -> Optional[str]:
    """Why a rollback must not keep `kid` (the signer K3s has now, missing from the backup), or None. It may keep
    only a key that a step staged or the state knows: anything else came from outside k3srotd (a swapped
    staging file), and keeping it as verify-only would keep forged tokens valid."""
    known = set(state.keys)
    for step in (state.intent, state.last_step):
        if step is not None:
            known.update(step.before_kids, step.target_kids, step.snapshot.get("keys", {}))
    if kid in known:
        return None
    return (
        f"K3s signs with {kid}, which no k3srotd step staged and the state does not know; a rollback will not keep "
        "it. Find out where it came from, and restore the live key file from a backup by hand"
    )


def live_findings(lst: os.stat_result, st: Optional[os.stat_result], kf: Optional[KeyFile]) -> list[str]:
    """What status and doctor say about the live key file: `lst` its lstat, `st` its stat (None when the link
    leads nowhere), `kf` its keys as kube-apiserver reads them."""
    out = []
    if stat.S_ISLNK(lst.st_mode):
        out.append("is a symlink; whoever controls its target controls the signing key. Make it the real file")
    if st is not None and stat.S_IMODE(st.st_mode) & 0o077:
        out.append(f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0600: others can read the private keys; chmod 600 it")
    if st is not None and st.st_uid not in _trusted_uids():
        out.append(f"is owned by uid {st.st_uid}, not root")
    if kf is None:
        return out
    for b in kf.blocks:
        if b.algorithm == "RSA" and b.bits < 2048:
            role = "the signer" if b.kid == kf.signer.kid else "a verify key"
            out.append(f"holds RSA-{b.bits} key {b.kid} ({role}), under 2048 bits; rotate it out (rotate-now, prune)")
    for what in kf.ignored:
        out.append(f"holds {what}, which kube-apiserver ignores (neither verifies nor signs with it); kept as it is")
    return out


def live_report(path: Path, kf: Optional[KeyFile]) -> list[str]:
    """live_findings for the file at `path`, each line naming it."""
    try:
        lst = os.lstat(path)
    except OSError:
        return []
    try:
        st: Optional[os.stat_result] = os.stat(path)
    except OSError:
        st = None
    return [f"{path}: {f}" for f in live_findings(lst, st, kf)]
