"""What multi-server coordination costs at idle, and how soon a follower notices a new step (issue 11).

    python bench/idle_load.py                    3 servers, 8 idle minutes
    python bench/idle_load.py --minutes 2

Three emulated K3s servers, each with `k3srotd run` and the product's own lease length. Every emulated
kube-apiserver writes one audit line per request (its audit file, as kube-apiserver's audit log at level Metadata),
and each k3srotd talks only to its own, so the lines per server are that server's requests. After the daemons
settle, the requests of an idle window are counted per server and minute (target: at most 2). Then server-0's
`rotate-now` publishes a step, and the time from its `rolling.published` record to each follower's first record
naming the step is its reaction time (target: under 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]

SETTLE = 20.0


def _records(path: Path) -> list[dict]:  # type: ignore[type-arg]
    if not path.exists():
        return []
    out = []
    for ln in path.read_text(errors="replace").splitlines():
        if ln.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(ln))
    return out


def _t(rec: dict) -> float:  # type: ignore[type-arg]
    return dt.datetime.fromisoformat(rec["time"]).timestamp()


def main() -> int:
    import clusternode
    from clusternode import Cluster, wait_until

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0)
    args = p.parse_args()
    clusternode.LEASE_SECONDS = 0  # the product's own lease (2 x restart-timeout + 60 s)
    with tempfile.TemporaryDirectory(prefix="k3srotd-idle-") as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            for n in cluster:
                n.write_config(publish_wait="1h", restart_timeout="5m")  # the product's default
                (n.server.emulator_dir / "audit").touch()
                n.start_daemon()
            names = [f"k3srotd-node-{n.name}" for n in cluster]
            wait_until("every daemon reports", lambda: all(f"kube-system/{x}" in cluster.leases() for x in names))
            time.sleep(SETTLE)
            start = time.time()
            time.sleep(args.minutes * 60)
            end = time.time()
            print(f"idle requests per minute per server ({args.minutes:g} min, 3 servers; target <= 2):")
            for n in cluster:
                lines = _records(n.server.emulator_dir / "audit.jsonl")
                idle = [r for r in lines if start <= r["time"] < end]
                kinds: dict[str, int] = {}
                for r in idle:
                    k = f"{r['verb']} {r['uri'].split('?')[0].rsplit('/', 1)[-1]}" + (
                        " (watch)" if "watch=true" in r["uri"] else ""
                    )
                    kinds[k] = kinds.get(k, 0) + 1
                print(f"  {n.name}: {len(idle) / args.minutes:.2f}/min  {kinds}")
            a = cluster[0]
            a.stop_daemon()
            driver = a.start_bg("rotate-now", log=a.root / "rotate-now.log")
            try:
                pub = wait_until(
                    "the step is published",
                    lambda: [r for r in _records(a.root / "rotate-now.log") if r["event"] == "rolling.published"],
                    timeout=120,
                )[0]
                sid = pub["msg"].split("(", 1)[1].split(")", 1)[0]
                print(f"reaction to a new step ({sid}; target < 2 s):")
                for n in cluster.nodes[1:]:
                    seen = wait_until(
                        f"{n.name} reacts",
                        lambda n=n: [r for r in _records(n.daemon_log) if sid in r.get("msg", "")],
                        timeout=60,
                    )[0]
                    print(f"  {n.name}: {_t(seen) - _t(pub):.2f} s ({seen['event']})")
            finally:
                driver.terminate()
                driver.wait(timeout=30)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
