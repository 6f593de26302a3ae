"""The chaos harness: an emulated cluster with a k3srotd daemon on every server, steps due on short intervals,
manual commands at random, and faults from a seeded schedule; the observer (observer.py) checks the invariants
all the while. `run(seed)` returns a Result; a failing one prints its seed and the command that replays it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE.parent / "cluster"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from clusternode import Cluster, ClusterNode  # noqa: E402

from chaos import faultops  # noqa: E402
from chaos.observer import Observer, Violation  # noqa: E402
from chaos.schedule import Fault, make  # noqa: E402
from k3srotd.config import SCHEMA  # noqa: E402

GRACE = 20.0  # seconds: grace-period while faults run (unsafe-short-grace: a test setting)
RESTART_SEC = 5.0  # K3s's systemd unit restarts a K3s that exited after this
CONVERGE_MAX = 240.0  # seconds after the faults stop within which the cluster must converge


def chaos_settings() -> Dict[str, Any]:
    """Every daemon's config during the faults: a rotation every 15 s of signing, a prune 20 s after a promote."""
    s: Dict[str, Any] = {
        "rotation-interval": "15s",
        "grace-period": f"{GRACE:g}s",
        "publish-wait": "3s",
        "restart-timeout": "20s",
        "max-splay": "0s",
    }
    for key in ("automatic", "unsafe-short-grace"):  # newer keys: set once the product knows them
        if key in SCHEMA:
            s[key] = True
    return s


# After the faults: no new rotation falls due; a prune due after the grace still goes, so convergence includes it.
QUIET = {"rotation-interval": "90d"}


