"""doctor's checks as data, and the rule that runs them: one FAIL per root cause.

A check names the checks it needs. When one of those FAILed, or was itself skipped because of a FAIL, the check
does not run: its line is SKIP and names the root cause, so that no K3s gives one FAIL, not five. A check that
did not run for a reason of its own (nothing to check, or no way to tell here) is SKIP too, never PASS.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Optional

Level = Literal["PASS", "WARN", "FAIL", "SKIP"]
PASS: Level = "PASS"  # noqa: S105 - a verdict, not a password
WARN: Level = "WARN"
FAIL: Level = "FAIL"
SKIP: Level = "SKIP"
Verdict = tuple[Level, str]


@dataclasses.dataclass(frozen=True)
class Check:
    name: str  # the line's subject, as its text begins ("K3s running")
    run: Callable[[], Verdict]
    needs: tuple[str, ...] = ()


@dataclasses.dataclass
class Outcome:
    lines: list[str]
    failed: bool
    levels: dict[str, Level]  # by check name, for checks that read an earlier one's outcome


def run_checks(checks: list[Check], outcome: Optional[Outcome] = None) -> Outcome:
    """Run in order; a check whose needs failed is SKIP, naming the FAIL it follows from. `outcome` may be
    passed in (empty) so that a check can read the levels of those before it while they run."""
    out = outcome if outcome is not None else Outcome([], False, {})
    root: dict[str, str] = {}  # check -> the FAILed check it follows from
    for c in checks:
        cause = next((root.get(n, n) for n in c.needs if out.levels.get(n) == FAIL or n in root), None)
        if cause is not None:
            root[c.name] = cause
            level, text = SKIP, f"{c.name}: not checked; follows from the FAIL of `{cause}` above"
        else:
            level, text = c.run()
        out.levels[c.name] = level
        out.failed = out.failed or level == FAIL
        out.lines.append(f"{level}  {text}")
    return out
