"""An engine test Node (tests/k3srotd_node.py) whose K3s config names a public issuer, plus helpers to watch a
k3srotd run in the background."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from k3semu import keys as emu_keys
from k3semu.harness import EmulatedServer, subprocess_env

try:
    from k3srotd_node import K3SROTD, Node  # tests/k3srotd_node.py: the engine tests' Node, shared
except ImportError:  # older tree: Node still lives in tests/engine/conftest.py
    _spec = importlib.util.spec_from_file_location("engine_node", Path(__file__).parents[1] / "engine" / "conftest.py")
    assert _spec is not None and _spec.loader is not None
    _engine = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_engine)
    Node = _engine.Node

ISSUER_POLL = "200ms"  # between promote-gate checks in rotate-now (issuer-poll; production: 10s)


def wait_until(cond: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class IdNode(Node):  # type: ignore[misc,valid-type]
    """The emulated K3s server reads the same K3s config file as k3srotd (k3s-config)."""

    def __init__(self, root: Path, server: EmulatedServer, env: dict[str, str]) -> None:
        super().__init__(root, server)
        self.settings["issuer-poll"] = ISSUER_POLL
        self.write_config()
        self.env = dict(env)
        self.bg: Optional[subprocess.Popen[str]] = None
        self.bg_log = root / "k3srotd-bg.log"

    def write_k3s_config(self, **apiserver_args: str) -> None:
        args = [f"{k.replace('_', '-')}={v}" for k, v in apiserver_args.items()]
        self.k3s_config.write_text(yaml.safe_dump({"kube-apiserver-arg": args}))

    def k3srotd(self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 120) -> Any:
        return super().k3srotd(*args, env={**self.env, **(env or {})}, timeout=timeout)

    def start_bg(self, *args: str) -> subprocess.Popen[str]:
        """k3srotd in the background, its stderr (JSON log lines) kept in bg_log."""
        e = subprocess_env(self.env)
        e.pop("INVOCATION_ID", None)
        e.pop("JOURNAL_STREAM", None)
        log = open(self.bg_log, "w")  # noqa: SIM115 (closed with the process, in wait_bg)
        self.bg = subprocess.Popen(
            [*K3SROTD, "--config", str(self.config), *args],
            env=e,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        return self.bg

    def wait_bg(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.bg is not None
        out, _ = self.bg.communicate(timeout=timeout)
        err = self.bg_log.read_text()
        self.logs.append(err)
        return subprocess.CompletedProcess(self.bg.args, self.bg.returncode, out, err)

    def stop_bg(self) -> subprocess.CompletedProcess[str]:
        assert self.bg is not None
        if self.bg.poll() is None:
            self.bg.terminate()
        return self.wait_bg(20)

    def status_text(self) -> str:
        return str(self.ok("status").stdout)

    def signing_kid(self) -> str:
        """The kid K3s signs with now: its service.current.key (what a token's header would say)."""
        return str(emu_keys.kid_of(emu_keys.public_keys(self.server.current_key.read_bytes())[0]))

    def cluster_jwks(self) -> dict[str, Any]:
        return dict(self.server.jwks())
