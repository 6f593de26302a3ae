"""The tests' k3srotd: the real CLI, started with the test switches production never reads.

    python tests/k3srotd_test_main.py [k3srotd arguments]

K3SROTD_TEST_CRASH_AT (a step boundary to be SIGKILLed at, e.g. `promote:uploaded`) and K3SROTD_TEST_LEASE_SECONDS
(short cluster leases) are read here, by test code only, and handed to the CLI as its `run` (engine.coordinator.Run).
"""

from __future__ import annotations

import os
import sys


def _float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def main() -> None:
    from k3srotd import cli
    from k3srotd.engine.coordinator import Run

    run = Run(
        crash_at=os.environ.get("K3SROTD_TEST_CRASH_AT") or None,
        lease_seconds=_float("K3SROTD_TEST_LEASE_SECONDS"),
    )
    cli.main(sys.argv[1:], run)


if __name__ == "__main__":
    main()
