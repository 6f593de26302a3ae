"""Debian 12 or 13 under a real systemd and journald, in systemd-nspawn, for the integration tests.

A plain module (no pytest in here). Every container test boots from a cached root (debian_root.py): tests/nspawn
(Debian 12, and 13 for the .deb), tests/daemon/test_unit_nspawn.py, tests/emulator/test_k3s_service_nspawn.py.

    root = rootfs()                              # Debian 12, debootstrapped once, cached (debian_root.py)
    with Container(root, binds_ro={"/host/dist": "/srv/dist"}) as c:    # boots a throwaway copy
        c.run("apt-get", "install", "-y", "/srv/dist/k3srotd_0.1.0_all.deb")
        c.run("systemctl", "is-active", "k3srotd", check=False).stdout
        c.journal(after=cursor, K3SROTD_EVENT="publish.done")

Why it is done this way (the host has no systemd as PID 1 and no D-Bus):
- Booted with `systemd-nspawn -b --register=no --keep-unit --console=pipe`; without those flags nspawn wants
  machined over D-Bus. `machinectl` and `systemd-run -M` do not work, so commands run through
  `nsenter -t <container's PID 1> -a`, with a clean environment.
- Each container boots a throwaway copy of the cached root: an overlayfs whose upper layer is deleted at the
  end (milliseconds), or, where overlayfs cannot be mounted, nspawn's own `--ephemeral` (a full copy of
  the 300 MB root on file systems without snapshots: seconds).
- Each container gets a cgroup of its own (`k3srotd-nspawn-<name>` beside the caller's), so that two test
  runs on one machine never share nspawn's `payload`/`supervisor` cgroups, and so that whatever is left
  in it at the end can be killed and the folders removed.
- Without --private-network the container shares the host's loopback: servers inside must use free ports.
- journald in systemd 252 skips the first match of `journalctl --after-cursor` with field matches:
  `journal()` filters by field after reading instead.
- A command run through nsenter while the container shuts down can stop itself and hang the shutdown:
  every command is waited for (and its process group killed on timeout) before the container stops.
- Debian 13's systemd refuses this host's mixed cgroup v1/v2 setup: its containers run with
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 (cgroup v2 only). Debian 12's keep nspawn's default.

Environment: see debian_root.py (where the cached roots live, the mirror, a prepared root).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from nspawn.debian_root import INCLUDE, SUITE, SUITES, codename, rootfs, rootfs_key

__all__ = ["INCLUDE", "SUITE", "SUITES", "Container", "ContainerError", "manifest", "rootfs", "rootfs_key"]

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_counter = itertools.count()
_live: List[Container] = []
atexit.register(lambda: stop_all())  # containers still running when the interpreter exits (an interrupted run)


class ContainerError(RuntimeError):
    pass


def missing_prerequisites() -> Optional[str]:
    """Why containers cannot run here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn, nsenter)"
    for tool in ("systemd-nspawn", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt packages systemd-container, util-linux)"
    if not os.environ.get("K3SROTD_NSPAWN_ROOTFS") and shutil.which("debootstrap") is None:
        return "needs debootstrap"
    return None


# --- cgroups ----------------------------------------------------------------------------------------------


