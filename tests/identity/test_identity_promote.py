"""Promote waits for the public issuer: rotate-now as a subprocess, the issuer updated by the test."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

from idnode import IdNode, wait_until
from k3semu.harness import EmulatedServer
from oidc_issuer import IssuerServer, TestCA


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _events(text: str, name: str) -> list[str]:
    return [r["msg"] for r in _records(text) if r.get("event") == name]


def _pending(node: IdNode) -> str:
    st = node.status()
    assert st["phase"] == "published", st
    return next(k["kid"] for k in st["keys"] if k["role"] == "verify" and k["retired_at"] is None)


def test_promote_waits_until_the_issuer_lists_the_new_kid(id_node: IdNode, public_issuer: IssuerServer) -> None:
    old = id_node.signing_kid()
    id_node.start_bg("rotate-now")
    text = wait_until(lambda: "does not list kid" in (t := id_node.status_text()) and t, what="status to show the wait")
    new = _pending(id_node)
    assert f"promote of {new} waits since" in text and public_issuer.issuer in text
    time.sleep(1.0)  # several gate polls: still waiting, the old key still signs
    assert id_node.bg is not None and id_node.bg.poll() is None
    assert id_node.signing_kid() == old

    public_issuer.publish(id_node.cluster_jwks())  # the issuer catches up: now it lists the new kid
    done = id_node.wait_bg()
    assert done.returncode == 0, done.stderr
    assert id_node.signing_kid() == new
    assert id_node.status()["phase"] == "promoted"
    awaiting = _events(done.stderr, "promote.awaiting")
    assert len(awaiting) == 1 and f"does not list kid {new}" in awaiting[0] and "waits (since " in awaiting[0]
    assert _events(done.stderr, "promote.gate-open")
    assert "awaiting" not in id_node.status_text()


def test_stale_jwks_is_not_refetched_before_max_age_and_promote_waits_out_cached_copies(
    id_node: IdNode, public_issuer: IssuerServer
) -> None:
    max_age = 5  # the hold must outlast a `status` call under load (about 2 s)
    public_issuer.publish(id_node.cluster_jwks(), cache_control=f"public, max-age={max_age}")
    id_node.start_bg("rotate-now")
    wait_until(lambda: "does not list kid" in id_node.status_text(), what="the wait")
    new = _pending(id_node)
    public_issuer.publish(id_node.cluster_jwks(), cache_control=f"public, max-age={max_age}")
    updated = time.time()
    wait_until(lambda: "verifiers may keep its JWKS without it" in id_node.status_text(), what="the cache hold")
    assert id_node.signing_kid() != new
    done = id_node.wait_bg()
    assert done.returncode == 0, done.stderr
    promoted = time.time()

    hits = public_issuer.jwks_hits()
    gaps = [b[0] - a[0] for a, b in zip(hits, hits[1:])]
    assert gaps and min(gaps) >= max_age - 0.2, gaps  # polled every 0.2 s, fetched once per max-age
    first_listed = next(t for t, kids in hits if new in kids)
    assert first_listed >= updated
    # the new key signs only once a verifier's copy fetched before the update has expired
    started = [r["time"] for r in _records(done.stderr) if r["event"] == "step.start" and r["step"] == "promote"]
    assert started and dt.datetime.fromisoformat(started[0]).timestamp() - first_listed >= max_age - 0.1
    assert promoted > first_listed
    assert id_node.signing_kid() == new


def test_unreachable_issuer_keeps_rotate_now_waiting_and_status_says_so(
    id_node: IdNode, public_issuer: IssuerServer
) -> None:
    id_node.write_config(issuer_wait_warn="1s")
    old = id_node.signing_kid()
    public_issuer.stop()
    id_node.start_bg("rotate-now")
    text = wait_until(lambda: "cannot be checked" in (t := id_node.status_text()) and t, what="status")
    new = _pending(id_node)
    assert f"promote of {new} waits since" in text and "Connection refused" in text
    since = re.search(r"waits since (\S+Z):", text)
    assert since is not None
    time.sleep(1.5)  # past issuer-wait-warn
    assert id_node.bg is not None and id_node.bg.poll() is None, "rotate-now gave up"
    stopped = id_node.stop_bg()
    assert id_node.signing_kid() == old
    assert _events(stopped.stderr, "promote.waiting"), "no loud warning after issuer-wait-warn"
    assert "still waiting" in _events(stopped.stderr, "promote.waiting")[0]

    # the issuer comes back (lists the new key): the next rotate-now continues from published
    public_issuer.start()
    public_issuer.publish(id_node.cluster_jwks())
    id_node.start_bg("rotate-now")
    wait_until(lambda: id_node.bg is not None and id_node.bg.poll() is not None, what="rotate-now to finish")
    done = id_node.wait_bg()
    assert done.returncode == 0, done.stderr
    assert "continuing the rotation under way" in done.stdout
    assert id_node.signing_kid() == new
    # the wait is recorded from the first run on
    assert f"(awaited since {since.group(1)})" in _events(done.stderr, "promote.gate-open")[0]


def test_sigterm_during_a_slow_api_call_at_the_gate_stops_rotate_now(
    id_node: IdNode, public_issuer: IssuerServer
) -> None:
    """The stop lands inside the gate's API call (kube-apiserver answers late): rotate-now exits 143 at once and
    does not take the stop for a failed call and go on waiting."""
    id_node.start_bg("rotate-now")
    wait_until(lambda: "does not list kid" in id_node.status_text(), what="the wait")
    id_node.server.set_faults({"slow_api": {"seconds": 5, "path": "/.well-known/openid-configuration"}})
    time.sleep(1.0)  # the gate polls every 0.2 s: its next discovery request is being answered slowly now
    assert id_node.bg is not None and id_node.bg.poll() is None
    started = time.monotonic()
    stopped = id_node.stop_bg()
    assert stopped.returncode == 143, stopped.stderr
    assert time.monotonic() - started < 4, "rotate-now waited for the slow call before stopping"
    assert "stopped by SIGTERM" in stopped.stderr
    id_node.server.set_faults({})
    assert _pending(id_node)  # the new key stays published; the next rotate-now continues from it


def test_wrong_content_type_is_not_accepted(id_node: IdNode, public_issuer: IssuerServer) -> None:
    public_issuer.jwks_type = "text/html; charset=utf-8"
    id_node.start_bg("rotate-now")
    text = wait_until(lambda: "is served as text/html" in (t := id_node.status_text()) and t, what="status")
    assert "expected application/json or application/jwk-set+json" in text
    public_issuer.publish(id_node.cluster_jwks())  # lists the new kid, still as text/html
    time.sleep(0.6)
    assert id_node.bg is not None and id_node.bg.poll() is None
    public_issuer.jwks_type = "application/json"
    done = id_node.wait_bg()
    assert done.returncode == 0, done.stderr
    assert id_node.status()["phase"] == "promoted"


def test_issuer_override_and_verify_issuer_settings(plain_node: IdNode, public_issuer: IssuerServer, test_ca) -> None:
    """The in-cluster default issuer is not checked (auto); verify-issuer true checks even that one, and waits;
    oidc-issuer-url names an issuer to check even when K3s's is in-cluster."""
    node = plain_node
    assert "not checked before promote: https://kubernetes.default.svc" in node.status_text()
    node.write_config(verify_issuer="true")
    node.start_bg("rotate-now")
    wait_until(lambda: "https://kubernetes.default.svc.cluster.local cannot be checked" in node.status_text())
    node.stop_bg()

    node.write_config(verify_issuer="auto")
    node.env["SSL_CERT_FILE"] = str(test_ca.ca_file)
    public_issuer.discovery_issuer = "https://kubernetes.default.svc.cluster.local"
    node.write_config(oidc_issuer_url=public_issuer.issuer)
    node.start_bg("rotate-now")
    text = wait_until(lambda: "must match service-account-issuer" in (t := node.status_text()) and t, what="status")
    assert f"the public issuer {public_issuer.issuer} cannot be checked" in text
    node.stop_bg()
    node.write_config(verify_issuer="false")
    node.ok("rotate-now")
    assert node.status()["phase"] == "promoted"


