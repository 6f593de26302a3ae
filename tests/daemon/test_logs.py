"""Logging: the journald sink against a real datagram socket, parsed here; console and JSON lines; redaction."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from k3srotd.output import logs
from k3srotd.output.journal import JournalSocket, encode, field_name

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


def parse_record(data: bytes) -> dict[str, str]:
    """journald's native protocol, read back independently of journal.py."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        assert re.fullmatch(rb"[A-Z][A-Z0-9_]{0,63}", name), name
        fields[name.decode()] = value.decode()
    return fields


class Journald:
    """A bound AF_UNIX datagram socket standing in for /run/systemd/journal/socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        self.sock.settimeout(5)

    def record(self) -> dict[str, str]:
        data, ancdata, _, _ = self.sock.recvmsg(1024 * 1024, socket.CMSG_LEN(4))
        if ancdata:  # the record came as a sealed memfd
            level, kind, payload = ancdata[0]
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fd = array.array("i", payload[:4])[0]
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
                assert data == b""
                size = os.fstat(fd).st_size
                data = os.pread(fd, size, 0)
            finally:
                os.close(fd)
            return {"__memfd__": "yes", **parse_record(data)}
        return parse_record(data)

    def empty(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(1)
        except (TimeoutError, socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    j = Journald(tmp_path / "journal.socket")
    yield j
    j.sock.close()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    logs.reset()
    yield
    logs.reset()


def test_journal_record_carries_the_contract_fields(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    log.info("publish.done", msg="published new key abc as verify-only", signer_kid="kidA", kids=["kidA", "kidB"])
    rec = journald.record()
    assert rec == {
        "MESSAGE": "published new key abc as verify-only",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "k3srotd",
        "K3SROTD_EVENT": "publish.done",
        "K3SROTD_SIGNER_KID": "kidA",
        "K3SROTD_KIDS": "kidA,kidB",
    }


def test_step_failed_at_error_priority_with_data_fields(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    log.error(
        "step.failed",
        msg="promote failed: K3s did not come back",
        step="promote",
        signer_kid="kidA",
        kids=("kidA",),
        attempts=3,
        verify_api=False,
        skipped=None,
        **{"target-kids": ["kidB", "kidA"]},
    )
    rec = journald.record()
    assert rec["PRIORITY"] == "3"
    assert rec["K3SROTD_EVENT"] == "step.failed"
    assert rec["K3SROTD_STEP"] == "promote"
    assert rec["K3SROTD_KIDS"] == "kidA"
    assert rec["K3SROTD_ATTEMPTS"] == "3"
    assert rec["K3SROTD_VERIFY_API"] == "false"
    assert rec["K3SROTD_TARGET_KIDS"] == "kidB,kidA"
    assert "K3SROTD_SKIPPED" not in rec


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("warn", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_from_level(journald: Journald, method: str, priority: str) -> None:
    log = logs.configure("journal", io.StringIO(), level="debug", journal_socket=journald.path)
    getattr(log, method)("x.y")
    rec = journald.record()
    assert rec["PRIORITY"] == priority
    assert rec["MESSAGE"] == "x.y", "without msg= the event is the message"


def test_exception_goes_to_a_traceback_field(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("run.unexpected", msg="unexpected error: boom")
    rec = journald.record()
    assert rec["PRIORITY"] == "3"
    assert rec["MESSAGE"] == "unexpected error: boom"
    assert rec["K3SROTD_TRACEBACK"].startswith("Traceback (most recent call last):\n")
    assert rec["K3SROTD_TRACEBACK"].endswith("RuntimeError: boom")


def test_multiline_values_use_the_binary_form(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    log.warning("hook.failed", msg="hook 10-post failed", output="line one\nline two=2\n")
    rec = journald.record()
    assert rec["K3SROTD_OUTPUT"] == "line one\nline two=2\n"
    assert encode([("A", "x\ny")]) == b"A\n" + struct.pack("<Q", 3) + b"x\ny\n"


def test_a_record_too_big_for_a_datagram_goes_as_a_sealed_memfd(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    big = "x" * (9 * 1024 * 1024)  # above the 8 MiB send buffer asked for, and the kernel's cap
    log.info("hook.done", msg="hook output", output=big, kids=["a"])
    rec = journald.record()
    assert rec["__memfd__"] == "yes"
    assert rec["K3SROTD_OUTPUT"] == big
    assert rec["MESSAGE"] == "hook output"


def test_without_journald_records_fall_back_to_console_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    log = logs.configure("journal", out, journal_socket=str(tmp_path / "no-such-socket"))
    log.info("prune.done", msg="dropped 1 retired key", signer_kid="kidA", kids=["kidA"])
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info     dropped 1 retired key \[prune\.done\]  signer_kid=kidA kids=kidA\n",
        out.getvalue(),
    )


def test_key_material_is_redacted_everywhere(journald: Journald) -> None:
    log = logs.configure("journal", io.StringIO(), journal_socket=journald.path)
    log.info("oops", msg=f"wrote {PEM}", pem=PEM.encode(), kids=["kidA", "MIIE PRIVATE KEY"], ok="kidA")
    rec = journald.record()
    assert rec["MESSAGE"] == "[redacted]"
    assert rec["K3SROTD_PEM"] == "[redacted]"
    assert rec["K3SROTD_KIDS"] == "kidA,[redacted]"
    assert rec["K3SROTD_OK"] == "kidA"
    try:
        raise ValueError(PEM)
    except ValueError as e:
        log.error("oops", msg="bad key", error=e, exc_info=True)
    rec = journald.record()
    assert rec["K3SROTD_ERROR"] == "[redacted]"
    assert rec["K3SROTD_TRACEBACK"] == "[redacted]"
    assert "PRIVATE" not in json.dumps(rec)


def test_console_line(capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.configure("console")  # stderr by default
    log.info("publish.done", msg="published new key abc", signer_kid="kidA", kids=["kidA", "kidB"], note="a b")
    log.debug("hidden.debug")
    log.warning("window.closed")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info     published new key abc \[publish\.done\]"
        r'  signer_kid=kidA kids=kidA,kidB note="a b"',
        err[0],
    )
    assert re.fullmatch(r"\S+ \S+ warning  window\.closed", err[1])


def test_console_exception_follows_the_line() -> None:
    out = io.StringIO()
    log = logs.configure("console", out)
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("x.failed", msg="two\nlines")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("two | lines [x.failed]")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "KeyError: 'k'"


def test_json_lines() -> None:
    out = io.StringIO()
    log = logs.configure("json", out, level="debug")
    log.debug("promote.done", msg="new key signs", signer_kid="kidB", kids=["kidB", "kidA"], secret=PEM)
    obj = json.loads(out.getvalue())
    assert list(obj)[:4] == ["time", "level", "event", "msg"]
    assert obj["level"] == "debug" and obj["event"] == "promote.done" and obj["msg"] == "new key signs"
    assert obj["kids"] == ["kidB", "kidA"]
    assert obj["secret"] == "[redacted]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d", obj["time"])


def test_loggers_follow_a_reconfiguration(journald: Journald) -> None:
    out = io.StringIO()
    log = logs.get_logger(component="daemon")  # before configure(): console on stderr
    assert logs.configured_format() == "console"
    logs.configure("json", out)
    log.info("reload.done")
    assert json.loads(out.getvalue())["component"] == "daemon"
    logs.configure("journal", out, journal_socket=journald.path)
    log.info("reload.done")
    assert journald.record()["K3SROTD_COMPONENT"] == "daemon"


def test_auto_detection(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as f:
        st = os.fstat(f.fileno())
        assert logs.detect_format(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "journal"
        assert logs.detect_format(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}) == "console"
        assert logs.detect_format(f, {"INVOCATION_ID": "0123abcd"}) == "journal"
        assert logs.detect_format(f, {}) == "console"
    assert logs.detect_format(io.StringIO(), {"JOURNAL_STREAM": "1:2"}) == "console"


def test_auto_configures_journal_under_systemd(journald: Journald) -> None:
    logs.configure("auto", io.StringIO(), journal_socket=journald.path, environ={"INVOCATION_ID": "1"})
    assert logs.configured_format() == "journal"
    logs.configure("auto", io.StringIO(), environ={})
    assert logs.configured_format() == "console"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.configure("syslog")
    with pytest.raises(ValueError, match="log level"):
        logs.configure("console", level="trace")


@pytest.mark.parametrize(
    ("key", "name"),
    [("signer_kid", "K3SROTD_SIGNER_KID"), ("target-kids", "K3SROTD_TARGET_KIDS"), ("x" * 80, "K3SROTD_" + "X" * 56)],
)
def test_field_names(key: str, name: str) -> None:
    assert field_name(key, "K3SROTD_") == name


def test_field_names_without_prefix_are_valid() -> None:
    assert field_name("_private") == "PRIVATE"
    assert field_name("1st") == "X1ST"
    assert field_name("ümlaut") == "MLAUT"


def test_journal_socket_errors_other_than_size_are_raised(tmp_path: Path) -> None:
    j = JournalSocket(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        j.send([("MESSAGE", "x")])
    j.close()
    j.close()


def test_importing_the_daemon_modules_does_not_import_structlog() -> None:
    code = (
        "import sys\n"
        "import k3srotd.output.logs, k3srotd.output.journal, k3srotd.output.notify, k3srotd.core.window\n"
        "import k3srotd.output.metrics, k3srotd.output.hooks\n"
        "print(sorted(m for m in ('structlog', 'yaml', 'prometheus_client') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_auto_on_a_console_also_records_to_the_journal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A command typed in a shell prints console lines, and journald still gets the record (monitoring sees
    manual steps); with no journald listening, console lines only."""
    import io
    import socket as _socket

    from k3srotd.output import logs as _logs

    path = tmp_path / "journal.sock"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    out = io.StringIO()
    try:
        log = _logs.configure("auto", stream=out, journal_socket=str(path), environ={})
        log.info("promote.done", msg="promoted", signer_kid="abc", kids=["abc", "def"])
        record = sock.recv(65536)
    finally:
        _logs.reset()
        sock.close()
    assert "promoted" in out.getvalue()
    assert b"K3SROTD_EVENT=promote.done\n" in record and b"K3SROTD_KIDS=abc,def\n" in record
    assert b"SYSLOG_IDENTIFIER=k3srotd\n" in record and b"PRIORITY=6\n" in record
    out2 = io.StringIO()
    try:
        log = _logs.configure("auto", stream=out2, journal_socket=str(tmp_path / "absent.sock"), environ={})
        log.info("prune.done", msg="pruned")
    finally:
        _logs.reset()
    assert "pruned" in out2.getvalue()
