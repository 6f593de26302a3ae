"""What root trusts, as the config names it (each path checked by node/ownership.py), and what status and doctor
say about the live key file and a signer no step staged.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from k3srotd.errors import SafetyRefusal
from k3srotd.node.ownership import Problem, path_problem, trusted_uids

if TYPE_CHECKING:
    from k3srotd.config import Config
    from k3srotd.core.keys import KeyFile
    from k3srotd.core.model import State


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
    if st is not None and st.st_uid not in trusted_uids():
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
