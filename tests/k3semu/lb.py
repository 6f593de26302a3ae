"""A loopback TCP load balancer for join URLs (as an operator's HAProxy or keepalived address in front of the
servers): each new connection goes to one upstream, chosen at random unless a test passes its own chooser.
Runs as threads in the test process; `picks` records the upstream port of each connection, in order."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from typing import Callable, List, Optional, Sequence


class LoadBalancer:
    def __init__(self, upstreams: Sequence[int], choose: Optional[Callable[[List[int]], int]] = None) -> None:
        self.upstreams = list(upstreams)
        self.choose = choose or random.choice
        self.picks: List[int] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            port = self.choose(self.upstreams)
            self.picks.append(port)
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                client.close()  # the picked server is down: the connection fails, as through a real balancer
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
