"""External commands are data (argv lists) run by this one executor: timeout, exit code, captured output."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from typing import Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int  # -1 when it could not start, -9 when killed on timeout
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 5) -> str:
        """The last lines of its output, for a one-line reason."""
        text = (self.stderr.strip() + "\n" + self.stdout.strip()).strip()
        return " | ".join(text.splitlines()[-lines:])


def run(argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None) -> Result:
    """Run argv in its own process group; on timeout kill the whole group (a hung child must not linger)."""
    args = tuple(argv)
    if env is None:
        from k3srotd.output.notify import child_environ

        # k3s and systemctl must not speak to systemd as if they were k3srotd (NOTIFY_SOCKET, WATCHDOG_*)
        env = child_environ()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as e:
        return Result(args, -1, "", f"cannot run {args[0]}: {e.strerror}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Result(args, -9, out.decode(errors="replace"), err.decode(errors="replace"), timed_out=True)
    return Result(args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
