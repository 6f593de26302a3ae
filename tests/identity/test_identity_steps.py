"""Token probes around restarts and the prune gate on token counters, through the CLI against the emulator."""

from __future__ import annotations

import json
import time

from idnode import IdNode, wait_until

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


def test_prune_is_delayed_while_stale_tokens_grow_and_force_overrides(plain_node: IdNode) -> None:
    node = plain_node
    node.write_config(grace_period="2s")
    node.ok("rotate-now")
    old = [k["kid"] for k in node.status()["keys"] if k["role"] == "verify"]
    time.sleep(2.2)  # the grace-period has passed
    node.server.add_token_uses(stale=5)
    proc = node.k3srotd("prune")
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "prune delayed" in line and "serviceaccount_stale_tokens_total grew by 5" in line, line
    assert "`prune --force` overrides" in line
    assert node.server.jwks_kids()[1:] == old
    text = node.status_text()
    assert "prune delayed" in text and "grew by 5" in text
    assert "service-account-extend-token-expiration=false" in text  # what would make the prune safe on time

    proc = node.k3srotd("prune", "--force", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert node.server.jwks_kids() == [node.signing_kid()]
    assert "prune delayed" not in node.status_text()


def test_prune_goes_at_a_later_attempt_once_the_counters_stopped_growing(plain_node: IdNode) -> None:
    """The growth happened early in the window: the first attempt cannot tell it apart and waits; the reading it
    keeps lets the next attempt, a grace-period later, see no growth."""
    node = plain_node
    node.write_config(grace_period="2s")
    node.ok("rotate-now")
    node.server.add_token_uses(legacy=2)
    time.sleep(2.2)
    proc = node.k3srotd("prune")
    assert proc.returncode == 3 and "serviceaccount_legacy_tokens_total grew by 2" in proc.stderr, proc.stderr
    time.sleep(2.2)
    node.ok("prune")
    assert node.server.jwks_kids() == [node.signing_kid()]
    history = json.loads((node.state_dir / "token-metrics.json").read_text())["readings"]
    assert history and all(set(r) == {"at", "start", "counters"} for r in history)


def test_doctor_lines(id_node: IdNode, public_issuer) -> None:
    node = id_node
    out = node.k3srotd("doctor")
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout
    assert any(line.startswith("PASS  public issuer: " + public_issuer.issuer + " reachable") for line in lines)
    assert any(line.startswith("PASS  public issuer consistency: same issuer, the same 1 kid(s)") for line in lines)
    assert any(line.startswith("PASS  token counters: no stale or legacy token use") for line in lines)
    assert any(line.startswith("WARN  token lifetime") and "extend-token-expiration=false" in line for line in lines)

    public_issuer.publish({"keys": []})  # the public issuer lost the signer
    node.server.add_token_uses(stale=1)
    out = node.k3srotd("doctor")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("FAIL  public issuer consistency") and "lacks the signer" in line for line in lines)
    assert any(line.startswith("WARN  token counters") and "grew by 1" in line for line in lines)

    public_issuer.stop()
    out = node.k3srotd("doctor")
    assert any(
        line.startswith("FAIL  public issuer:") and "Connection refused" in line for line in out.stdout.splitlines()
    )
