"""sd_notify over a real AF_UNIX datagram socket, through both the direct protocol and python-systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

from k3srotd.output.notify import Notifier, child_environ, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


def _python_with_systemd() -> Optional[str]:
    """A Python that imports python-systemd: this one, else the distribution's (Debian's python3-systemd, which
    tests/run installs, is not in the venv: it builds only against libsystemd's headers)."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([python, "-c", "import systemd.daemon"], capture_output=True, check=False)
        if probe.returncode == 0:
            return python
    return None


PYTHON_WITH_SYSTEMD = _python_with_systemd() if os.path.exists("/usr/bin/python3") else None


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket like systemd's notify socket: (address for NOTIFY_SOCKET, socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    name = f"k3srotd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def messages(sock: socket.socket, n: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(n)]


CALLS = [
    ("ready", ("phase idle; next: rotate at 2024-01-06T02:00:00+01:00",)),
    ("status", ("publishing\nnew key",)),
    ("watchdog", ()),
    ("reloading", ()),
    ("extend_timeout", (90.5,)),
    ("stopping", ("finishing promote",)),
]


def drive(n: Notifier) -> None:
    for name, args in CALLS:
        assert getattr(n, name)(*args), name


EXPECTED = [
    "READY=1\nSTATUS=phase idle; next: rotate at 2024-01-06T02:00:00+01:00",
    "STATUS=publishing new key",  # one line: systemctl status shows one line
    "WATCHDOG=1",
    "RELOADING=1",
    "EXTEND_TIMEOUT_USEC=90500000",
    "STOPPING=1\nSTATUS=finishing promote",
]


def test_direct_protocol_path_socket(listener: tuple[str, socket.socket]) -> None:
    address, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": address}, prefer_python_systemd=False)
    assert n.enabled and n.backend == "socket"
    drive(n)
    assert messages(sock, len(EXPECTED)) == EXPECTED


def test_direct_protocol_abstract_socket(abstract_listener: tuple[str, socket.socket]) -> None:
    address, sock = abstract_listener
    n = Notifier.from_env({"NOTIFY_SOCKET": address}, prefer_python_systemd=False)
    assert n.backend == "socket"
    assert n.ready()
    assert messages(sock, 1) == ["READY=1"]


def test_an_injected_environment_always_uses_the_direct_protocol(listener: tuple[str, socket.socket]) -> None:
    """libsystemd reads NOTIFY_SOCKET from the process environment, so another address cannot go through it."""
    address, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.backend == "socket"
    assert n.watchdog()
    assert messages(sock, 1) == ["WATCHDOG=1"]


@pytest.mark.skipif(PYTHON_WITH_SYSTEMD is None, reason="no Python here imports python-systemd (systemd.daemon)")
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_python_systemd_path(
    kind: str,
    listener: tuple[str, socket.socket],
    abstract_listener: tuple[str, socket.socket],
) -> None:
    """The daemon's own process with python-systemd: a child process, as libsystemd reads its environment."""
    assert PYTHON_WITH_SYSTEMD is not None
    address, sock = listener if kind == "path" else abstract_listener
    script = (
        "from k3srotd.output.notify import Notifier\n"
        "n = Notifier.from_env()\n"
        "assert n.backend == 'python-systemd', n.backend\n"
        f"for name, args in {CALLS!r}:\n"
        "    assert getattr(n, name)(*args), name\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": address}
    run = subprocess.run([PYTHON_WITH_SYSTEMD, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert messages(sock, len(EXPECTED)) == EXPECTED


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled and n.backend == "none"
    assert n.ready() is False
    assert n.watchdog() is False
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}).backend == "none"


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")}, prefer_python_systemd=False)
    assert n.watchdog() is False
    assert Notifier("vsock:2:1234").ready() is False


WATCHDOG = [
    ({}, None),
    ({"WATCHDOG_USEC": "60000000"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "500000"}, 0.25),
]


@pytest.mark.parametrize(("env", "expected"), WATCHDOG)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.0


def test_child_environ_drops_the_notify_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/usr/bin"}
    assert child_environ(env) == {"PATH": "/usr/bin"}
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/y")
    assert "NOTIFY_SOCKET" not in child_environ()
    assert child_environ()["PATH"] == os.environ["PATH"]
