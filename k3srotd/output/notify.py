"""sd_notify: tell systemd (Type=notify) that the daemon is ready, what it is doing, and that it is alive.

`Notifier.from_env()` reads NOTIFY_SOCKET; without it (not under systemd) every call does nothing. Messages go
through python-systemd's `systemd.daemon.notify` when that module imports and the address is the process's
own NOTIFY_SOCKET (libsystemd reads it from the environment), else as one datagram to the socket directly:
a path, or an abstract socket written with a leading '@'. A failed send is reported as False, never raised:
the daemon must not stop because systemd went away.

Children must not inherit NOTIFY_SOCKET (with NotifyAccess=main systemd would ignore, and log, anything they
send): start them with `child_environ()`.
"""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any, Callable, Mapping, Optional

# What systemd sets for the service's main process only.
SYSTEMD_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _python_systemd_notify() -> Optional[Callable[..., Any]]:
    try:
        # By name: the repository's own systemd/ folder (the unit) would shadow the package for type checkers.
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify: Optional[Callable[..., Any]] = getattr(daemon, "notify", None)
    return notify


class Notifier:
    """Sends sd_notify messages to `address`; a Notifier without an address does nothing."""

    def __init__(self, address: Optional[str], use_python_systemd: bool = False) -> None:
        self.address = address or None
        self._send_with_module = _python_systemd_notify() if use_python_systemd and self.address else None

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, prefer_python_systemd: bool = True) -> Notifier:
        """From NOTIFY_SOCKET in `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        own = address is not None and address == os.environ.get("NOTIFY_SOCKET")
        return cls(address, use_python_systemd=prefer_python_systemd and own)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def backend(self) -> str:
        """'none', 'python-systemd' or 'socket': how messages are sent."""
        if self.address is None:
            return "none"
        return "python-systemd" if self._send_with_module is not None else "socket"

    def ready(self, status: Optional[str] = None) -> bool:
        """Start-up is done: config and state are loaded. Optionally with the first STATUS=."""
        return self.send("READY=1", *([_status_line(status)] if status is not None else []))

    def reloading(self) -> bool:
        """Reloading the config (SIGHUP); send ready() when done."""
        return self.send("RELOADING=1")

    def status(self, text: str) -> bool:
        """The one-line status `systemctl status` shows, e.g. the phase and the next action with its time."""
        return self.send(_status_line(text))

    def watchdog(self) -> bool:
        """The keep-alive ping; send it every `watchdog_interval()` seconds."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        """Shutting down (SIGTERM); a step under way still runs to its end or its rollback."""
        return self.send("STOPPING=1", *([_status_line(status)] if status is not None else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before systemd's start or stop timeout fires (EXTEND_TIMEOUT_USEC)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one message; True if it was sent (False also when disabled)."""
        if self.address is None:
            return False
        message = "\n".join(assignments)
        if self._send_with_module is not None:
            try:
                return bool(self._send_with_module(message))
            except (OSError, ValueError):
                return False
        return _send_datagram(self.address, message.encode("utf-8"))


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(str(text).split())


def _send_datagram(address: str, data: bytes) -> bool:
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        return False  # e.g. vsock: addresses, which a K3s server's systemd does not hand to a service
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(data, target)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Optional[Mapping[str, str]] = None, pid: Optional[int] = None) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings, or None when systemd does not watch this process.

    Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; WATCHDOG_PID, when set, must be this process.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def child_environ(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of the environment for a child process, without systemd's notify and watchdog variables."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in SYSTEMD_NOTIFY_VARS}
