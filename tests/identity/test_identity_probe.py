"""TokenProbe in-process against a real emulated server, for the outcomes the CLI tests cannot reach easily: a
token from before the restart that no longer passes TokenReview, the rollback that reports instead of failing, and a
probe skipped because no token could be minted before the restart."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.core.clock import FakeClock
from k3srotd.engine.executor import VerifyFailed
from k3srotd.identity.probe import TokenProbe
from k3srotd.node.k3s import K3s

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, msg="", **kw: self.records.append((level, event, msg))


def _pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _replace_keys(srv: Any, tmp: Path, data: bytes) -> None:
    """Put `data` live by the documented route: rotate-ca (forced), then a restart."""
    (tmp / "server" / "tls").mkdir(parents=True, exist_ok=True)
    (tmp / "server" / "tls" / "service.key").write_bytes(data)
    res = srv.rotate_ca(tmp / "server", force=True)
    assert res.returncode == 0, res.stderr
    srv.restart()


@pytest.fixture
def setup(k3s_server: Any, tmp_path: Path) -> tuple[Any, TokenProbe, Log]:
    cfg = dataclasses.replace(Config(), kubeconfig=str(k3s_server.kubeconfig), k3s_server_url=k3s_server.url)
    log = Log()
    return k3s_server, TokenProbe(cfg, K3s(cfg), log, clock=FakeClock(T0)), log


def test_a_token_from_before_that_no_longer_passes_fails_the_step(setup: Any, tmp_path: Path) -> None:
    srv, probe, _ = setup
    old = srv.service_key.read_bytes()
    new = _pem()
    target = keys.parse(new + old, "target")  # the step claims to keep the old key
    probe.before_restart("promote", target)
    _replace_keys(srv, tmp_path, new)  # but K3s drops it
    with pytest.raises(VerifyFailed, match="before the restart no longer passes TokenReview"):
        probe.after_restart("promote", target)


def test_in_a_rollback_the_probe_reports_and_fails_nothing(setup: Any, tmp_path: Path) -> None:
    srv, probe, log = setup
    old = srv.service_key.read_bytes()
    new = _pem()
    target = keys.parse(old + new, "target")  # expects the old key to sign
    probe.before_restart("rollback", target)
    _replace_keys(srv, tmp_path, new + old)  # the new one signs instead
    probe.after_restart("rollback", target)
    assert [(lvl, ev) for lvl, ev, _ in log.records][-1] == ("error", "probe.failed")
    assert "a new token is signed by kid" in log.records[-1][2]


def test_no_token_before_the_restart_means_no_probe_after_it(setup: Any) -> None:
    srv, probe, log = setup
    target = keys.parse(srv.service_key.read_bytes(), "target")
    srv.stop()
    probe.before_restart("publish", target)
    assert log.records[-1][1] == "probe.skipped" and "Connection refused" in log.records[-1][2]
    probe.after_restart("publish", target)  # K3s is still down: nothing is checked, nothing fails


def test_api_errors_after_the_restart_are_retried_then_fail(setup: Any) -> None:
    srv, probe, _ = setup
    target = keys.parse(srv.service_key.read_bytes(), "target")
    probe.before_restart("prune", target)
    srv.stop()
    with pytest.raises(VerifyFailed, match=r"token probe: .*Connection refused"):
        probe.after_restart("prune", target)
    assert probe.clock.monotonic() >= 30  # retried on the (fake) clock up to the limit


def test_an_unusable_kubeconfig_skips_the_probe(tmp_path: Path) -> None:
    cfg = dataclasses.replace(Config(), kubeconfig=str(tmp_path / "missing.yaml"))
    log = Log()
    probe = TokenProbe(cfg, K3s(cfg), log, clock=FakeClock(T0))
    target = keys.parse(_pem(), "target")
    probe.before_restart("publish", target)
    assert log.records[-1][1] == "probe.skipped" and "cannot read the kubeconfig" in log.records[-1][2]
    probe.after_restart("publish", target)