@dataclass
class Result:
    seed: int
    servers: int
    schedule: List[Fault]
    injected: int = 0
    skipped: List[str] = field(default_factory=list)
    violations: List[Violation] = field(default_factory=list)
    converge_s: Optional[float] = None
    halts: List[str] = field(default_factory=list)
    t0: float = 0.0
    seen: str = ""  # what the observer saw: passes, keys that signed, manual commands' exit codes
    kept: Optional[Sequence[int]] = None
    explicit: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay(self) -> str:
        if self.explicit:
            return "pytest tests/chaos/test_chaos.py -k regression --runxfail (a schedule written out in the test)"
        keep = f" --keep {','.join(map(str, self.kept))}" if self.kept is not None else ""
        return f"python tests/chaos --seed {self.seed} --servers {self.servers} --length {self._length:g}{keep}"

    _length: float = 60.0

    def report(self) -> str:
        lines = [
            f"chaos seed {self.seed}: {self.servers} servers, {self.injected} faults injected, "
            f"{len(self.violations)} violation(s), converged in "
            + (f"{self.converge_s:.1f}s" if self.converge_s is not None else "never"),
            f"  observed: {self.seen}",
        ]
        lines += ["  " + v.line(self.t0) for v in self.violations]
        lines += [f"  halt: {h}" for h in self.halts]
        if self.violations:
            lines.append("  schedule:")
            lines += [f"    [{i}] {f.describe()}" for i, f in enumerate(self.schedule)]
            lines.append(f"  replay: {self.replay()}")
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, root: Path, seed: int, servers: int = 3, length: float = 60.0) -> None:
        self.root, self.seed, self.length = root, seed, length
        self.converge_max = CONVERGE_MAX
        self.cluster = Cluster(root, servers)
        self.manual: Dict[int, subprocess.Popen] = {}
        self.manual_logs: List[Path] = []
        self.manual_procs: List[subprocess.Popen] = []
        self.timers: List[tuple] = []  # (when, seq, what): restores and follow-ups
        self.seq = 0
        self.result = Result(seed, servers, [])
        self.result._length = length
        self.mounted: List[Path] = []
        self.held_down: set = set()  # servers whose K3s the harness stopped (systemctl stop: no Restart=)
        self.down_since: Dict[int, float] = {}
        self.observer = Observer([n.server for n in self.cluster], str(self.cluster.emu.datastore), GRACE, seed)

    # --- setup and teardown
    def start(self) -> None:
        for n in self.cluster:
            if faultops.mount_tmpfs(n.state_dir):
                self.mounted.append(n.state_dir)
            n.write_config(**{k.replace("-", "_"): v for k, v in chaos_settings().items()})
        self.cluster.start()
        for n in self.cluster:
            n.start_daemon()
        names = {f"k3srotd-node-{n.name}" for n in self.cluster}
        deadline = time.monotonic() + 60
        while not names <= {k.split("/")[1] for k in self.cluster.leases()}:
            if time.monotonic() > deadline:
                raise AssertionError("the daemons did not all report within 60 s")
            time.sleep(0.2)

    def close(self) -> None:
        for p in self.manual.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        self.cluster.stop()
        faultops.kill_leftovers(self.root)
        for d in self.mounted:
            faultops.umount(d)

    # --- the run
    def run(self, schedule: Sequence[Fault]) -> Result:
        r = self.result
        r.schedule = list(schedule)
        self.observer.t0 = r.t0 = time.time()
        self.observer.start()
        try:
            self._faults(schedule)
            self._end_faults()
            r.converge_s = self._converge()
        finally:
            self.observer.stop()
            r.violations = sorted(self.observer.violations, key=lambda v: v.t)
            self._halts()
            codes = sorted(str(p.returncode) for p in self.manual_procs)
            r.seen = (
                f"{self.observer.passes} passes, {len(self.observer.last_signed)} keys signed, "
                f"manual commands' exits [{' '.join(codes)}]"
            )
        return r

    def _faults(self, schedule: Sequence[Fault]) -> None:
        t0 = self.result.t0
        pending = sorted(schedule, key=lambda f: f.at)
        while pending or any(w <= t0 + self.length for w, _, _ in self.timers):
            self._supervise()
            now = time.time()
            due_timers = sorted(t for t in self.timers if t[0] <= now)
            for t in due_timers:
                self.timers.remove(t)
                t[2]()
            if pending and t0 + pending[0].at <= now:
                self._inject(pending.pop(0))
                continue
            nxt = min([t0 + pending[0].at] if pending else [t0 + self.length])
            nxt = min([nxt] + [w for w, _, _ in self.timers])
            time.sleep(max(0.05, min(0.5, nxt - time.time())))
            if not pending and time.time() >= t0 + self.length:
                break

    def _supervise(self) -> None:
        """systemd's Restart=always with RestartSec=5s (K3s's unit): a K3s that exited on its own (a crash at
        start) is started again 5 s later; one the harness stopped stays down for its hold."""
        for i, n in enumerate(self.cluster.nodes):
            if i in self.held_down or faultops.k3s_pids(n.server.data_dir):
                self.down_since.pop(i, None)
                continue
            since = self.down_since.setdefault(i, time.time())
            if time.time() - since >= RESTART_SEC:
                self.down_since.pop(i, None)
                faultops.ensure_k3s(self, i)

    def later(self, seconds: float, what: Callable[[], None]) -> None:
        self.seq += 1
        self.timers.append((time.time() + seconds, self.seq, what))

    def _inject(self, f: Fault) -> None:
        done = faultops.inject(self, f)
        if done:
            self.result.injected += 1
        else:
            self.result.skipped.append(f.describe())

    def _end_faults(self) -> None:
        """Faults stop: every restore runs now, emulator faults are cleared, every K3s and daemon runs again."""
        while self.timers:  # a restore may ask to run again (a daemon still finishing its step after SIGTERM)
            due, self.timers = sorted(self.timers), []
            for t in due:
                t[2]()
            if self.timers:
                time.sleep(1.0)
        for n in self.cluster:
            n.server.clear_faults()
            faultops.unfill(n)
            if n.settings["k3s-server-url"] != n.server.url:
                n.write_config(k3s_server_url=n.server.url)
        for i in range(len(self.cluster.nodes)):
            faultops.ensure_k3s(self, i)
        for n in self.cluster:
            n.write_config(**{k.replace("-", "_"): v for k, v in QUIET.items()})
            if n.daemon is not None and n.daemon.poll() is None:
                n.daemon.send_signal(signal.SIGHUP)
            else:
                n.start_daemon()

    def _converge(self) -> Optional[float]:
        start = time.time()
        deadline = start + self.converge_max
        last = ""
        while time.time() < deadline:
            self._supervise()
            for n in self.cluster:  # a daemon stopped by SIGTERM once its step ended: started again (its hold)
                if n.daemon is None or n.daemon.poll() is not None:
                    n.daemon = None
                    n.start_daemon()
            last = self._not_converged()
            if not last:
                return time.time() - start
            if self._halted():
                return None
            time.sleep(1.0)
        self.observer.violate("converge", f"not converged {self.converge_max:g}s after the faults stopped: {last}")
        return None

    def _not_converged(self) -> str:
        nodes = self.cluster.nodes
        running = [p for p in self.manual.values() if p.poll() is None]
        if running:
            return f"{len(running)} manual command(s) still running"
        try:
            lives = [n.server.service_key.read_bytes() for n in nodes]
            ds = n_ds = nodes[0].server.datastore_files()["ServiceKey"].content
        except (OSError, KeyError, ValueError):
            return "a live file or the datastore unreadable"
        del n_ds
        differ = [n.name for n, b in zip(nodes, lives) if b != ds]
        if differ:
            return f"live files differ from the datastore on {', '.join(differ)}"
        pending = [n.name for n in nodes if _intent(n) is not None]
        if pending:
            return f"a step pending on {', '.join(pending)}"
        down = [n.name for n in nodes if not n.server.is_ready()]
        if down:
            return f"K3s not ready on {', '.join(down)}"
        due = [f"{n.name} ({a})" for n in nodes for a in [_due(n)] if a]
        if due:
            return f"a step due and not done: {', '.join(due)}"
        return ""

    def _halted(self) -> bool:
        return any((_intent(n) or {}).get("stage") == "rollback-failed" for n in self.cluster)

    def _halts(self) -> None:
        for n in self.cluster:
            intent = _intent(n)
            if not intent or intent.get("stage") != "rollback-failed":
                continue
            logs = [n.daemon_log, *[p for p in self.manual_logs if p.parent == n.root]]
            recorded = any('"rollback.failed"' in p.read_text(errors="replace") for p in logs if p.exists())
            self.result.halts.append(f"{n.name}: rollback failed ({intent.get('step')}), recorded={recorded}")
            if not recorded:
                self.observer.violate("halts", f"{n.name} halted (rollback failed) with no rollback.failed record")
                self.result.violations = sorted(self.observer.violations, key=lambda v: v.t)


