"""The wall time of one rolling step on 1, 3 and 5 emulated K3s servers, and what coordination costs on top of the
restarts themselves.

    python bench/rolling_step.py                 1, 3 and 5 servers, 3 rotations each
    python bench/rolling_step.py 3 5 --runs 5    other sizes or more runs

Every emulated server takes a fixed time to come back (the emulator's slow_start fault on every start, plus its
own start); that restart alone is timed first with `k3s-restart`. Servers 1..n-1 run `k3srotd run`; server 0 runs
`k3srotd rotate-now` (publish, then promote: two rolling steps). A step is timed from the driver's `step.start` to
its `<step>.done` record. The overhead per server is (step time - n x restart time) / n: lease handoffs, the
followers' looks, verification, reports. With one server there is no coordination at all: that row is the
single-server engine's own cost per restart, for comparison. Target (issue 6): under 2 s per server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]

SLOW_START = 1.0  # seconds every emulated start waits before serving
TARGET = 2.0


def restart_time(server, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        server.restart(timeout=60)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _t(rec: dict) -> float:  # type: ignore[type-arg]
    return dt.datetime.fromisoformat(rec["time"]).timestamp()


def step_times(log: Path) -> list[float]:
    """Seconds from each step.start to its <step>.done in a JSON log."""
    recs = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    out, start = [], None
    for r in recs:
        if r["event"] == "step.start":
            start = r
        elif start is not None and r["event"] == f"{start['step']}.done":
            out.append(_t(r) - _t(start))
            start = None
    return out


def bench(n: int, runs: int) -> tuple[float, float]:
    """(median seconds of one rolling step, median restart time) on n servers."""
    from clusternode import Cluster, wait_until

    with tempfile.TemporaryDirectory(prefix="k3srotd-bench-") as tmp:
        cluster = Cluster(Path(tmp), n).start()
        try:
            for node in cluster:
                node.server.set_faults({"slow_start": {"seconds": SLOW_START}})
            restart = restart_time(cluster[0].server)
            for node in list(cluster)[1:]:
                node.start_daemon()
            names = {f"k3srotd-node-{node.name}" for node in list(cluster)[1:]}
            wait_until("the daemons report", lambda: names <= {k.split("/")[1] for k in cluster.leases()}, 60)
            steps = []
            for i in range(runs):
                log = Path(tmp) / f"rotate-{i}.log"
                proc = cluster[0].start_bg("rotate-now", log=log)
                if proc.wait(timeout=600) != 0:
                    raise SystemExit(f"rotate-now failed on {n} servers:\n{log.read_text()[-3000:]}")
                steps += step_times(log)
        finally:
            cluster.stop()
    return statistics.median(steps), restart


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[1, 3, 5])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"{'servers':>7}  {'restart':>8}  {'step':>8}  {'n x restart':>11}  {'overhead/server':>15}  target")
    for n in args.sizes:
        step, restart = bench(n, args.runs)
        over = (step - n * restart) / n
        verdict = ("ok" if over < TARGET else "OVER") if n > 1 else "(single server: no coordination)"
        print(
            f"{n:>7}  {restart:>7.2f}s  {step:>7.2f}s  {n * restart:>10.2f}s  {over:>14.2f}s  < {TARGET:g} s {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
