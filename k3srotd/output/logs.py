"""Logging: structlog, configured once by the command that logs; journald, JSON or console lines.

How to log (the convention the whole code base follows)::

    log = logs.configure(cfg.log_format)      # once, in the CLI; returns the logger to pass around
    log.info("publish.done", msg=f"published new key {short(kid)} as verify-only",
             signer_kid=kf.signer.kid, kids=kf.kids)

- The event (first argument) is a stable dotted name, `<subject>.<what>`: `publish.done`, `step.failed`,
  `hook.failed`. Scripts match on it: it is K3SROTD_EVENT in journald and `event` in JSON. The documented step
  events are `publish.done`, `promote.done`, `prune.done`, `rollback.done`, `step.failed`, each with
  `signer_kid=` and `kids=` (file order).
- `msg=` is the human sentence: journald's MESSAGE and the console text. Without it the event name is shown.
  Keep it one line; a newline is shown as " | " on the console.
- Every other key is data, snake_case: `K3SROTD_<KEY>` in journald (`signer_kid` -> K3SROTD_SIGNER_KID), the
  same key in JSON, `key=value` on the console. A list or tuple is comma-separated in journald and on the
  console (`kids` -> K3SROTD_KIDS=a,b,c), a JSON array in JSON; True/False are `true`/`false`; a datetime is
  RFC 3339; a None value is left out. Reserved keys: `msg`, `exc_info`, `level`, `time`.
- Levels and journald PRIORITY: debug 7, info 6, warning 4, error 3, critical 2. Every journald record also
  carries SYSLOG_IDENTIFIER=k3srotd.
- `log.exception(...)` (or `exc_info=True`) adds the traceback: K3SROTD_TRACEBACK in journald (MESSAGE stays
  one line), `exception` in JSON, the following lines on the console.
- Never log key material. As defence in depth, any value (and the message, and a traceback) that contains
  `PRIVATE KEY`, a PEM armour line (`-----BEGIN ...`/`-----END ...`) or base64 as long as a key (a PEM body,
  or a run of 120 characters) is replaced by "[redacted]". The CLI's error line goes through the same guard.

Formats: `journal` (journald's native protocol, see journal.py; if journald cannot be reached a record goes to
the stream as a console line instead), `json` (one object per line), `console` (one human line per record:
time, level, message, [event], key=value pairs), and `auto`: journal when running under systemd (stderr is
the journal stream named by $JOURNAL_STREAM, or $INVOCATION_ID is set), else console.

structlog is imported by configure() and get_logger() only: `k3srotd --version` imports nothing but click.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, MutableMapping, Optional, Protocol, TextIO

from k3srotd.output.journal import JOURNAL_SOCKET, JournalSocket, field_name

if TYPE_CHECKING:
    from structlog.types import FilteringBoundLogger

FORMATS = ("auto", "journal", "json", "console")
IDENTIFIER = "k3srotd"
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LEVEL_NUMBER = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}  # logging's numbers
_METHOD_LEVEL = {"warn": "warning", "exception": "error", "fatal": "critical", "msg": "info", "failure": "error"}
_RESERVED = ("event", "msg", "level", "time", "exception")
REDACTED = "[redacted]"
# PEM armour; or base64 as long as a key's: a PEM body (two or more full 64-character lines), or an unwrapped
# run of 120 or more (the smallest key k3srotd handles, EC P-256 in SEC1, is 164). A kid is 43, a sha256 64.
# A run counts only with the variety of random bytes (a line of "xxxx..." is no key).
_ARMOUR = re.compile(r"PRIVATE KEY|-----(BEGIN|END) ")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{64}[ \t]*\r?\n\s*){2}|[A-Za-z0-9+/]{120}")
_VARIETY = 24  # distinct characters: random base64 of 120 has ~55; words and repeats far fewer


class _KeyMaterial:
    """The guard: `search` and `sub` like a compiled pattern."""

    def _runs(self, text: str) -> Iterator[re.Match[str]]:
        for m in _BASE64.finditer(text):
            if len(set(m.group(0))) >= _VARIETY:
                yield m

    def search(self, text: str) -> bool:
        return _ARMOUR.search(text) is not None or next(self._runs(text), None) is not None

    def sub(self, repl: str, text: str) -> str:
        text = _ARMOUR.sub(repl, text)
        for m in reversed(list(self._runs(text))):
            text = text[: m.start()] + repl + text[m.end() :]
        return text


_KEY_MATERIAL = _KeyMaterial()


def redact_text(text: str) -> str:
    """A line with any key material in it replaced by "[redacted]": the CLI's error line, like every log value."""
    return _KEY_MATERIAL.sub(REDACTED, text)


