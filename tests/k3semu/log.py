"""Log lines in logrus's text format, as K3s writes them to stderr:
`time="2024-05-01T12:00:00Z" level=info msg="..."`. `fatal` logs and exits 1, like logrus.Fatal."""

from __future__ import annotations

import datetime
import json
import sys
import threading
from typing import NoReturn

_lock = threading.Lock()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _emit(level: str, msg: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    line = f'time="{now}" level={level} msg={_quote(msg)}\n'
    with _lock:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def debug(msg: str) -> None:
    _emit("debug", msg)


def info(msg: str) -> None:
    _emit("info", msg)


def warn(msg: str) -> None:
    _emit("warning", msg)


def error(msg: str) -> None:
    _emit("error", msg)


class Fatal(SystemExit):
    """Raised by `fatal` after logging; exits the process with status 1."""


def fatal(msg: str) -> NoReturn:
    _emit("fatal", msg)
    raise Fatal(1)
