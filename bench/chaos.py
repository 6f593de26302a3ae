"""The long chaos run: many seeded fault schedules on emulated clusters of three and five servers.

    python bench/chaos.py                       seeds 1..10 on three servers, one on five, 60 s of faults each
    python bench/chaos.py --seeds 1-30 --five 3 --length 90

Reports schedules run, faults injected, invariant violations (which must be 0) and the time to converge after
the faults stop (median and max); every failing schedule with its seed and the command that replays it.
Exit 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main() -> int:
    from chaos.harness import Result, run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-10", help="three-server seeds, e.g. 1-10 or 3,7")
    ap.add_argument("--five", type=int, default=1, help="how many five-server schedules (seeds 1001..)")
    ap.add_argument("--length", type=float, default=60.0, help="seconds of faults per schedule")
    ap.add_argument("--test-leases", action="store_true", help="the cluster tests' 8 s leases, not the product's")
    a = ap.parse_args()
    plan = [(s, 3) for s in _seeds(a.seeds)] + [(1000 + i, 5) for i in range(1, a.five + 1)]
    results: list[Result] = []
    started = time.monotonic()
    for seed, servers in plan:
        d = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
        r = run(d, seed, servers, a.length, test_leases=a.test_leases)
        results.append(r)
        print(r.report(), flush=True)
        if r.ok:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"  its files (daemon and command logs, state, lifecycle records): {d}", flush=True)
    conv = [r.converge_s for r in results if r.converge_s is not None]
    violations = sum(len(r.violations) for r in results)
    print()
    print(f"schedules run          {len(results)} ({sum(1 for _, n in plan if n == 5)} on five servers)")
    print(
        f"faults injected        {sum(r.injected for r in results)} (skipped, nothing to act on: "
        f"{sum(len(r.skipped) for r in results)})"
    )
    print(f"invariant violations   {violations} in {sum(1 for r in results if not r.ok)} schedule(s)")
    if conv:
        print(
            f"time to converge       median {statistics.median(conv):.1f}s, max {max(conv):.1f}s "
            f"({len(results) - len(conv)} did not converge)"
        )
    print(f"halts                  {sum(len(r.halts) for r in results)}")
    print(f"wall time              {time.monotonic() - started:.0f}s")
    for r in results:
        if not r.ok:
            print(f"FAILED seed {r.seed}: {r.replay()}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