def _cgroup_dirs(leaf: str) -> List[Path]:
    """For each cgroup hierarchy that nspawn uses (cgroup2, and systemd's named v1 one on a hybrid host),
    the folder `leaf` beside the caller's own cgroup."""
    dirs: List[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            mount = Path("/sys/fs/cgroup/unified")
            if not (mount / "cgroup.procs").exists():
                mount = Path("/sys/fs/cgroup")
        elif controllers == "name=systemd":
            mount = Path("/sys/fs/cgroup/systemd")
        else:
            continue
        if (mount / "cgroup.procs").exists():
            dirs.append(mount / path.lstrip("/") / leaf)
    return dirs


def _cgroup_pids(folder: Path) -> List[int]:
    pids: List[int] = []
    for procs in folder.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup(folder: Path) -> None:
    if not folder.exists():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


# --- one booted container ---------------------------------------------------------------------------------


def _children(pid: int) -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            yield int(entry), comm


class Container:
    """A booted throwaway copy of `root`. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        root: Path,
        binds_ro: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None,
        boot_timeout: float = 90.0,
    ) -> None:
        self.root = Path(root)
        self.binds_ro = dict(binds_ro or {})
        self.name = name or f"k3srotd-{os.getpid()}-{next(_counter)}"
        self.boot_timeout = boot_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.workdir / "console.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.leader = 0
        self.state = ""
        self.boot_seconds = 0.0
        self._merged: Optional[Path] = None
        self._cgroups = _cgroup_dirs(f"k3srotd-nspawn-{self.name}")
        self._running: Dict[int, subprocess.Popen[str]] = {}

    # -- life cycle

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _mount_overlay(self) -> Optional[Path]:
        upper, work, merged = (self.workdir / d for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            d.mkdir()
        opts = f"lowerdir={self.root},upperdir={upper},workdir={work}"
        out = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True, text=True
        )
        return merged if out.returncode == 0 else None

    def start(self) -> None:
        t0 = time.monotonic()
        self._merged = self._mount_overlay()
        argv = ["systemd-nspawn", "-b", "-M", self.name, "--register=no", "--keep-unit", "--console=pipe"]
        argv += ["-D", str(self._merged)] if self._merged else ["-D", str(self.root), "--ephemeral"]
        for host, inside in self.binds_ro.items():
            argv.append(f"--bind-ro={host}:{inside}")
        cgroups = []
        for d in self._cgroups:
            try:
                d.mkdir(exist_ok=True)
                cgroups.append(d)
            except OSError:
                pass
        self._cgroups = cgroups

        def enter_cgroup() -> None:  # in the child, before exec: nspawn then makes its cgroups below ours
            for d in cgroups:
                with contextlib.suppress(OSError):
                    (d / "cgroup.procs").write_text(str(os.getpid()))

        env = dict(os.environ)
        if codename(self.root) not in ("", "bookworm"):  # trixie's systemd: cgroup v2 only (module doc)
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=enter_cgroup,
            )
        _live.append(self)
        try:
            self._wait_for_leader(t0)
            self._wait_for_boot(t0)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0

    def _wait_for_leader(self, t0: float) -> None:
        assert self.proc is not None
        while time.monotonic() - t0 < self.boot_timeout:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console()}")
            for pid, comm in _children(self.proc.pid):
                if comm == "systemd":
                    self.leader = pid
                    return
            time.sleep(0.05)
        raise ContainerError(f"no systemd in the container after {self.boot_timeout:.0f}s:\n{self.console()}")

    def _wait_for_boot(self, t0: float) -> None:
        while time.monotonic() - t0 < self.boot_timeout:
            out = self.run("systemctl", "is-system-running", check=False, timeout=30)
            self.state = out.stdout.strip()
            if self.state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise ContainerError(f"boot did not finish (state {self.state!r}):\n{self.console()}")

    def stop(self) -> None:
        """End our commands, then the container; remove its cgroups, the overlay and the temporary folder."""
        for pid, p in list(self._running.items()):
            _kill_group(p)
            self._running.pop(pid, None)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # the second one terminates at once
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for d in self._cgroups:  # anything left in our cgroups is ours
            for pid in _cgroup_pids(d):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_cgroup_pids(d) for d in self._cgroups) and time.monotonic() < deadline:
            time.sleep(0.1)
        for d in self._cgroups:
            _remove_cgroup(d)
        if self._merged is not None:
            subprocess.run(["umount", "-l", str(self._merged)], capture_output=True)
            self._merged = None
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def console(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    # -- commands inside

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120.0,
        input: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container, as root, in a clean environment; wait for it."""
        envs = [f"PATH={CLEAN_PATH}", "LANG=C.UTF-8", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive"]
        envs += [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *envs, *argv]
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._running[p.pid] = p
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(p)
            out, err = p.communicate()
            raise ContainerError(f"timed out after {timeout}s: {' '.join(argv)}\n{out}\n{err}") from None
        finally:
            self._running.pop(p.pid, None)
        result = subprocess.CompletedProcess(list(argv), p.returncode, out, err)
        if check and p.returncode != 0:
            raise ContainerError(f"exit {p.returncode}: {' '.join(argv)}\nstdout:\n{out}\nstderr:\n{err}")
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **kwargs)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat >"$1"; chmod "$2" "$1"', "sh", path, mode, input=text)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def show(self, unit: str, *props: str) -> Dict[str, str]:
        """`systemctl show` properties of a unit as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ContainerError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    # -- the journal

    def cursor(self) -> str:
        """The cursor of the newest journal entry: pass it to journal(after=...) to see only what follows."""
        self.run("journalctl", "--sync", check=False)
        out = self.run("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout.strip()
        return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out else ""

    def journal(self, after: str = "", unit: str = "", **fields: str) -> List[Dict[str, Any]]:
        """Journal entries (JSON) after a cursor whose fields equal `fields`. Matches are applied here, not by
        journalctl (see the module doc)."""
        self.run("journalctl", "--sync", check=False)
        argv = ["journalctl", "-o", "json", "--all", "--no-pager"]  # --all: fields over 4 KiB in full, not null
        if after:
            argv.append(f"--after-cursor={after}")
        if unit:
            argv += ["-u", unit]
        out = self.run(*argv).stdout
        entries = []
        for line in out.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if all(entry.get(k) == v for k, v in fields.items()):
                entries.append(entry)
        return entries


def _kill_group(p: subprocess.Popen[Any]) -> None:
    """nsenter forks to enter the PID namespace: kill its whole process group, not just nsenter."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)


def stop_all() -> None:
    """Stop every container this process started and has not stopped (e.g. after an interrupted run)."""
    for c in list(_live):
        c.stop()


def manifest(container: Container, *paths: str) -> Dict[str, str]:
    """path -> type, mode, owner, size, mtime and content hash (or link target), for every file and folder
    below `paths` inside the container: compare two of them to prove nothing changed."""
    script = r"""
for top in "$@"; do
  [ -e "$top" ] || [ -L "$top" ] || continue
  find "$top" -printf '%p\t%y\t%m\t%u:%g\t%s\t%T@\t%l\n' | sort | while IFS="$(printf '\t')" read -r p y rest; do
    if [ "$y" = f ]; then h=$(sha256sum "$p" | cut -d' ' -f1); else h=-; fi
    printf '%s\t%s\t%s\t%s\n' "$p" "$y" "$rest" "$h"
  done
done
"""
    out = container.run("bash", "-c", script, "manifest", *paths).stdout
    result = {}
    for line in out.splitlines():
        path, rest = line.split("\t", 1)
        result[path] = rest
    return result
