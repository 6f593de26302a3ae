"""Replay one chaos schedule: python tests/chaos --seed N [--servers 3] [--length 60] [--keep 0,3,7]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "cluster")]


def main() -> int:
    from chaos.harness import run

    ap = argparse.ArgumentParser(prog="python tests/chaos", description=__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--length", type=float, default=60.0, help="seconds of faults")
    ap.add_argument("--keep", help="only the faults at these indexes of the schedule (a shrunk schedule)")
    ap.add_argument("--product-leases", action="store_true", help="the product's lease length, not the tests' 8 s")
    ap.add_argument("--dir", help="keep the run's files here (default: a temporary folder)")
    a = ap.parse_args()
    keep = [int(x) for x in a.keep.split(",")] if a.keep else None
    if a.dir:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        result = run(Path(a.dir), a.seed, a.servers, a.length, keep, product_leases=a.product_leases)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as d:
            result = run(Path(d), a.seed, a.servers, a.length, keep, product_leases=a.product_leases)
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
