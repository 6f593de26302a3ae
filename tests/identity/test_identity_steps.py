"""Token probes around restarts, the prune gate on the stale-token counter (in-process against the emulator, with
K3s's token settings as given) and doctor's lines, through the CLI against the emulator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from typing import Any

from idnode import IdNode, wait_until
from test_identity_gates import Log

from k3srotd import config
from k3srotd.config import Config
from k3srotd.identity import gates
from k3srotd.node.k3s import K3s

PROBE_LABELS = {"app.kubernetes.io/managed-by": "k3srotd"}


def _publish_only(node: IdNode) -> str:
    """Publish a new key and stop before promote (rotate-now interrupted during publish-wait); its kid."""
    node.write_config(publish_wait="1h")
    node.start_bg("rotate-now")
    wait_until(lambda: node.status()["phase"] == "published", what="publish")
    node.stop_bg()
    node.write_config(publish_wait="0s")
    st = node.status()
    return next(k["kid"] for k in st["keys"] if k["role"] == "verify" and k["retired_at"] is None)


def test_probe_creates_its_service_account_and_checks_every_restart(plain_node: IdNode) -> None:
    node = plain_node
    assert node.server.service_account("kube-system", "k3srotd-probe") is None
    node.ok("rotate-now")
    sa = node.server.service_account("kube-system", "k3srotd-probe")
    assert sa is not None and sa["metadata"]["labels"] == PROBE_LABELS
    ok = [e for e in node.events() if e["event"] == "probe.ok"]
    assert [e["step"] for e in ok] == ["publish", "promote"]
    assert all("still passes TokenReview" in e["msg"] for e in ok)
    assert [e["event"] for e in node.events()].count("probe.created") == 1


def test_probe_catches_a_signer_whose_tokens_do_not_verify_and_the_promote_is_rolled_back(plain_node: IdNode) -> None:
    node = plain_node
    old = node.signing_kid()
    new = _publish_only(node)
    live = node.live_bytes()
    node.server.set_faults({"bad_tokens": {"kid": new}})  # tokens signed while `new` signs do not verify
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "token probe" in proc.stderr and "signature does not verify" in proc.stderr
    assert "restored" in proc.stderr.splitlines()[-1]
    assert node.signing_kid() == old and node.live_bytes() == live
    assert node.status()["phase"] == "published"
    events = [e["event"] for e in node.events()]
    assert "step.failed" in events and "rollback.done" in events

    node.server.clear_faults()
    node.ok("rotate-now", "--skip-publish-wait")
    assert node.signing_kid() == new
    assert "eyJ" not in "\n".join(node.logs)  # no token in any log line: every JWT starts so ({"...)


def test_probe_catches_tokens_naming_another_kid_in_a_direct_rotation(plain_node: IdNode) -> None:
    node = plain_node
    node.write_config(strategy="direct")
    old = node.signing_kid()
    node.server.set_faults({"bad_tokens": {"not_kid": old, "mode": "kid"}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "a new token is signed by kid" in proc.stderr and ", expected " in proc.stderr
    assert node.signing_kid() == old
    # rolled back: the old key signs again; the new one stays verify-only, for the tokens it signed meanwhile
    assert node.server.jwks_kids()[0] == old and len(node.server.jwks_kids()) == 2
    assert "eyJ" not in "\n".join(node.logs)


def _cfg(node: IdNode, **k3s: Any) -> Config:
    """k3srotd's config as the CLI loads it, with K3s's token settings replaced (in-process gate checks)."""
    cfg = config.load(str(node.config))
    return dataclasses.replace(cfg, k3s=dataclasses.replace(cfg.k3s, **k3s))


def test_the_stale_counter_holds_a_prune_only_where_the_settings_give_no_proof(plain_node: IdNode) -> None:
    node = plain_node
    node.ok("rotate-now")
    old = [k["kid"] for k in node.status()["keys"] if k["role"] == "verify"]
    node.server.add_token_uses(stale=5, legacy=7)
    log, now = Log(), dt.datetime.now(dt.timezone.utc)
    # a max expiration, but extend-token-expiration not false (upstream's default): the counter gates
    counter = _cfg(node, max_token_expiration=dt.timedelta(hours=1))
    r = gates.prune_gate(counter, K3s(counter), log, old, now)
    assert r is not None and "serviceaccount_stale_tokens_total grew by 5" in r, r
    assert "legacy" not in r  # the legacy counters no longer gate
    assert "service-account-extend-token-expiration=false" in r  # what turns it into proof
    assert log.records[-1][1] == "prune.delayed" and log.records[-1][2]["kids"] == old
    # extend=false and max expiration within the grace-period: proof, the counter does not matter
    proof = _cfg(node, max_token_expiration=dt.timedelta(hours=1), extend_token_expiration=False)
    assert gates.prune_gate(proof, K3s(proof), log, old, now) is None
    # no max expiration (K3s's default): no proof and no counter; the prune goes, with a warning
    assert gates.prune_gate(_cfg(node), K3s(counter), log, old, now) is None
    assert "no service-account-max-token-expiration" in (gates.token_lifetime_warning(_cfg(node), "prune") or "")

    node.write_config(grace_period="1s")
    time.sleep(1.2)
    proc = node.k3srotd("prune")
    assert proc.returncode == 0, proc.stderr
    assert "no service-account-max-token-expiration" in proc.stderr  # true of this setup: said
    assert "raise grace-period (1s) to at least 1h 1m" in proc.stderr  # advice kube-apiserver accepts
    assert node.server.jwks_kids() == [node.signing_kid()]


def test_a_prune_held_by_the_counter_goes_at_a_later_attempt_once_it_stopped_growing(plain_node: IdNode) -> None:
    """The counter grew within the window: the attempt waits; the reading it keeps lets the next attempt, a
    grace-period later, see no growth."""
    node = plain_node
    node.ok("rotate-now")
    old = [k["kid"] for k in node.status()["keys"] if k["role"] == "verify"]
    node.server.add_token_uses(stale=2)
    cfg = dataclasses.replace(
        _cfg(node, max_token_expiration=dt.timedelta(seconds=1)), grace_period=dt.timedelta(seconds=2)
    )
    log = Log()
    r = gates.prune_gate(cfg, K3s(cfg), log, old, dt.datetime.now(dt.timezone.utc))
    assert r is not None and "serviceaccount_stale_tokens_total grew by 2" in r, r
    assert "prune delayed" in node.status_text()
    time.sleep(2.2)
    assert gates.prune_gate(cfg, K3s(cfg), log, old, dt.datetime.now(dt.timezone.utc)) is None
    assert log.records[-1][1] == "prune.gate-open"
    history = json.loads((node.state_dir / "token-metrics.json").read_text())["readings"]
    assert history and all(set(r) == {"at", "start", "counters"} for r in history)


def test_doctor_lines(id_node: IdNode, public_issuer) -> None:
    node = id_node
    out = node.k3srotd("doctor")
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout
    assert any(line.startswith("PASS  public issuer: " + public_issuer.issuer + " reachable") for line in lines)
    assert any(line.startswith("PASS  public issuer consistency: same issuer, the same 1 kid(s)") for line in lines)
    assert any(line.startswith("PASS  legacy tokens: 0 service-account-token Secret(s)") for line in lines)
    assert any(line.startswith("WARN  bound tokens: no service-account-max-token-expiration") for line in lines), (
        lines
    )  # K3s's default: the setting to add is named

    node.server.add_token_uses(legacy=3)  # reported, never a FAIL or WARN: the Secret scan decides
    out = node.k3srotd("doctor")
    assert any(
        line.startswith("PASS  legacy tokens") and "counted 3 legacy token use(s)" in line
        for line in out.stdout.splitlines()
    ), out.stdout

    public_issuer.publish({"keys": []})  # the public issuer lost the signer
    out = node.k3srotd("doctor")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("FAIL  public issuer consistency") and "lacks the signer" in line for line in lines)

    public_issuer.stop()
    out = node.k3srotd("doctor")
    assert any(
        line.startswith("FAIL  public issuer:") and "Connection refused" in line for line in out.stdout.splitlines()
    )
