"""gates.py in-process: the promote gate's book (since when, logged once, the cache hold), both gates failing
closed when the cluster cannot be read, and the status rows. Time is passed in. The verdicts themselves are
tested as tables in test_identity_verdicts.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

import pytest
from oidc_issuer import IssuerServer, TestCA

from k3srotd.config import Config, K3sSettings
from k3srotd.identity import gates, report

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
PUBLIC = "https://oidc.example.net/tenant/cluster"


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._add("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def events(self) -> list[str]:
        return [e for _, e, _ in self.records]


def cfg(tmp: Path, issuer: Optional[str] = None, **kw: Any) -> Config:
    """`issuer`: the public issuer, named by oidc-issuer-url (the cluster is not asked then)."""
    k3s = K3sSettings(extend_token_expiration=kw.pop("extend", None))
    return dataclasses.replace(
        Config(),
        state_dir=str(tmp / "state"),
        k3s=k3s,
        sources=("/etc/k3srotd/c.yaml",),
        oidc_issuer_url=issuer or "",
        **kw,
    )


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch, test_ca: TestCA) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca_file))


def test_promote_gate_book_since_and_one_log_line_per_cause(
    tmp_path: Path, trusted: None, public_issuer: IssuerServer
) -> None:
    c, log = cfg(tmp_path, public_issuer.issuer), Log()
    book = tmp_path / "state" / "gates.json"
    public_issuer.publish({"keys": [{"kid": "old"}]})
    r1 = gates.promote_gate(c, None, log, "new", T0)
    assert r1 == (
        f"the public issuer {public_issuer.issuer} does not list kid new yet (last fetched 2030-01-01T12:00:00Z); "
        "awaited since 2030-01-01T12:00:00Z"
    )
    r2 = gates.promote_gate(c, None, log, "new", T0 + dt.timedelta(minutes=5))
    assert r2 is not None and r2.endswith("awaited since 2030-01-01T12:00:00Z")
    assert log.events() == ["promote.awaiting"]
    assert json.loads(book.read_text())["promote"]["checked_at"] == "2030-01-01T12:05:00Z"
    assert book.stat().st_mode & 0o777 == 0o600

    public_issuer.stop()  # another cause: logged again, same since
    r3 = gates.promote_gate(c, None, log, "new", T0 + dt.timedelta(minutes=10))
    assert r3 is not None and "cannot be checked" in r3 and r3.endswith("awaited since 2030-01-01T12:00:00Z")
    assert log.events() == ["promote.awaiting", "promote.awaiting"]
    rows = dict(report.status_rows(c, None, "new", []))
    assert rows["awaiting"].startswith("promote of new waits since 2030-01-01T12:00:00Z: the public issuer")
    assert "awaiting" not in dict(report.status_rows(c, None, "other", []))  # another pending key: not this wait

    public_issuer.start()
    public_issuer.publish({"keys": [{"kid": "old"}, {"kid": "new"}]})
    assert gates.promote_gate(c, None, log, "new", T0 + dt.timedelta(minutes=15)) is None
    assert log.events()[-1] == "promote.gate-open"
    assert "promote" not in json.loads(book.read_text())
    # a different kid starts a new wait
    assert "awaited since 2030-01-01T13:00:00Z" in (gates.promote_gate(c, None, log, "newer", at(1)) or "")


def test_promote_gate_warns_loudly_once_past_issuer_wait_warn_and_keeps_waiting(
    tmp_path: Path, trusted: None, public_issuer: IssuerServer
) -> None:
    """The daemon and rotate-now share the gate: the warning counts from the book's since, across runs."""
    c, log = cfg(tmp_path, public_issuer.issuer, issuer_wait_warn=dt.timedelta(hours=1)), Log()
    public_issuer.publish({"keys": [{"kid": "old"}]})
    for minutes in (0, 30, 59):
        assert gates.promote_gate(c, None, log, "new", T0 + dt.timedelta(minutes=minutes)) is not None
    assert "promote.waiting" not in log.events()
    for minutes in (61, 120):
        assert gates.promote_gate(c, None, log, "new", T0 + dt.timedelta(minutes=minutes)) is not None
    loud = [(lvl, kw["msg"]) for lvl, e, kw in log.records if e == "promote.waiting"]
    assert len(loud) == 1 and loud[0][0] == "warning"
    assert "has waited 1h 1m" in loud[0][1] and "still waiting" in loud[0][1]


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def test_promote_waits_out_cached_copies_for_the_full_max_age_whatever_age_says(
    tmp_path: Path, trusted: None, public_issuer: IssuerServer
) -> None:
    """Behind a CDN the JWKS comes with Age: the hold is still the full max-age from first sight of the kid."""
    c, log = cfg(tmp_path, public_issuer.issuer), Log()
    public_issuer.publish({"keys": [{"kid": "new"}]}, cache_control="max-age=600", last_modified=True, age=550)
    now = dt.datetime.now(dt.timezone.utc)
    r = gates.promote_gate(c, None, log, "new", now)
    assert r is not None and "verifiers may keep its JWKS without it until" in r and "max-age=600s" in r
    assert gates.promote_gate(c, None, log, "new", now + dt.timedelta(seconds=590)) is not None
    assert gates.promote_gate(c, None, log, "new", now + dt.timedelta(seconds=602)) is None


