"""journald's native protocol, written directly: no libsystemd, no python-systemd needed.

A record is one datagram to /run/systemd/journal/socket (AF_UNIX, SOCK_DGRAM) holding one field per line:
`NAME=value\\n`, or, for a value that contains a newline, `NAME\\n` + the value's length as 64-bit little endian
+ the value + `\\n`. A record too large for one datagram (EMSGSIZE/ENOBUFS, the sender's buffer: about 200 KiB
by default) is written to a sealed memfd whose descriptor is passed with SCM_RIGHTS, as sd_journal_send() does;
nothing is truncated. When even that fails, `send` raises OSError and the caller (logs.py) writes the record to
stderr instead, which systemd also puts in the journal.

Field names: upper case letters, digits and '_', not starting with a digit or '_', at most 64 characters;
`field_name()` makes one from a log key.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
import threading
from typing import Iterable, Optional

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_NOT_NAME = re.compile(r"[^A-Z0-9_]")
_SNDBUF = 8 * 1024 * 1024  # as libsystemd asks; the kernel caps it at net.core.wmem_max
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE", "F_SEAL_SEAL")


def field_name(key: str, prefix: str = "") -> str:
    """A valid journald field name for `key`: `signer_kid` -> `K3SROTD_SIGNER_KID` with prefix `K3SROTD_`."""
    name = _NOT_NAME.sub("_", (prefix + key).upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "X" + name
    return name[:64]


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """One record in the native protocol. Names must already be valid (see field_name)."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


class JournalSocket:
    """Sends records to journald. Thread-safe: one datagram per record, the socket shared."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            with contextlib.suppress(OSError):  # a smaller buffer only means the memfd path is taken sooner
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
            self._sock = sock
        return self._sock

    def send(self, fields: Iterable[tuple[str, str]]) -> None:
        """Send one record; OSError if journald cannot be reached (e.g. ENOENT: not running)."""
        data = encode(fields)
        with self._lock:
            sock = self._socket()
            try:
                sock.sendto(data, self.path)
                return
            except OSError as e:
                if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
            self._send_as_memfd(sock, data)

    def _send_as_memfd(self, sock: socket.socket, data: bytes) -> None:
        fd = os.memfd_create("k3srotd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = 0
            for name in _SEALS:
                seals |= getattr(fcntl, name)
            # journald maps a sealed memfd as is; an unsealed descriptor it accepts only from a few paths.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
