"""The tests' k3srotd: the real CLI, started with the test switches production never reads.

    python tests/k3srotd_test_main.py [k3srotd arguments]

K3SROTD_TEST_CRASH_AT (a step boundary to be SIGKILLed at, e.g. `promote:uploaded`) and K3SROTD_TEST_LEASE_SECONDS
(short cluster leases) are read here, by test code only, and handed to the CLI as its `run` (engine.coordinator.Run).

K3SROTD_TEST_CLOCK_SKEW_FILE names a file holding seconds (e.g. `-2.5`) that this process's wall clock is off by,
read at every look at the time: the chaos runs' clock skew between servers, stepped while k3srotd runs, as NTP
steps a host's clock. k3srotd takes all its wall-clock time from core.clock.Clock.now, which is shifted here;
its monotonic clock is not (a host's is not either). libfaketime would do the same from outside, but it hangs
Python's timed waits (tests/chaos/README.md).
"""

from __future__ import annotations

import os
import sys


def _float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def _skew_clock(path: str) -> None:
    import datetime as dt

    from k3srotd.core import clock

    real = clock.Clock.now

    def now(self: clock.Clock) -> dt.datetime:
        try:
            with open(path) as f:
                skew = float(f.read().strip() or 0)
        except (OSError, ValueError):
            skew = 0.0
        return real(self) + dt.timedelta(seconds=skew)

    clock.Clock.now = now  # type: ignore[method-assign]


def _coverage() -> None:
    """Under `pytest --cov`: measure this process, and none of its children (the emulator's scripts: the test
    harness keeps coverage's variables aside for that reason, tests/k3semu/env.py)."""
    names = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    aside = {n: os.environ.pop("K3SROTD_TEST_" + n, None) for n in names}
    if not any(aside.values()):
        return
    os.environ.update({n: v for n, v in aside.items() if v})
    import coverage

    coverage.process_startup()
    for n in names:
        os.environ.pop(n, None)


def main() -> None:
    _coverage()
    from k3srotd import cli
    from k3srotd.engine.coordinator import Run

    if os.environ.get("K3SROTD_TEST_CLOCK_SKEW_FILE"):
        _skew_clock(os.environ["K3SROTD_TEST_CLOCK_SKEW_FILE"])

    run = Run(
        crash_at=os.environ.get("K3SROTD_TEST_CRASH_AT") or None,
        lease_seconds=_float("K3SROTD_TEST_LEASE_SECONDS"),
    )
    cli.main(sys.argv[1:], run)


if __name__ == "__main__":
    main()
