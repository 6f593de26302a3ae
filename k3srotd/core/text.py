"""Values in error lines, cut to a bounded length: a YAML alias bomb is one value, and gave a 254 MB "line"."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_LINE = 2000  # an error line is read by a human: longer is a value that leaked into it

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxlevel = 2


def show(value: Any) -> str:
    """repr(value), bounded in length and depth."""
    return _REPR.repr(value)


def cut(line: str, limit: int = MAX_LINE) -> str:
    """One line of at most `limit` characters, saying so when cut."""
    line = " ".join(line.splitlines())
    return line if len(line) <= limit else line[: limit - 20] + f" [... {len(line) - limit + 20} more]"