def _due(n: ClusterNode) -> str:
    """The step status says is due now (its not_before has passed), or ""."""
    proc = n.k3srotd("status", "--json", timeout=60)
    try:
        nxt = json.loads(proc.stdout).get("next_action") or {}
    except ValueError:
        return f"status exited {proc.returncode}"
    when = nxt.get("not_before")
    if when and dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() <= time.time():
        return str(nxt.get("action"))
    return ""


def _intent(n: ClusterNode) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads((n.state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    intent = doc.get("intent") if isinstance(doc, dict) else None
    return intent if isinstance(intent, dict) else None


def run(
    root: Path,
    seed: int,
    servers: int = 3,
    length: float = 60.0,
    keep: Optional[Sequence[int]] = None,
    schedule: Optional[Sequence[Fault]] = None,
    test_leases: bool = False,
    converge_max: float = CONVERGE_MAX,
) -> Result:
    """One schedule from `seed` (or the faults at indexes `keep` of it, or `schedule` as given), run to
    convergence. Leases have the product's own length (2 x restart-timeout + 60 s); test_leases: the cluster
    tests' 8 s instead (shorter than a restart here under load: a lease then runs out during a restart)."""
    explicit = schedule is not None
    if schedule is None:
        schedule = make(seed, servers, length)
        if keep is not None:
            schedule = [schedule[i] for i in sorted(set(keep))]
    c = ChaosRun(root, seed, servers, length)
    c.result.kept = keep
    c.result.explicit = explicit
    c.converge_max = converge_max
    for n in c.cluster:
        n.extra_env["K3SROTD_TEST_CLOCK_SKEW_FILE"] = str(faultops.skew_file(n))
        if not test_leases:
            n.env = lambda extra=None, n=n: {**n.extra_env, **(extra or {})}  # type: ignore[method-assign]
    try:
        c.start()
        return c.run(schedule)
    finally:
        c.close()
