"""`k3s-restart --data-dir D [--timeout SECONDS]`: what `systemctl restart k3s` does, without systemd.

Stops the server of D (pid in D/emulator/server.pid: SIGTERM, then SIGKILL after the timeout), starts it
again with the argv it saved in D/emulator/argv.json, detached (new session, output appended to
D/emulator/server.log), and exits 0 once the new process answers /readyz with the admin kubeconfig.
Exits 1 if it dies or is not ready within the timeout (the process is then left as it is, like a unit stuck
in `activating`); 2 on usage errors."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from .client import KubeClient

_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "INVOCATION_ID", "JOURNAL_STREAM")


def proc_state(pid: int) -> Optional[str]:
    """The /proc state letter, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def is_server_of(pid: int, data_dir: str) -> bool:
    """True when pid is an emulated `k3s server` for data_dir (guards against a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    for i, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "k3s" and argv[i + 1] == "server":
            break
    else:
        return False
    try:
        with open(os.path.join(data_dir, "emulator", "argv.json")) as f:
            saved = json.load(f)
        return saved.get("data_dir") == data_dir or data_dir in argv
    except (OSError, ValueError):
        return data_dir in argv


def read_pid(data_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(data_dir, "emulator", "server.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_server(data_dir: str, timeout: float) -> Optional[int]:
    pid = read_pid(data_dir)
    if pid is None or not alive(pid) or not is_server_of(pid, data_dir):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    return pid


def start_server(data_dir: str) -> subprocess.Popen:
    emu = os.path.join(data_dir, "emulator")
    with open(os.path.join(emu, "argv.json")) as f:
        saved = json.load(f)
    python = saved.get("python") or sys.executable
    if not os.path.exists(python):
        python = sys.executable
    log = open(os.path.join(emu, "server.log"), "ab")  # noqa: SIM115 - handed to the child
    # like `systemctl restart`, the new server does not inherit the caller's systemd plumbing
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV and not k.startswith("LISTEN_")}
    try:
        proc = subprocess.Popen(
            [python, *saved["argv"]],
            env=env,
            cwd=saved.get("cwd") or "/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    # as systemd knows the MainPID at once: the server writes the same pid when its imports are done
    with open(os.path.join(emu, "server.pid"), "w") as f:
        f.write(f"{proc.pid}\n")
    return proc


def wait_ready(data_dir: str, proc: subprocess.Popen, timeout: float) -> Optional[str]:
    """None when ready, else the reason."""
    with open(os.path.join(data_dir, "emulator", "argv.json")) as f:
        kubeconfig = json.load(f)["kubeconfig"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"k3s server exited with status {proc.returncode} during start"
        try:
            if KubeClient(kubeconfig).ready(timeout=1.0):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: kubeconfig half-written
            pass
        time.sleep(0.05)
    return f"k3s server (pid {proc.pid}) not ready after {timeout:g}s"


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            return b"".join(f.read().splitlines(keepends=True)[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="k3s-restart", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    data_dir = os.path.abspath(args.data_dir)
    if not os.path.exists(os.path.join(data_dir, "emulator", "argv.json")):
        print(f"k3s-restart: {data_dir}/emulator/argv.json not found: the server never started", file=sys.stderr)
        return 2
    stop_server(data_dir, args.timeout)
    proc = start_server(data_dir)
    reason = wait_ready(data_dir, proc, args.timeout)
    if reason is None:
        print(f"k3s-restart: k3s server ready (pid {proc.pid})")
        return 0
    tail = _tail(os.path.join(data_dir, "emulator", "server.log"))
    print(f"k3s-restart: {reason}; last log lines:\n{tail}", file=sys.stderr)
    return 1
