"""Seeded fault schedules: a pure function of (seed, servers, length), so that a seed replays the same faults.

A schedule is a list of Fault records ordered by time (seconds from the start of the run). Shrinking a failing
schedule keeps a subset of its faults, in order; `kept` names them by index for a regression test.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence

# Each kind names what is done and to what; the harness (harness.py) carries it out.
KINDS = (
    "daemon_kill9",  # kill -9 a server's k3srotd daemon; it is started again after `hold` seconds
    "daemon_term",  # SIGTERM the daemon (it finishes or rolls back its step first); started again after `hold`
    "manual",  # run a manual command on the server: rotate-now, prune or rollback (args["command"])
    "manual_kill9",  # kill -9 the manual command under way on the server, if any
    "manual_term",  # SIGTERM the manual command under way on the server, if any
    "k3s_stop",  # stop the server's K3s (SIGTERM) for `hold` seconds, then start it again
    "k3s_crash_at_start",  # the server's next K3s start fails (emulator fault crash_at_start)
    "k3s_slow_start",  # the server's next K3s start serves only after args["seconds"] (fault slow_start)
    "k3s_restart_stale",  # the server's next K3s start keeps its own disk's key set (fault start_stale)
    "api_cut",  # the server's k3srotd is cut off from the API for `hold` seconds (config names a closed port)
    "reply_lost",  # the server's next rotate-ca reply is lost after the datastore was written (fault reply_lost)
    "disk_full",  # the server's state-dir (a small tmpfs) is filled for `hold` seconds
    "clock_skew",  # the server's k3srotd clock is stepped args["seconds"] off (either way) for `hold` seconds
)

WEIGHTS = {
    "daemon_kill9": 3,
    "daemon_term": 2,
    "manual": 4,
    "manual_kill9": 2,
    "manual_term": 1,
    "k3s_stop": 2,
    "k3s_crash_at_start": 1,
    "k3s_slow_start": 2,
    "k3s_restart_stale": 1,
    "api_cut": 1,
    "reply_lost": 2,
    "disk_full": 1,
    "clock_skew": 2,
}
SKEW_MAX = 3.0  # seconds either way: "up to a few seconds", as between hosts that keep NTP
COMMANDS = ("rotate-now", "prune", "rollback")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds from the start of the faults
    kind: str
    server: int
    hold: float = 0.0  # how long the fault lasts, where it lasts
    args: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.args.items()))
        hold = f" for {self.hold:g}s" if self.hold else ""
        return f"t+{self.at:5.1f}s {self.kind} server-{self.server}{hold}{extra}"

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def make(seed: int, servers: int, length: float, mean_gap: float = 6.0, kinds: Sequence[str] = KINDS) -> List[Fault]:
    """Faults at random times over `length` seconds, about one per `mean_gap` seconds, on random servers."""
    rnd = random.Random(seed)
    names = [k for k in KINDS if k in kinds]
    weights = [WEIGHTS[k] for k in names]
    out: List[Fault] = []
    t = rnd.uniform(1.0, mean_gap)
    while t < length:
        kind = rnd.choices(names, weights)[0]
        server = rnd.randrange(servers)
        hold = 0.0
        args: Dict[str, Any] = {}
        if kind in ("daemon_kill9", "daemon_term"):
            hold = round(rnd.uniform(0.5, 8.0), 1)
        elif kind == "k3s_stop":
            hold = round(rnd.uniform(2.0, 15.0), 1)
        elif kind in ("api_cut", "disk_full"):
            hold = round(rnd.uniform(5.0, 20.0), 1)
        elif kind == "clock_skew":
            hold = round(rnd.uniform(10.0, 40.0), 1)
            args["seconds"] = round(rnd.choice((-1, 1)) * rnd.uniform(0.5, SKEW_MAX), 1)
        elif kind == "k3s_slow_start":
            args["seconds"] = round(rnd.uniform(2.0, 12.0), 1)
        elif kind == "manual":
            args["command"] = rnd.choices(COMMANDS, (5, 3, 1))[0]
        out.append(Fault(round(t, 1), kind, server, hold, args))
        t += rnd.expovariate(1.0 / mean_gap)
    return out


def keep(schedule: Sequence[Fault], indexes: Sequence[int]) -> List[Fault]:
    """A shrunk schedule: the faults at `indexes`, in their order."""
    return [schedule[i] for i in sorted(set(indexes))]


def shrink_candidates(indexes: Sequence[int]) -> List[List[int]]:
    """Smaller subsets to try, largest cuts first (halves, then quarters, then one fault less): ddmin's order."""
    idx = list(indexes)
    out: List[List[int]] = []
    n = 2
    while n <= len(idx):
        size = max(1, len(idx) // n)
        for start in range(0, len(idx), size):
            rest = idx[:start] + idx[start + size :]
            if rest and rest not in out:
                out.append(rest)
        if size == 1:
            break
        n *= 2
    return out
