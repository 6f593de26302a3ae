"""How each fault kind of schedule.py is carried out on the emulated cluster, and undone when it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

from k3semu.harness import free_port

from chaos.schedule import Fault

if TYPE_CHECKING:
    from clusternode import ClusterNode

    from chaos.harness import ChaosRun

DISK = "2m"  # the tmpfs under each state-dir: room for state and backups, filled by disk_full


def mount_tmpfs(path: Path) -> bool:
    """A small tmpfs at `path` (root only); False where this machine does not allow it (then no disk_full)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(path)], capture_output=True, check=False
    )
    return proc.returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def fill(n: ClusterNode) -> bool:
    if not is_mount(n.state_dir):
        return False
    with contextlib.suppress(OSError), open(n.state_dir / ".chaos-fill", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return True


def unfill(n: ClusterNode) -> None:
    with contextlib.suppress(FileNotFoundError):
        (n.state_dir / ".chaos-fill").unlink()


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def add_fault(n: ClusterNode, name: str, spec: Any) -> None:
    faults = dict(n.server.faults())
    faults[name] = spec
    n.server.set_faults(faults)


def drop_fault(n: ClusterNode, name: str) -> None:
    faults = dict(n.server.faults())
    if faults.pop(name, None) is not None:
        n.server.set_faults(faults)


def k3s_pids(data_dir: Path) -> List[int]:
    """The K3s server processes of one data dir, found by their command line (a start that failed on a taken
    port removes the pid file of the one that serves, so the pid file alone can miss a running server)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "server" in cmd and str(data_dir) in cmd and any(x.endswith("/k3s") for x in cmd):
            out.append(p.pid)
    return out


def ensure_k3s(run: ChaosRun, i: int) -> None:
    """Start server i's K3s if no process of it runs (an injected stop, or a crash at start nobody restarted)."""
    srv = run.cluster[i].server
    if not k3s_pids(srv.data_dir) and not srv.is_ready():
        drop_fault(run.cluster[i], "start_stale")  # stale starts come only from k3srotd's own restarts
        srv.start(wait=False)


def _signal_daemon(run: ChaosRun, i: int, sig: int, hold: float) -> bool:
    n = run.cluster[i]
    if n.daemon is None or n.daemon.poll() is not None:
        return False
    os.kill(n.daemon.pid, sig)
    if sig == signal.SIGKILL:
        n.daemon.wait(timeout=10)
    run.later(hold, lambda: _restart_daemon(run, i))
    return True


def _restart_daemon(run: ChaosRun, i: int) -> None:
    n = run.cluster[i]
    if n.daemon is not None and n.daemon.poll() is None:
        run.later(1.0, lambda: _restart_daemon(run, i))  # still finishing its step after SIGTERM
        return
    n.daemon = None
    n.start_daemon()


def _manual(run: ChaosRun, f: Fault) -> bool:
    p = run.manual.get(f.server)
    if p is not None and p.poll() is None:
        return False  # one manual command at a time per server
    n = run.cluster[f.server]
    cmd = f.args["command"]
    argv = [cmd, "--yes"] if cmd == "rollback" else [cmd]
    if cmd in ("rotate-now", "rollback"):
        argv.append("--ignore-window")
    log = n.root / f"manual-{len(run.manual_logs)}-{cmd}.log"
    run.manual_logs.append(log)
    run.manual[f.server] = n.start_bg(*argv, log=log)
    run.manual_procs.append(run.manual[f.server])
    return True


def _signal_manual(run: ChaosRun, f: Fault, sig: int) -> bool:
    p = run.manual.get(f.server)
    if p is None or p.poll() is not None:
        return False
    os.kill(p.pid, sig)
    return True


def _k3s_stop(run: ChaosRun, f: Fault) -> bool:
    srv = run.cluster[f.server].server
    if srv.pid is None:
        return False
    a = time.time()
    run.held_down.add(f.server)
    srv.stop()
    run.observer.injected_down(f.server, a, time.time())

    def back() -> None:
        run.held_down.discard(f.server)
        ensure_k3s(run, f.server)

    run.later(f.hold, back)
    return True


def _api_cut(run: ChaosRun, f: Fault) -> bool:
    n = run.cluster[f.server]
    if n.settings["k3s-server-url"] != n.server.url:
        return False
    n.write_config(k3s_server_url=f"https://127.0.0.1:{closed_port()}")
    _hup(n)

    def back() -> None:
        n.write_config(k3s_server_url=n.server.url)
        _hup(n)

    run.later(f.hold, back)
    return True


def _hup(n: ClusterNode) -> None:
    if n.daemon is not None and n.daemon.poll() is None:
        n.daemon.send_signal(signal.SIGHUP)


def _disk_full(run: ChaosRun, f: Fault) -> bool:
    n = run.cluster[f.server]
    if not fill(n):
        return False
    run.later(f.hold, lambda: unfill(n))
    return True


def skew_file(n: ClusterNode) -> Path:
    """Seconds the server's k3srotd clock is off by, read at every look at the time (tests/k3srotd_test_main.py)."""
    return n.root / "clock-skew"


def _clock_skew(run: ChaosRun, f: Fault) -> bool:
    path = skew_file(run.cluster[f.server])
    path.write_text(f"{f.args['seconds']}\n")  # stepped at once, while k3srotd runs (as NTP steps a clock)
    run.later(f.hold, lambda: path.write_text("0\n"))
    return True


EMULATOR = {
    "k3s_crash_at_start": ("crash_at_start", lambda f: {"times": 1}),
    "k3s_slow_start": ("slow_start", lambda f: {"times": 1, "seconds": f.args["seconds"]}),
    "k3s_restart_stale": ("start_stale", lambda f: {"times": 1}),
    "reply_lost": ("reply_lost", lambda f: {"times": 1}),
}


def inject(run: ChaosRun, f: Fault) -> bool:
    """Carry out fault f; False when it cannot apply now (e.g. no manual command to kill): it is skipped."""
    k = f.kind
    if k == "daemon_kill9":
        return _signal_daemon(run, f.server, signal.SIGKILL, f.hold)
    if k == "daemon_term":
        return _signal_daemon(run, f.server, signal.SIGTERM, f.hold)
    if k == "manual":
        return _manual(run, f)
    if k == "manual_kill9":
        return _signal_manual(run, f, signal.SIGKILL)
    if k == "manual_term":
        return _signal_manual(run, f, signal.SIGTERM)
    if k == "k3s_stop":
        return _k3s_stop(run, f)
    if k == "api_cut":
        return _api_cut(run, f)
    if k == "disk_full":
        return _disk_full(run, f)
    if k == "clock_skew":
        return _clock_skew(run, f)
    name, spec = EMULATOR[k]
    add_fault(run.cluster[f.server], name, spec(f))
    return True


def kill_leftovers(root: Path) -> None:
    """Every process of the run still alive at its end: k3s-restart helpers left by a killed daemon (they run on,
    as `systemctl restart` would), K3s servers started by them, manual commands."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if p.pid != os.getpid() and any(x.startswith(str(root) + "/") for x in cmd):
            with contextlib.suppress(psutil.Error):
                p.kill()


def running(p: Optional[subprocess.Popen]) -> bool:
    return p is not None and p.poll() is None
