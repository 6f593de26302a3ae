"""doctor's look at the host: which `k3s server` process is this node's K3s, and what the restart-command restarts.

Each verdict is a pure function of what was read (tested with tables of literal cases); the readers beside them
do the reading and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from k3srotd.commands.checks import FAIL, PASS, SKIP, Verdict

# --- the K3s process


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A `k3s server` process as seen from here."""

    pid: int
    mount_ns: Optional[str]  # /proc/<pid>/ns/mnt, e.g. "mnt:[4026531832]"; None when it cannot be read
    data_dir: Optional[str]  # from its argv; None when its argv does not say (K3s may rewrite its title)
    holds_ours: bool  # it has a file open under our data dir (the datastore, the certificates)


def process_verdict(found: Sequence[Candidate], our_ns: Optional[str], ours: str) -> Verdict:
    """This node's K3s is a `k3s server` in our own mount namespace that runs our data dir: one in a container (its
    own mount namespace) or of another data dir is not ours, even with the same path."""
    ignored: list[str] = []
    for c in found:
        same_ns = c.mount_ns is None or our_ns is None or c.mount_ns == our_ns
        holds = c.data_dir == ours if c.data_dir is not None else c.holds_ours
        if same_ns and holds:
            return PASS, f"K3s running: pid {c.pid}, data dir {ours}"
        # named only when it could pass for ours; a K3s of another data dir here is simply another K3s
        if not same_ns and (holds or c.data_dir is None):
            ignored.append(f"pid {c.pid} runs in another mount namespace (a container)")
        elif same_ns and c.data_dir is None:
            ignored.append(f"pid {c.pid} holds no file under it")
    why = f" ({'; '.join(ignored)}: not this node's K3s)" if ignored else ""
    return FAIL, f"K3s running: no `k3s server` process of {ours} in this host's mount namespace{why}; start K3s"


def _mount_ns(pid: object) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def candidates(k3s_bin: str, ours: str) -> list[Candidate]:
    """Every `k3s server` process, with its mount namespace, data dir and whether it holds a file under ours."""
    import psutil

    from k3srotd.node.k3s import server_processes

    out = []
    for proc, data_dir in server_processes(os.path.basename(k3s_bin)):
        holds = False
        if data_dir is None:
            try:
                holds = any(f.path.startswith(ours + os.sep) for f in psutil.Process(proc.pid).open_files())
            except psutil.Error:
                holds = False
        real = os.path.realpath(data_dir) if data_dir is not None else None
        out.append(Candidate(proc.pid, _mount_ns(proc.pid), real, holds))
    return out


def k3s_process(k3s_bin: str, data_dir: str) -> Verdict:
    ours = os.path.realpath(data_dir)
    return process_verdict(candidates(k3s_bin, ours), _mount_ns("self"), ours)


# --- the restart-command


def systemctl_unit(argv: Sequence[str]) -> Optional[str]:
    """The unit of `systemctl [--options] restart UNIT`, else None."""
    if not argv or os.path.basename(argv[0]) != "systemctl":
        return None
    words = [a for a in argv[1:] if not a.startswith("-")]
    if len(words) == 2 and words[0] in ("restart", "try-restart", "reload-or-restart"):
        return words[1]
    return None


def unit_verdict(unit: str, returncode: int, stdout: str, stderr: str, k3s_running: bool) -> Verdict:
    """From `systemctl show -p LoadState -p ActiveState UNIT`: the unit exists and is active. When systemctl
    cannot answer (no systemd as PID 1: a container, a chroot), the check did not run."""
    if returncode != 0:
        why = (stderr.strip().splitlines() or [f"exit {returncode}"])[0]
        return SKIP, f"restart-command: systemctl cannot answer here ({why}); whether unit {unit} exists is not checked"
    props = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    load, active = props.get("LoadState", "?"), props.get("ActiveState", "?")
    if load == "not-found":
        return FAIL, f"restart-command: unit {unit} does not exist; set k3s-service (or restart-command) to K3s's unit"
    if load != "loaded":
        return FAIL, f"restart-command: unit {unit} is {load}; fix the unit, or set k3s-service or restart-command"
    if active == "active":
        return PASS, f"restart-command: systemctl restart {unit} (loaded, active)"
    if not k3s_running:
        return SKIP, f"restart-command: unit {unit} is {active}, which follows from `K3s running` above"
    return FAIL, (
        f"restart-command: unit {unit} is {active} while K3s runs, so K3s was not started by it and a restart "
        "would start a second one; set k3s-service or restart-command to what runs K3s"
    )


def restart_command(argv: Sequence[str], k3s_running: bool) -> Verdict:
    import shutil

    from k3srotd.node import runner

    exe = argv[0]
    if not (shutil.which(exe) or os.access(exe, os.X_OK)):
        return FAIL, f"restart-command: {exe} not found; set restart-command"
    unit = systemctl_unit(argv)
    if unit is None:
        return PASS, f"restart-command: {' '.join(argv)} (the program exists; what it restarts is not checked)"
    res = runner.run([exe, "show", "-p", "LoadState", "-p", "ActiveState", unit], timeout=20)
    return unit_verdict(unit, res.returncode, res.stdout, res.stderr, k3s_running)
