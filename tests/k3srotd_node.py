"""Test support: an emulated K3s server node and k3srotd driven through its real CLI, as a subprocess.

A module with a unique name (not conftest) so that every test folder can import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml
from k3semu.harness import K3S_BIN, EmulatedServer, subprocess_env

# the real CLI, with the test switches (crash point, short leases) handed in: see k3srotd_test_main.py
K3SROTD = [sys.executable, str(Path(__file__).resolve().parent / "k3srotd_test_main.py")]


class Node:
    """One K3s server (the emulator) with a k3srotd config pointing at it; everything under one temp dir."""

    def __init__(self, root: Path, server: EmulatedServer) -> None:
        self.root = root
        self.server = server
        self.config = root / "k3srotd" / "config.yaml"
        self.state_dir = root / "state"
        self.staging_dir = root / "opt" / "k3s"
        self.k3s_config = root / "k3s-config.yaml"
        self.logs: list[str] = []  # everything k3srotd printed to stderr, for the key-material check
        self.settings: dict[str, Any] = {
            "k3s-bin": str(K3S_BIN),
            "k3s-config": str(self.k3s_config),
            "k3s-data-dir": str(server.data_dir),
            "k3s-server-url": server.url,
            "kubeconfig": str(server.kubeconfig),
            "restart-command": server.restart_command(timeout=30),
            "restart-timeout": "20s",
            "staging-dir": str(self.staging_dir),
            "state-dir": str(self.state_dir),
            "publish-wait": "0s",
            "grace-period": "24h",
            "unsafe-short-grace": True,  # the tests shorten grace-period below kube-apiserver's 1 h floor
            "hooks-dir": str(root / "hooks"),
            "log-format": "json",
            "automatic": True,  # the daemon tests drive its own steps; tests of the default set it false
        }
        self.write_config()

    def write_config(self, **overrides: Any) -> None:
        self.settings.update({k.replace("_", "-"): v for k, v in overrides.items()})
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(self.settings))

    def k3srotd(
        self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        e = subprocess_env(env or {})
        e.pop("INVOCATION_ID", None)
        e.pop("JOURNAL_STREAM", None)
        try:
            proc = subprocess.run(
                [*K3SROTD, "--config", str(self.config), *args],
                env=e,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as t:  # say what it was waiting for: the end of its log
            err = t.stderr.decode(errors="replace") if isinstance(t.stderr, bytes) else (t.stderr or "")
            what = f"k3srotd {' '.join(args)} still ran after {timeout}s"
            raise AssertionError(f"{what}; its log ends:\n{err[-6000:]}") from None
        self.logs.append(proc.stderr)
        return proc

    def popen(self, *args: str) -> subprocess.Popen:
        e = subprocess_env({})
        return subprocess.Popen(
            [*K3SROTD, "--config", str(self.config), *args],
            env=e,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        proc = self.k3srotd(*args, **kw)
        assert proc.returncode == 0, f"k3srotd {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}"
        return proc

    def status(self) -> dict[str, Any]:
        return json.loads(self.ok("status", "--json").stdout)

    def live_bytes(self) -> bytes:
        return self.server.service_key.read_bytes()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log record k3srotd wrote so far."""
        out = []
        for text in self.logs:
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("{"):
                    out.append(json.loads(line))
        return out


def mode(p: Path) -> int:
    return os.stat(p).st_mode & 0o777


# --- fixtures the test folders share (each conftest imports them)
@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """An emulated K3s server with a k3srotd config pointing at it; the server is stopped at teardown."""
    server = EmulatedServer(tmp_path / "k3s")
    server.start()
    try:
        yield Node(tmp_path, server)
    finally:
        server.stop()


@pytest.fixture
def no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No config path or crash point from the developer's shell reaches a test's k3srotd."""
    monkeypatch.delenv("K3SROTD_CONFIG", raising=False)
    monkeypatch.delenv("K3SROTD_TEST_CRASH_AT", raising=False)
