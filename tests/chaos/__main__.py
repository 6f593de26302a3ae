"""Replay one chaos schedule: python tests/chaos --seed N [--servers 3] [--length 60] [--keep 0,3,7] [--shrink]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "cluster")]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python tests/chaos", description=__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--length", type=float, default=60.0, help="seconds of faults")
    ap.add_argument("--keep", help="only the faults at these indexes of the schedule (a shrunk schedule)")
    ap.add_argument("--shrink", action="store_true", help="on a failure, look for fewer faults that still fail")
    ap.add_argument("--test-leases", action="store_true", help="the cluster tests' 8 s leases, not the product's")
    ap.add_argument("--dir", help="keep the run's files here (default: a temporary folder)")
    a = ap.parse_args()
    keep = [int(x) for x in a.keep.split(",")] if a.keep else None
    result = _once(a, keep)
    print(result.report(), flush=True)
    if result.ok or not a.shrink:
        return 0 if result.ok else 1
    invariants = {v.invariant for v in result.violations}
    best = _shrink(a, list(keep if keep is not None else range(len(result.schedule))), invariants)
    print(f"smallest failing schedule: --keep {','.join(map(str, best))}")
    return 1


def _once(a: argparse.Namespace, keep: Optional[List[int]]):  # type: ignore[no-untyped-def]
    from chaos.harness import run

    if a.dir:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        return run(Path(a.dir), a.seed, a.servers, a.length, keep, test_leases=a.test_leases)
    with tempfile.TemporaryDirectory(prefix="chaos-") as d:
        return run(Path(d), a.seed, a.servers, a.length, keep, test_leases=a.test_leases)


def _shrink(a: argparse.Namespace, keep: List[int], invariants: set) -> List[int]:
    """ddmin, one level at a time: keep the first smaller subset that still violates one of the same invariants."""
    from chaos.schedule import shrink_candidates

    improved = True
    while improved and len(keep) > 1:
        improved = False
        for cand in shrink_candidates(keep):
            r = _once(a, cand)
            print(f"  --keep {','.join(map(str, cand))}: {len(r.violations)} violation(s)", flush=True)
            if invariants & {v.invariant for v in r.violations}:
                keep, improved = cand, True
                break
    return keep


if __name__ == "__main__":
    sys.exit(main())