def test_the_issuer_comes_from_the_cluster_however_k3s_was_configured(
    tmp_path: Path, test_ca: TestCA, public_issuer: IssuerServer
) -> None:
    """The issuer set as a flag on K3s's command line (the installer's INSTALL_K3S_EXEC), not in any config file
    k3srotd reads: read from the cluster's discovery document, it is checked, and promote waits for it."""
    server = EmulatedServer(
        tmp_path / "k3s",
        config_file=tmp_path / "k3s-config.yaml",
        extra_args=[f"--kube-apiserver-arg=service-account-issuer={public_issuer.issuer}"],
    )
    (tmp_path / "k3s-config.yaml").write_text("")
    node = IdNode(tmp_path, server, env={"SSL_CERT_FILE": str(test_ca.ca_file)})
    server.start()
    try:
        assert node.status_text().splitlines()[3:] and f"issuer         {public_issuer.issuer}" in node.status_text()
        node.start_bg("rotate-now")
        wait_until(lambda: "does not list kid" in node.status_text(), what="the wait for the public issuer")
        public_issuer.publish(node.cluster_jwks())
        done = node.wait_bg()
        assert done.returncode == 0, done.stderr
        assert node.status()["phase"] == "promoted"
        doctor = node.k3srotd("doctor").stdout
        assert f"PASS  public issuer: {public_issuer.issuer} reachable" in doctor
    finally:
        if node.bg is not None and node.bg.poll() is None:
            node.stop_bg()
        server.stop()