_configured: Optional[tuple[str, str]] = None


class Log(Protocol):
    """What code that logs needs from a logger (a structlog FilteringBoundLogger is one)."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...
    def exception(self, event: str, **kw: Any) -> Any: ...


def detect_format(stream: Any = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """`journal` when running under systemd, else `console` (what `auto` means)."""
    env = os.environ if environ is None else environ
    if env.get("INVOCATION_ID"):
        return "journal"
    journal_stream = env.get("JOURNAL_STREAM", "")
    if journal_stream:
        try:
            st = os.fstat((sys.stderr if stream is None else stream).fileno())
        except (AttributeError, OSError, ValueError):
            return "console"
        if journal_stream == f"{st.st_dev}:{st.st_ino}":
            return "journal"
    return "console"


def configure(
    fmt: str = "auto",
    stream: Optional[TextIO] = None,
    *,
    level: str = "info",
    journal_socket: str = JOURNAL_SOCKET,
    environ: Optional[Mapping[str, str]] = None,
) -> FilteringBoundLogger:
    """Configure structlog for this process and return a logger. Called once by a command that logs; calling
    it again (SIGHUP with a new log-format) replaces the configuration, and loggers already handed out follow.
    """
    global _configured
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if level not in _LEVEL_NUMBER:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVEL_NUMBER)}")
    import structlog

    out = sys.stderr if stream is None else stream
    chosen = detect_format(out, environ) if fmt == "auto" else fmt
    sink: Any
    if chosen == "journal":
        sink = _JournalSink(JournalSocket(journal_socket), out)
    else:
        sink = _StreamSink(out, render_json if chosen == "json" else render_console)
        if fmt == "auto" and os.path.exists(journal_socket):
            # a command typed in a shell: the human reads the console, and the journal still gets the record,
            # so `journalctl SYSLOG_IDENTIFIER=k3srotd` and its monitoring see manual steps too
            sink = _TeeSink(sink, JournalSocket(journal_socket))
    processors: list[Callable[..., Any]] = [add_level]
    if chosen != "journal":
        processors.append(add_time)  # journald stamps records itself
    processors += [format_exception, redact_key_material, _to_sink]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVEL_NUMBER[level]),
        logger_factory=lambda *args: sink,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    _configured = (fmt, chosen)
    return get_logger()


def reset() -> None:
    """Forget the configuration (structlog's defaults again); for tests."""
    global _configured
    if _configured is not None:
        import structlog

        structlog.reset_defaults()
    _configured = None


def configured_format() -> Optional[str]:
    """The format in use (`journal`, `json` or `console`), or None before configure()."""
    return _configured[1] if _configured else None


def get_logger(**initial: Any) -> FilteringBoundLogger:
    """A logger with `initial` keys bound; console on stderr if configure() has not been called yet."""
    import structlog

    if _configured is None:
        configure("console")
    logger: FilteringBoundLogger = structlog.get_logger(**initial)
    return logger


# --- processors: (logger, method name, event dict) -> event dict -------------------------------------------


def add_level(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    name = _METHOD_LEVEL.get(method, method)
    event["level"] = name if name in PRIORITY else "info"
    return event


def add_time(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("time", dt.datetime.now(dt.timezone.utc).astimezone())
    return event


def format_exception(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if isinstance(exc_info, BaseException):
        info: Any = (type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(exc_info, tuple):
        info = exc_info
    else:
        info = sys.exc_info()
    if info[0] is not None:
        event["exception"] = "".join(traceback.format_exception(*info)).rstrip("\n")
    return event


def redact_key_material(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace any value holding key material (PEM armour, `PRIVATE KEY`) by "[redacted]"."""
    for key, value in list(event.items()):
        event[key] = _redact(value)
    return event


def _redact(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, dt.datetime)):
        return value
    if isinstance(value, str):
        return REDACTED if _KEY_MATERIAL.search(value) else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return REDACTED if _KEY_MATERIAL.search(bytes(value).decode("latin-1")) else value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    return REDACTED if _KEY_MATERIAL.search(str(value)) else value


def _to_sink(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    return ((event,), {})  # the sink renders: the journal sink may fall back to a console line


# --- renderers ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _data(event: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in event.items():
        if key not in _RESERVED and value is not None:
            yield key, value


def _message(event: Mapping[str, Any]) -> str:
    msg = event.get("msg")
    return _text(msg if msg is not None else event.get("event", ""))


def journal_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The journald fields of one record."""
    fields = [
        ("MESSAGE", _message(event)),
        ("PRIORITY", str(PRIORITY.get(str(event.get("level")), 6))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("K3SROTD_EVENT", _text(event.get("event", ""))),
    ]
    fields += [(field_name(key, "K3SROTD_"), _text(value)) for key, value in _data(event)]
    if "exception" in event:
        fields.append(("K3SROTD_TRACEBACK", _text(event["exception"])))
    return fields


_PLAIN = re.compile(r"[^\s=\"']*")


def _console_value(value: Any) -> str:
    text = _text(value)
    if _PLAIN.fullmatch(text) and text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_console(event: Mapping[str, Any]) -> str:
    when = event.get("time")
    stamp = when.strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, dt.datetime) else _text(when or "")
    message = " | ".join(_message(event).splitlines())
    line = f"{stamp} {event.get('level', 'info'):<8} {message}"
    if event.get("msg") is not None:
        line += f" [{_text(event.get('event', ''))}]"
    pairs = " ".join(f"{key}={_console_value(value)}" for key, value in _data(event))
    if pairs:
        line += "  " + pairs
    if "exception" in event:
        line += "\n" + _text(event["exception"])
    return line + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def render_json(event: Mapping[str, Any]) -> str:
    import json

    ordered = {k: event[k] for k in ("time", "level", "event", "msg") if k in event}
    ordered.update((k, v) for k, v in event.items() if k not in ordered)
    return json.dumps(ordered, default=_json_default, ensure_ascii=False) + "\n"


# --- sinks: what structlog calls the "logger"; every level method takes the event dict -----------------------


class _StreamSink:
    def __init__(self, stream: TextIO, render: Callable[[Mapping[str, Any]], str]) -> None:
        self.stream = stream
        self.render = render
        self._lock = threading.Lock()

    def msg(self, event: Mapping[str, Any]) -> None:
        line = self.render(event)
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: logging must not stop the daemon

    debug = info = warning = warn = error = critical = fatal = exception = failure = err = log = msg


class _TeeSink:
    """Console (or JSON) lines, and the same records to journald when it listens; journald's silence is fine."""

    def __init__(self, stream: _StreamSink, journal: JournalSocket) -> None:
        self.stream = stream
        self.journal = journal

    def msg(self, event: Mapping[str, Any]) -> None:
        self.stream.msg(event)
        with contextlib.suppress(OSError):
            self.journal.send(journal_fields({k: v for k, v in event.items() if k != "time"}))

    debug = info = warning = warn = error = critical = fatal = exception = failure = err = log = msg


class _JournalSink:
    def __init__(self, journal: JournalSocket, fallback: TextIO) -> None:
        self.journal = journal
        self.fallback = _StreamSink(fallback, render_console)

    def msg(self, event: Mapping[str, Any]) -> None:
        try:
            self.journal.send(journal_fields(event))
        except OSError:
            # journald unreachable: the console line on stderr, which systemd also collects.
            self.fallback.msg({"time": dt.datetime.now(dt.timezone.utc).astimezone(), **event})

    debug = info = warning = warn = error = critical = fatal = exception = failure = err = log = msg
