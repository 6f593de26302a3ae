"""Hooks: the executables in `hooks-dir`, run after each completed or failed step.

Each executable regular file in the directory runs in lexical order of its name, one after the other, with
the daemon's environment (minus systemd's NOTIFY_SOCKET and WATCHDOG_* variables) plus:

    K3SROTD_EVENT       the step event: publish.done, promote.done, prune.done, rollback.done, step.failed
    K3SROTD_SIGNER_KID  the kid of the signing key after the step
    K3SROTD_KIDS        all kids, comma-separated, in file order (position 0 signs)
    K3SROTD_PHASE       idle, published or promoted

stdin is /dev/null, the working directory is /, stdout and stderr are captured together and logged (the last
64 KiB). Each hook is started in a new session, and its whole process group is waited for, up to the timeout;
then the group gets SIGTERM, and SIGKILL two seconds later. Only a hook that itself runs past the timeout has
timed out: one that exits leaving children behind succeeded or failed by its own exit status (the children are
still killed at the timeout). A hook that fails, times out or cannot start is logged as a warning; it never
fails the step and never stops the hooks after it.

Each hook runs from a descriptor opened through the held hooks-dir descriptor and checked again (owner, mode,
an executable regular file) just before it runs, so the file checked is the file run: a script sees
/proc/self/fd/N as its $0.

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Mapping, Optional, Sequence

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


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count: they wait for their parent)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _tail(data: bytes, dropped: int = 0) -> str:
    if len(data) > OUTPUT_LIMIT or dropped:
        cut = dropped + max(0, len(data) - OUTPUT_LIMIT)
        data = f"[... first {cut} bytes cut]\n".encode() + data[-OUTPUT_LIMIT:]
    return data.decode("utf-8", "replace")


class _Reader(threading.Thread):
    """Reads the hook's output to EOF, keeping the last 64 KiB, and counting what was cut."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)  # a child that escaped the group may hold the pipe for ever
        self.stream = stream
        self.data = bytearray()
        self.dropped = 0

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: self.stream.read1(65536), b""):  # type: ignore[attr-defined]
                self.data += chunk
                if len(self.data) > 2 * OUTPUT_LIMIT:
                    self.dropped += len(self.data) - OUTPUT_LIMIT
                    del self.data[:-OUTPUT_LIMIT]

    def output(self) -> str:
        return _tail(bytes(self.data), self.dropped)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group, SIGKILL two seconds later to what is left; reap the hook."""
    _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and (proc.poll() is None or group_alive(proc.pid)):
        time.sleep(0.02)
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_hook(path: Path, env: Mapping[str, str], timeout: float, fd: Optional[int] = None) -> HookResult:
    """Run one hook; never raises for the hook's own failures. With `fd` (the hook opened and checked by
    find_hooks), the very file checked is executed, through /proc/self/fd, so a swapped path runs nothing else.
    The hook's whole process group is waited for until the timeout, then killed; only the hook itself running
    past the timeout is a timeout (a hook that exits and leaves children has not timed out)."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [str(path)],
            executable=f"/proc/self/fd/{fd}" if fd is not None else None,
            pass_fds=(fd,) if fd is not None else (),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd="/",
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as e:
        return HookResult(path, None, False, "", time.monotonic() - started, error=f"{e.strerror or e}")
    reader = _Reader(proc.stdout)  # type: ignore[arg-type] # PIPE was asked for
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
        while group_alive(proc.pid) and time.monotonic() - started < timeout:
            time.sleep(0.05)
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out or group_alive(proc.pid):
        _end_group(proc)
    reader.join(timeout=0.5)  # an escaped child (setsid) may hold the pipe: keep what came
    returncode = None if timed_out else proc.returncode
    return HookResult(path, returncode, timed_out, reader.output(), time.monotonic() - started)


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
    paths = find_hooks(Path(hooks_dir), log)
    held = _hold(Path(hooks_dir), log) if paths else None
    for path in paths:
        fd = _open_hook(held, path, log) if held is not None else None
        if fd is None:
            continue
        try:
            result = run_hook(path, env, timeout, fd)
        finally:
            os.close(fd)
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
    if held is not None:
        os.close(held)
    return results


def _hold(hooks_dir: Path, log: Log) -> Optional[int]:
    """hooks-dir as a held descriptor, checked on the descriptor: each hook is opened through it, so swapping the
    folder (or a folder above it) after the check changes nothing that runs."""
    try:
        fd = os.open(hooks_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        log.warning("hook.refused", msg=f"cannot open hooks-dir {hooks_dir}: {e.strerror}", hooks_dir=str(hooks_dir))
        return None
    why = _unsafe(os.fstat(fd))
    if why:
        os.close(fd)
        log.warning("hook.refused", msg=f"not running hooks from {hooks_dir}: it is {why}", hooks_dir=str(hooks_dir))
        return None
    return fd


def _open_hook(held: int, path: Path, log: Log) -> Optional[int]:
    """The hook opened through the held folder and checked again on its descriptor, just before it runs."""
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=held)
    except OSError as e:
        log.warning("hook.refused", msg=f"not running hook {path}: {e.strerror}", hook=str(path))
        return None
    st = os.fstat(fd)
    why = _unsafe(st)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        why = "no longer an executable regular file"
    if why:
        os.close(fd)
        log.warning("hook.refused", msg=f"not running hook {path}: it is {why}", hook=str(path))
        return None
    return fd
