"""Hooks: the executables in `hooks-dir`, run after each completed or failed step.

Each executable regular file in the directory runs in lexical order of its name, one after the other, with
the daemon's environment (minus systemd's NOTIFY_SOCKET and WATCHDOG_* variables) plus:

    K3SROTD_EVENT       the step event: publish.done, promote.done, prune.done, rollback.done, step.failed
    K3SROTD_SIGNER_KID  the kid of the signing key after the step
    K3SROTD_KIDS        all kids, comma-separated, in file order (position 0 signs)
    K3SROTD_PHASE       idle, published or promoted

stdin is /dev/null, the working directory is /, stdout and stderr are captured together and logged (the last
64 KiB). A hook that runs longer than the timeout gets SIGTERM, and SIGKILL two seconds later, sent to its
whole process group (each hook is started in a new session). A hook that fails, times out or cannot start is
logged as a warning; it never fails the step and never stops the hooks after it.

Names starting with '.' and files that are not executable are skipped (logged at debug). As a hook runs as
root, k3srotd refuses, with a warning, a hooks-dir or hook file that is writable by group or others or that
is owned by someone other than root or the user k3srotd runs as. Under the packaged systemd unit hooks run
inside its sandbox: most of the file system is read-only to them, /tmp is private, the network is reachable.

Example: /etc/k3srotd/hooks.d/50-webhook (root's, mode 0755) posts each step to a chat webhook; the URL comes
from the unit's environment (`systemctl edit k3srotd`: `[Service]` `Environment=WEBHOOK_URL=https://...`)::

    #!/bin/sh
    # Post each k3srotd step to a Slack/Mattermost-style webhook: {"text": "..."}.
    set -eu
    text="$(uname -n): k3srotd $K3SROTD_EVENT, phase $K3SROTD_PHASE, signer $K3SROTD_SIGNER_KID, keys $K3SROTD_KIDS"
    exec curl --fail --silent --show-error --max-time 20 \\
        -H 'Content-Type: application/json' --data "{\\"text\\": \\"$text\\"}" "$WEBHOOK_URL"
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from k3srotd.output.notify import child_environ

if TYPE_CHECKING:
    from k3srotd.output.logs import Log

OUTPUT_LIMIT = 64 * 1024
KILL_GRACE = 2.0


@dataclass(frozen=True)
class HookResult:
    path: Path
    returncode: Optional[int]  # None: killed after the timeout, or never started
    timed_out: bool
    output: str
    duration: float
    error: Optional[str] = None  # why it could not start

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


def _unsafe(st: os.stat_result) -> Optional[str]:
    """Why a file or folder with this status may not supply code to run as us, or None."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root or uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def hook_environ(
    event: str, signer_kid: str, kids: Sequence[str], phase: str, environ: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    env = child_environ(environ)
    env.update(
        K3SROTD_EVENT=event,
        K3SROTD_SIGNER_KID=signer_kid,
        K3SROTD_KIDS=",".join(kids),
        K3SROTD_PHASE=phase,
    )
    return env


def find_hooks(hooks_dir: Path, log: Log) -> list[Path]:
    """The hooks to run, in order; what is skipped or refused is logged."""
    try:
        dir_stat = os.stat(hooks_dir)
    except FileNotFoundError:
        log.debug("hook.none", msg=f"no hooks: {hooks_dir} does not exist", hooks_dir=str(hooks_dir))
        return []
    except OSError as e:
        log.warning("hook.refused", msg=f"cannot read hooks-dir {hooks_dir}: {e.strerror}", hooks_dir=str(hooks_dir))
        return []
    if not stat.S_ISDIR(dir_stat.st_mode):
        log.warning("hook.refused", msg=f"hooks-dir {hooks_dir} is not a directory", hooks_dir=str(hooks_dir))
        return []
    why = _unsafe(dir_stat)
    if why:
        log.warning("hook.refused", msg=f"not running hooks from {hooks_dir}: it is {why}", hooks_dir=str(hooks_dir))
        return []
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError as e:
        log.warning("hook.refused", msg=f"cannot list hooks-dir {hooks_dir}: {e.strerror}", hooks_dir=str(hooks_dir))
        return []
    found = []
    for name in names:
        path = hooks_dir / name
        if name.startswith("."):
            log.debug("hook.skip", msg=f"skipping {path}: a dotfile", hook=str(path))
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            log.debug("hook.skip", msg=f"skipping {path}: {e.strerror}", hook=str(path))
            continue
        if not stat.S_ISREG(st.st_mode):
            log.debug("hook.skip", msg=f"skipping {path}: not a regular file", hook=str(path))
            continue
        if not st.st_mode & 0o111:
            log.debug("hook.skip", msg=f"skipping {path}: not executable", hook=str(path))
            continue
        why = _unsafe(st)
        if why:
            log.warning("hook.refused", msg=f"not running hook {path}: it is {why}", hook=str(path))
            continue
        found.append(path)
    return found


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pid, sig)


def _tail(data: bytes) -> str:
    if len(data) > OUTPUT_LIMIT:
        cut = len(data) - OUTPUT_LIMIT
        data = f"[... first {cut} bytes cut]\n".encode() + data[-OUTPUT_LIMIT:]
    return data.decode("utf-8", "replace")


def run_hook(path: Path, env: Mapping[str, str], timeout: float) -> HookResult:
    """Run one hook; never raises for the hook's own failures."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd="/",
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as e:
        return HookResult(path, None, False, "", time.monotonic() - started, error=f"{e.strerror or e}")
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired as e:
            _killpg(proc.pid, signal.SIGKILL)
            try:
                out, _ = proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired as e2:
                # A child left the group (setsid) and holds the output pipe: stop reading, keep what came.
                out = e2.output or e.output or b""
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait()
    returncode = None if timed_out else proc.returncode
    return HookResult(path, returncode, timed_out, _tail(out or b""), time.monotonic() - started)


def run_hooks(
    hooks_dir: Path,
    event: str,
    signer_kid: str,
    kids: Sequence[str],
    phase: str,
    timeout: float,
    log: Log,
    environ: Optional[Mapping[str, str]] = None,
) -> list[HookResult]:
    """Run every hook for one step event, in order; log each outcome; never raise."""
    env = hook_environ(event, signer_kid, kids, phase, environ)
    results = []
    for path in find_hooks(Path(hooks_dir), log):
        result = run_hook(path, env, timeout)
        results.append(result)
        data = {
            "hook": str(path),
            "step_event": event,
            "signer_kid": signer_kid,
            "kids": list(kids),
            "duration": round(result.duration, 3),
            "output": result.output or None,
        }
        if result.ok:
            log.info("hook.done", msg=f"hook {path.name} for {event} succeeded", returncode=0, **data)
            continue
        if result.error is not None:
            why = f"could not start: {result.error}"
        elif result.timed_out:
            why = f"timed out after {timeout:g}s and was killed"
        elif result.returncode is not None and result.returncode < 0:
            why = f"was killed by signal {-result.returncode}"
        else:
            why = f"exited with status {result.returncode}"
        last = result.output.strip().splitlines()[-1:] if result.output.strip() else []
        msg = f"hook {path.name} for {event} {why}" + (f": {last[0]}" if last else "")
        log.warning("hook.failed", msg=msg, returncode=result.returncode, timed_out=result.timed_out, **data)
    return results
