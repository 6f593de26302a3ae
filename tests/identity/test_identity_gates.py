"""gates.py in-process: which issuer is checked, the promote gate's book (since when, logged once, the cache
hold), the prune gate when /metrics cannot be read, and the status rows. Time is passed in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

import pytest
from oidc_issuer import IssuerServer, TestCA

from k3srotd.config import Config, K3sSettings
from k3srotd.errors import ConfigError
from k3srotd.identity import gates

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
    k3s = K3sSettings(issuer=issuer, extend_token_expiration=kw.pop("extend", None))
    return dataclasses.replace(Config(), state_dir=str(tmp / "state"), k3s=k3s, sources=("/etc/k3srotd/c.yaml",), **kw)


@pytest.mark.parametrize(
    ("verify", "k3s_issuer", "override", "want"),
    [
        ("auto", None, "", None),
        ("auto", "https://kubernetes.default.svc.cluster.local", "", None),
        ("auto", "https://kubernetes.default.svc", "", None),
        ("auto", "k3s", "", None),
        ("auto", PUBLIC, "", PUBLIC),
        ("auto", "https://kubernetes.default.svc", PUBLIC, PUBLIC),
        ("auto", "https://a.example", PUBLIC, PUBLIC),
        ("false", PUBLIC, PUBLIC, None),
        ("true", "https://kubernetes.default.svc", "", "https://kubernetes.default.svc"),
        ("true", None, PUBLIC, PUBLIC),
    ],
)
def test_which_issuer_is_checked(
    tmp_path: Path, verify: str, k3s_issuer: Optional[str], override: str, want: Optional[str]
) -> None:
    c = cfg(tmp_path, k3s_issuer, verify_issuer=verify, oidc_issuer_url=override)
    assert gates.issuer_url(c) == want


@pytest.mark.parametrize(("k3s_issuer", "match"), [(None, "no issuer URL is known"), ("k3s", "not an https URL")])
def test_verify_issuer_true_needs_an_https_url(tmp_path: Path, k3s_issuer: Optional[str], match: str) -> None:
    with pytest.raises(ConfigError, match=f"/etc/k3srotd/c.yaml: key 'verify-issuer' is true, .*{match}"):
        gates.issuer_url(cfg(tmp_path, k3s_issuer, verify_issuer="true"))


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
    rows = dict(gates.status_rows(c, "new", []))
    assert rows["awaiting"].startswith("promote of new waits since 2030-01-01T12:00:00Z: the public issuer")
    assert "awaiting" not in dict(gates.status_rows(c, "other", []))  # another pending key: not this wait

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


def test_promote_waits_out_cached_copies_from_last_modified(
    tmp_path: Path, trusted: None, public_issuer: IssuerServer
) -> None:
    """With Last-Modified, the hold runs from it (the kid appeared no later); without, from first sight."""
    c, log = cfg(tmp_path, public_issuer.issuer), Log()
    public_issuer.publish({"keys": [{"kid": "new"}]}, cache_control="max-age=600", last_modified=True)
    now = dt.datetime.now(dt.timezone.utc)
    r = gates.promote_gate(c, None, log, "new", now)
    assert r is not None and "verifiers may keep its JWKS without it until" in r and "max-age=600s" in r
    assert gates.promote_gate(c, None, log, "new", now + dt.timedelta(seconds=590)) is not None
    assert gates.promote_gate(c, None, log, "new", now + dt.timedelta(seconds=602)) is None


def test_no_issuer_no_wait(tmp_path: Path) -> None:
    log = Log()
    assert gates.promote_gate(cfg(tmp_path), None, log, "new", T0) is None
    assert log.events() == []
    rows = dict(gates.status_rows(cfg(tmp_path), "new", []))
    assert rows["issuer"].startswith("not checked before promote: no issuer URL is known")


class DownAPI:
    server_url = "https://127.0.0.1:1"

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        from k3srotd.node.kubeapi import APIError

        raise APIError(f"{self.server_url}{path}: ConnectionRefusedError: [Errno 111] Connection refused")


class K3s:
    def api(self) -> DownAPI:
        return DownAPI()


def test_prune_gate_waits_when_metrics_cannot_be_read(tmp_path: Path) -> None:
    c, log = cfg(tmp_path), Log()
    r = gates.prune_gate(c, K3s(), log, ["k1", "k2"], T0)
    assert r is not None and "cannot be read" in r and "tokens signed by k1, k2" in r
    assert log.events() == ["prune.delayed"]
    rows = dict(gates.status_rows(c, None, ["k2"]))
    assert rows["prune delayed"].startswith("since 2030-01-01T12:00:00Z: the apiserver's /metrics cannot be read")
    assert "service-account-extend-token-expiration=false" in rows["token lifetime"]
    assert "prune delayed" not in dict(gates.status_rows(c, None, []))  # nothing retired: nothing to delay
    assert "prune delayed" not in dict(gates.status_rows(c, None, ["k3"]))  # pruned by --force, k3 retired since
    # switched off: no wait, and the book forgets it
    off = dataclasses.replace(c, prune_token_metrics=False)
    assert gates.prune_gate(off, K3s(), log, ["k1"], T0) is None
    assert "prune delayed" not in dict(gates.status_rows(off, None, ["k1"]))


def test_token_lifetime_row_only_when_tokens_may_outlive_grace(tmp_path: Path) -> None:
    safe = dataclasses.replace(
        cfg(tmp_path), k3s=K3sSettings(max_token_expiration=dt.timedelta(hours=1), extend_token_expiration=False)
    )
    assert "token lifetime" not in dict(gates.status_rows(safe, None, ["k1"]))


def test_step_checks_follow_the_config(tmp_path: Path) -> None:
    names = lambda c: [type(x).__name__ for x in gates.step_checks(c, None, Log())]  # noqa: E731
    assert names(cfg(tmp_path)) == ["TokenProbe", "MetricsReader"]
    assert names(cfg(tmp_path, verify_tokens=False)) == ["MetricsReader"]
    assert names(cfg(tmp_path, prune_token_metrics=False)) == ["TokenProbe"]
    assert names(cfg(tmp_path, verify_api=False)) == []
