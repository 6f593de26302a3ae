"""Legacy tokens as evidence: a service-account-token Secret signed by a key due for prune holds its prune until
`prune --reissue-legacy` has K3s's token controller sign it again. Through the CLI against the emulator, whose
token controller follows Kubernetes's (tests/k3semu/secrets.py)."""

from __future__ import annotations

import base64
import time
from typing import Any

from idnode import IdNode
from k3semu.client import KubeClient

from k3srotd.identity import evidence

SA = "/api/v1/namespaces/default/serviceaccounts"
SECRETS = "/api/v1/namespaces/default/secrets"
TYPE = "kubernetes.io/service-account-token"


def legacy_secret(c: KubeClient, name: str, sa: str) -> dict[str, Any]:
    body = {"metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": sa}}, "type": TYPE}
    return dict(c.json("POST", SECRETS, body))


def kid_of(secret: dict[str, Any]) -> str:
    return str(evidence.token_kid(base64.b64decode(secret["data"]["token"]).decode()))


def test_the_emulated_token_controller_fills_and_refills_tokens(plain_node: IdNode) -> None:
    c = plain_node.server.client()
    c.json("POST", SA, {"metadata": {"name": "ci"}})
    s = legacy_secret(c, "ci-token", "ci")
    assert kid_of(s) == plain_node.signing_kid()
    assert base64.b64decode(s["data"]["namespace"]) == b"default" and s["data"]["ca.crt"]
    assert s["metadata"]["annotations"]["kubernetes.io/service-account.uid"]
    s["data"].pop("token")  # cleared: the controller signs a new one
    again = c.json("PUT", f"{SECRETS}/ci-token", s)
    assert kid_of(again) == plain_node.signing_kid() and again["data"]["token"] != s.get("token")
    stale = dict(s, metadata=dict(s["metadata"], resourceVersion="1"))
    assert c.request("PUT", f"{SECRETS}/ci-token", stale)[0] == 409
    # no ServiceAccount named: invalid; a ServiceAccount that does not exist: the controller deletes the Secret
    status, _, _ = c.request("POST", SECRETS, {"metadata": {"name": "bare"}, "type": TYPE})
    assert status == 422
    legacy_secret(c, "orphan", "nobody")
    assert c.request("GET", f"{SECRETS}/orphan")[0] == 404
    listed = c.json("GET", "/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Fservice-account-token")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["ci-token"]
    assert c.request("GET", "/api/v1/secrets?fieldSelector=data.token%3Dx")[0] == 400


def test_a_legacy_secret_holds_its_keys_prune_until_it_is_reissued(plain_node: IdNode) -> None:
    node = plain_node
    c = node.server.client()
    c.json("POST", SA, {"metadata": {"name": "ci"}})
    legacy_secret(c, "ci-token", "ci")
    old = node.signing_kid()
    node.ok("rotate-now")
    new = node.signing_kid()
    node.write_config(grace_period="1s")
    time.sleep(1.1)  # the grace-period has passed: only the Secret holds the prune
    live = node.live_bytes()

    proc = node.k3srotd("prune")
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "default/ci-token" in line and f"signed by {old}" in line, line
    assert "`k3srotd prune --reissue-legacy`" in line
    assert node.live_bytes() == live
    delayed = [e for e in node.events() if e["event"] == "prune.delayed"]
    assert delayed[-1]["secrets"] == ["default/ci-token"] and delayed[-1]["reissue"] == "k3srotd prune --reissue-legacy"
    text = node.status_text()
    assert "prune delayed" in text and "Secret(s) signed by retired keys hold their prune: default/ci-token" in text
    assert "k3srotd prune --reissue-legacy" in text
    doctor = node.k3srotd("doctor").stdout
    assert any(ln.startswith("WARN  legacy tokens") and "default/ci-token" in ln for ln in doctor.splitlines())

    dry = node.ok("prune", "--reissue-legacy", "--dry-run")
    assert f"would re-issue default/ci-token (signed by {old})" in dry.stdout
    assert kid_of(c.json("GET", f"{SECRETS}/ci-token")) == old  # the dry run changed nothing

    done = node.ok("prune", "--reissue-legacy")
    assert f"re-issued default/ci-token (was signed by {old}; now by {new})" in done.stdout
    assert "must read them again" in done.stdout
    assert kid_of(c.json("GET", f"{SECRETS}/ci-token")) == new
    assert node.live_bytes() == live  # re-issuing changes no key

    node.ok("prune")
    assert node.server.jwks_kids() == [new]
    assert "eyJ" not in "\n".join(node.logs)  # no token in any log line
