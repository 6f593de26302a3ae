"""The outside observer: it is not k3srotd. It reads the emulated servers' files and asks their APIs directly,
all the while, and records every invariant violation with its time.

Invariants (issue 15):
  quorum     k3srotd never starts a server's restart while another server is down (lifecycle records; the
             observer knows the downs the harness injected and does not blame k3srotd for those)
  verify     a token minted on one server verifies on every other running server
  tokens     a token stays valid until its key was pruned, which is never before the grace after it last signed
  keys       no private key is lost: a key that signed is in some live file or the datastore until its grace ran
  converge   (harness) once faults stop, all live files are identical and no step is pending within a bound
  halts      (harness) a halt (rollback failed) only with its journald/log record
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from cryptography.hazmat.primitives.serialization import load_der_private_key
from k3semu.bootstrap import Datastore
from k3semu.client import KubeClient
from k3semu.harness import EmulatedServer, token_kid
from k3semu.keys import kid_of, pem_blocks

REACT = 1.0  # seconds: a restart that begins this soon after an injected down was decided before it
SLACK = 3.0  # seconds: the observer samples, it does not see the instant a key stopped signing


@dataclass
class Violation:
    t: float
    invariant: str
    detail: str

    def line(self, t0: float) -> str:
        return f"t+{self.t - t0:6.1f}s {self.invariant}: {self.detail}"


@dataclass
class Minted:
    token: str
    kid: str
    t: float
    server: int


def private_kids(data: bytes) -> List[str]:
    out = []
    for b in pem_blocks(data):
        if "PRIVATE KEY" in b.type:
            try:
                out.append(kid_of(load_der_private_key(b.der, None).public_key()))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                continue
    return out


class Observer:
    def __init__(self, servers: Sequence[EmulatedServer], datastore: str, grace: float, seed: int) -> None:
        self.servers = list(servers)
        self.datastore = datastore
        self.grace = grace
        self.rnd = random.Random(seed)
        self.t0 = time.time()
        self.tokens: List[Minted] = []
        self.last_signed: Dict[str, float] = {}
        self.violations: List[Violation] = []
        self.injected: List[Tuple[int, float, float]] = []  # (server, from, to): downs the harness caused
        self.seen: set = set()  # (invariant, detail-key) already reported, to report each finding once
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="chaos-observer", daemon=True)
        self.passes = 0
        self.lock = threading.Lock()

    # --- bookkeeping the harness tells us
    def injected_down(self, server: int, t_from: float, t_to: float) -> None:
        with self.lock:
            self.injected.append((server, t_from, t_to))

    def violate(self, invariant: str, detail: str, key: Optional[str] = None) -> None:
        k = (invariant, key or detail)
        with self.lock:
            if k in self.seen:
                return
            self.seen.add(k)
            self.violations.append(Violation(time.time(), invariant, detail))

    # --- the loop
    def start(self) -> Observer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        self.check_quorum()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.one_pass()
            except Exception as e:  # the observer must go on; a bug here is reported, not hidden
                self.violate("observer", f"observer error {e!r}")
            self.passes += 1
            self.stop_event.wait(0.5)

    def one_pass(self) -> None:
        clients: Dict[int, KubeClient] = {}
        fresh: List[Minted] = []
        for i, srv in enumerate(self.servers):
            try:
                c = KubeClient(str(srv.kubeconfig))
                if not c.ready(timeout=1.0):
                    continue
                body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
                doc = c.json("POST", "/api/v1/namespaces/default/serviceaccounts/default/token", body, timeout=2)
                tok = str(doc["status"]["token"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            clients[i] = c
            m = Minted(tok, token_kid(tok), time.time(), i)
            fresh.append(m)
            self.last_signed[m.kid] = m.t
        for m in fresh:
            self._check_verify(m, clients)
            if len(self.tokens) < 400 and not any(t.kid == m.kid and m.t - t.t < 5 for t in self.tokens):
                self.tokens.append(m)
        self._check_old_tokens(clients)
        self._check_keys()

    def _review(self, c: KubeClient, token: str) -> Optional[bool]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            return bool(
                c.json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, timeout=2)["status"].get(
                    "authenticated"
                )
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # restarting: no verdict

    def _kids(self, c: KubeClient) -> Optional[List[str]]:
        try:
            return [k["kid"] for k in c.json("GET", "/openid/v1/jwks", timeout=2)["keys"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _check_verify(self, m: Minted, clients: Dict[int, KubeClient]) -> None:
        for j, c in clients.items():
            if j == m.server or self._review(c, m.token) is not False:
                continue
            time.sleep(0.3)  # a restart may have just changed either server: look twice before blaming
            kids = self._kids(c)
            if self._review(c, m.token) is False and kids is not None and m.kid not in kids:
                self.violate(
                    "verify",
                    f"server-{m.server} signs with {m.kid[:8]}, which server-{j} does not verify (it lists "
                    f"{','.join(k[:8] for k in kids)})",
                    key=f"{m.kid}->{j}",
                )

    def _check_old_tokens(self, clients: Dict[int, KubeClient]) -> None:
        if not clients:
            return
        now = time.time()
        old = [t for t in self.tokens if now - t.t > 2]
        for m in self.rnd.sample(old, min(3, len(old))):
            j = self.rnd.choice(sorted(clients))
            if self._review(clients[j], m.token) is not False:
                continue
            kids = self._kids(clients[j])
            if kids is None:
                continue
            if m.kid in kids:
                self.violate("tokens", f"server-{j} rejects a token of {m.kid[:8]} while it lists that key")
            elif time.time() < self.last_signed[m.kid] + self.grace - SLACK:
                ago = time.time() - self.last_signed[m.kid]
                self.violate(
                    "tokens",
                    f"server-{j} rejects a token of {m.kid[:8]} (minted on server-{m.server}) {ago:.0f}s after "
                    f"that key last signed, before the grace of {self.grace:g}s",
                    key=f"{m.kid}@{j}",
                )
            else:
                self.tokens.remove(m)  # pruned after the grace: its end is legitimate

    def _check_keys(self) -> None:
        held = set()
        for srv in self.servers:
            try:
                held.update(private_kids(srv.service_key.read_bytes()))
            except OSError:
                continue
        try:
            ds = Datastore(self.datastore)
            with ds.locked(exclusive=False):
                files = ds.read() or {}
            if "ServiceKey" in files:
                held.update(private_kids(files["ServiceKey"].content))
        except (OSError, ValueError):
            return
        now = time.time()
        for kid, last in list(self.last_signed.items()):
            if kid not in held and now < last + self.grace - SLACK:
                self.violate(
                    "keys",
                    f"the private key {kid[:8]} signed {now - last:.0f}s ago and is in no live file nor the datastore",
                    key=kid,
                )

    # --- quorum, from the servers' own lifecycle records
    def downs(self, i: int) -> List[Tuple[float, float, bool]]:
        """(from, to, by_k3srotd) for each down window of server i; `to` is +inf while it is still down."""
        out: List[Tuple[float, float, bool]] = []
        begin: Optional[float] = None
        serving: Optional[int] = None  # the pid that serves: a second start that fails (port taken) is no down
        for rec in self.servers[i].lifecycle():
            ev, t, pid = rec["event"], rec["t"], rec.get("pid")
            if ev in ("stopping", "stopped") and pid == serving and begin is None:
                begin, serving = t, None
            elif ev == "ready":
                serving = pid
                if begin is not None:
                    out.append((begin, t, not self._was_injected(i, begin)))
                    begin = None
        for s, a, _b in self.injected:  # a kill -9 leaves no record: the harness's own times stand for it
            if s == i and not any(f - 1 <= a <= t for f, t, _ in out):
                out.append((a, self._next_ready(i, a), False))
        if begin is not None:
            out.append((begin, float("inf"), not self._was_injected(i, begin)))
        return sorted(out)

    def _next_ready(self, i: int, after: float) -> float:
        for rec in self.servers[i].lifecycle():
            if rec["event"] == "ready" and rec["t"] > after:
                return float(rec["t"])
        return float("inf")

    def _was_injected(self, i: int, t: float) -> bool:
        return any(s == i and a - 0.5 <= t <= b + 1.0 for s, a, b in self.injected)

    def check_quorum(self) -> None:
        windows = {i: self.downs(i) for i in range(len(self.servers))}
        for i, mine in windows.items():
            for begin, _, by_us in mine:
                if not by_us:
                    continue
                for j, theirs in windows.items():
                    for b, e, by in theirs:
                        react = 0.0 if by else REACT  # an injected down just before: k3srotd had decided already
                        if j != i and b + react < begin < e:
                            why = "a restart by k3srotd" if by else "an injected fault"
                            self.violate(
                                "quorum",
                                f"k3srotd restarted server-{i} at t+{begin - self.t0:.1f}s while server-{j} was down "
                                f"(since t+{b - self.t0:.1f}s, {why})",
                                key=f"{i}@{begin}",
                            )
