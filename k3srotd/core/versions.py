"""The K3s releases k3srotd supports, as data: doctor checks against it, and the README's table is this table
(a test compares them). Pure: no I/O.

k3srotd uploads service.key alone through `k3s certificate rotate-ca`. rotate-ca exists from the first floor;
a service.key-only upload passes rotate-ca's validation on K3s's default self-signed CAs from the second (K3s
issue 10689 and its backports); before that it needed `--force`, which skips every validation and k3srotd never
passes. So both floors must hold.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

Version = tuple[int, int, int]
Floor = dict[tuple[int, int], int]  # (major, minor) -> the first patch release that has it

ROTATE_CA: Floor = {(1, 23): 17, (1, 24): 11, (1, 25): 7, (1, 26): 2}
SERVICE_KEY_ONLY: Floor = {(1, 28): 14, (1, 29): 9, (1, 30): 5, (1, 31): 1}

FLOORS: tuple[tuple[str, Floor], ...] = (
    ("`k3s certificate rotate-ca` exists", ROTATE_CA),
    ("rotate-ca accepts service.key alone on K3s's default CAs (K3s issue 10689)", SERVICE_KEY_ONLY),
)


def parse(text: str) -> Optional[Version]:
    """The first vMAJOR.MINOR.PATCH in `k3s --version`'s output, e.g. `k3s version v1.31.4+k3s1 (...)`."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def release(text: str) -> Optional[str]:
    """The whole release name, e.g. `v1.31.4+k3s1`: a rehearsal is recorded against it (a new +k3sN is an
    upgrade too)."""
    m = re.search(r"v\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?", text)
    return None if m is None else m.group(0)


def meets(v: Version, floor: Floor) -> bool:
    """A minor line in the table from its patch on; a later minor line always; an earlier or skipped one never
    (a line between the table's lines never got the fix)."""
    if (v[0], v[1]) in floor:
        return v[2] >= floor[(v[0], v[1])]
    return (v[0], v[1]) > max(floor)


def releases(floor: Floor) -> str:
    """`v1.28.14, v1.29.9, ... or later`, newest line last."""
    return ", ".join(f"v{a}.{b}.{p}" for (a, b), p in sorted(floor.items())) + " or later"


def check(v: Version) -> tuple[Literal["PASS", "FAIL"], str]:
    """PASS, or FAIL naming what is missing and the releases that have it."""
    text = f"v{v[0]}.{v[1]}.{v[2]}"
    for what, floor in FLOORS:
        if not meets(v, floor):
            return "FAIL", f"K3s {text} is too old: needs a release where {what}: {releases(floor)}; upgrade K3s"
    return "PASS", f"K3s {text}"


def readme_rows() -> list[str]:
    """The README's supported-versions table, one Markdown row per floor."""
    return [f"| {what} | {releases(floor)} |" for what, floor in FLOORS]


# K3s PR #11844 ("Serve HTTP bootstrap data from datastore before disk", merged 2025-02-25): before it, a server
# that joined through a `server:` URL reconciles at every restart from that peer's own disk, not the datastore.
BOOTSTRAP_FROM_DATASTORE: Floor = {(1, 29): 15, (1, 30): 11, (1, 31): 7, (1, 32): 3, (1, 33): 0}


def old_bootstrap(v: Version) -> bool:
    """True on a release without #11844 (1.28 and older never got it)."""
    return not meets(v, BOOTSTRAP_FROM_DATASTORE)