def test_no_issuer_no_wait(tmp_path: Path) -> None:
    log = Log()
    off = cfg(tmp_path, verify_issuer="false")
    assert gates.promote_gate(off, None, log, "new", T0) is None
    assert log.events() == []
    rows = dict(report.status_rows(off, None, "new", []))
    assert rows["issuer"] == "not checked before promote: verify-issuer is false"


class DownAPI:
    server_url = "https://127.0.0.1:1"

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        from k3srotd.node.kubeapi import APIError

        raise APIError(f"{self.server_url}{path}: ConnectionRefusedError: [Errno 111] Connection refused")

    def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        self.request(method, path, body)
        return 0, None


class DownK3s:
    def api(self) -> DownAPI:
        return DownAPI()


def test_gates_fail_closed_when_the_cluster_cannot_be_read(tmp_path: Path) -> None:
    """The Secrets cannot be read: prune waits. The cluster's issuer cannot be read: promote waits."""
    c, log = cfg(tmp_path), Log()
    r = gates.prune_gate(c, DownK3s(), log, ["k1", "k2"], T0)
    assert r is not None and "Secrets cannot be read" in r and "k1, k2 signed a token that never expires" in r
    assert log.events() == ["prune.delayed"]
    rows = dict(report.status_rows(c, DownK3s(), None, ["k2"]))
    assert rows["prune delayed"].startswith("since 2030-01-01T12:00:00Z: the service-account-token Secrets")
    assert "prune delayed" not in dict(report.status_rows(c, DownK3s(), None, []))  # nothing retired
    assert "prune delayed" not in dict(report.status_rows(c, DownK3s(), None, ["k3"]))  # --force pruned k1, k2
    assert rows["issuer"].startswith("promote waits: the cluster's issuer cannot be read")
    r = gates.promote_gate(c, DownK3s(), log, "new", T0)
    assert r is not None and r.startswith("the cluster's issuer cannot be read (https://127.0.0.1:1/.well-known")
    assert log.events()[-1] == "promote.awaiting"
    # verify-api false: no API at all; K3s's config is all there is, and the Secrets are not read
    off = dataclasses.replace(c, verify_api=False)
    assert gates.prune_gate(off, DownK3s(), log, ["k1"], T0) is None
    assert gates.promote_gate(off, DownK3s(), log, "new", T0) is None


def test_step_checks_follow_the_config(tmp_path: Path) -> None:
    names = lambda c: [type(x).__name__ for x in gates.step_checks(c, None, Log())]  # noqa: E731
    assert names(cfg(tmp_path)) == ["TokenProbe", "MetricsReader"]
    assert names(cfg(tmp_path, verify_tokens=False)) == ["MetricsReader"]
    assert names(cfg(tmp_path, prune_token_metrics=False)) == ["TokenProbe"]
    assert names(cfg(tmp_path, verify_api=False)) == []
