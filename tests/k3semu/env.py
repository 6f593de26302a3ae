"""The environment and ports of emulated servers started by tests (re-exported by harness.py)."""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path
from typing import Dict, Optional

BIN_DIR = Path(__file__).resolve().parent / "bin"


class PortError(RuntimeError):
    pass


# Coverage's subprocess measurement starts in every Python process that inherits these: 0.2 s of CPU at each start
# of an emulator script (k3s, rotate-ca, k3s-restart), which measures nothing. The tests' k3srotd launcher puts
# them back for k3srotd alone.
COVERAGE_VARS = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
COVERAGE_ASIDE = "K3SROTD_TEST_"


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for running the emulator's scripts: this interpreter's directory first on PATH
    (the scripts run `#!/usr/bin/env python3` and need cryptography and PyYAML) and the emulator on PATH."""
    env = dict(os.environ)
    for name in COVERAGE_VARS:  # kept aside: only k3srotd's own processes measure (tests/k3srotd_test_main.py)
        value = env.pop(name, None)
        if value is not None:
            env[COVERAGE_ASIDE + name] = value
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), str(BIN_DIR), env.get("PATH", "")])
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


PORT_BAND = 1500  # ports per pytest-xdist worker, below the kernel's ephemeral range (32768 and up)
_next_port = [random.randrange(PORT_BAND)]


def free_port() -> int:
    """A free loopback port for a test server. Not one the kernel hands out (bind to 0 gives a port any other
    process's next outgoing connection, or another worker's server, may take before ours binds it), but one
    from this worker's own band below the ephemeral range, checked free."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    base = 20000 + (int(worker) % 8 if worker.isdigit() else 0) * PORT_BAND
    for _ in range(PORT_BAND):
        port = base + _next_port[0] % PORT_BAND
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PortError(f"no free port in {base}..{base + PORT_BAND - 1}")
