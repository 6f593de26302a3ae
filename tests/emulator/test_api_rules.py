"""The kube-apiserver rules the emulator enforces as the real one does (sources cited in k3semu/objects.py,
k3semu/api.py, k3semu/jwt.py, k3semu/server.py)."""

from __future__ import annotations

import json
import time

import pytest
from k3semu import jwt, keys
from k3semu.harness import EmulatedServer

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


def _lease(name: str, renew: str = "2026-01-02T03:04:05.123456Z", **meta: object) -> dict:
    return {
        "metadata": {"name": name, **meta},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5, "renewTime": renew, "acquireTime": renew},
    }


@pytest.mark.parametrize(
    "renew",
    ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123Z", "2026-01-02T03:04:05.123456789Z", "yesterday", 5],
)
def test_lease_times_need_exactly_six_fractional_digits(k3s_server: EmulatedServer, renew: object) -> None:
    status, _, data = k3s_server.client().request("POST", LEASES, _lease("t", renew))  # type: ignore[arg-type]
    assert status == 400 and json.loads(data)["reason"] == "BadRequest"
    assert "2006-01-02T15:04:05.000000Z07:00" in json.loads(data)["message"]
    assert k3s_server.client().request("GET", f"{LEASES}/t")[0] == 404


def test_lease_update_needs_a_resource_version_and_creates_missing(k3s_server: EmulatedServer) -> None:
    c = k3s_server.client()
    status, _, data = c.request("PUT", f"{LEASES}/fresh", _lease("fresh"))
    assert status == 201 and json.loads(data)["spec"]["renewTime"] == "2026-01-02T03:04:05.123456Z"
    status, _, data = c.request("PUT", f"{LEASES}/fresh", _lease("fresh"))
    assert status == 422 and "metadata.resourceVersion" in json.loads(data)["message"]
    rv = c.json("GET", f"{LEASES}/fresh")["metadata"]["resourceVersion"]
    status, _, _ = c.request("PUT", f"{LEASES}/fresh", _lease("fresh", resourceVersion=rv))
    assert status == 200
    status, _, data = c.request("PUT", f"{LEASES}/fresh", _lease("fresh", resourceVersion=rv))
    assert status == 409 and json.loads(data)["reason"] == "Conflict"


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "trail-", "a" * 254])
def test_object_names_are_dns1123_subdomains(k3s_server: EmulatedServer, name: str) -> None:
    status, _, data = k3s_server.client().request("POST", LEASES, _lease(name))
    assert status == 422 and "RFC 1123 subdomain" in json.loads(data)["message"]


def test_token_request_needs_the_service_account(k3s_server: EmulatedServer) -> None:
    path = "/api/v1/namespaces/default/serviceaccounts/ghost/token"
    status, _, data = k3s_server.client().request("POST", path, {"spec": {}})
    assert status == 404 and json.loads(data)["message"] == 'serviceaccounts "ghost" not found'
    assert k3s_server.signer_kid()  # `default` exists in default, as kube-controller-manager makes it


def test_token_review_checks_the_service_account_uid(k3s_server: EmulatedServer) -> None:
    token = k3s_server.request_token("default", "app")
    assert k3s_server.review_token(token)["authenticated"] is True
    store = str(k3s_server.datastore_dir)
    # the ServiceAccount deleted and made again under the same name: a new uid, the old token fails
    path = k3s_server.datastore_dir / "serviceaccounts.json"
    objs = json.loads(path.read_text())
    del objs["default/app"]
    path.write_text(json.dumps(objs))
    status = k3s_server.review_token(token)
    assert status["authenticated"] is False and "has been deleted" in status["error"]
    k3s_server.ensure_service_account("default", "app")
    status = k3s_server.review_token(token)
    assert status["authenticated"] is False and "does not match claim" in status["error"], store


def test_expiry_has_sixty_seconds_of_leeway() -> None:
    key = keys.new_rsa_key(2048)
    iss, aud = "https://i", ["a"]
    now = 1_000_000.0
    claims = jwt.service_account_claims(iss, "ns", "sa", aud, 600, now)
    token = jwt.sign(key, claims)
    assert jwt.verify(token, [key.public_key()], [iss], aud, now=now + 600 + 59)
    with pytest.raises(jwt.TokenError, match="expired"):
        jwt.verify(token, [key.public_key()], [iss], aud, now=now + 600 + 61)
    with pytest.raises(jwt.TokenError, match=r"not valid yet|future"):
        jwt.verify(token, [key.public_key()], [iss], aud, now=now - 61)


@pytest.mark.parametrize("value,starts", [("59m", False), ("1h", True), ("4294967296s", True), ("4294967297s", False)])
def test_max_token_expiration_bounds(k3s_server_factory, value: str, starts: bool) -> None:
    srv = k3s_server_factory(
        start=False, extra_args=[f"--kube-apiserver-arg=service-account-max-token-expiration={value}"]
    )
    if starts:
        srv.start()
        return
    srv.start(wait=False)
    assert srv.wait_exit(30) == 1
    assert "must be between 1 hour and 2^32 seconds" in srv.log()


def test_discovery_only_for_an_https_issuer(k3s_server_factory) -> None:
    srv = k3s_server_factory(extra_args=["--kube-apiserver-arg=service-account-issuer=http://plain.example"])
    for path in ("/openid/v1/jwks", "/.well-known/openid-configuration"):
        assert srv.client().request("GET", path)[0] == 404
    assert srv.review_token(srv.request_token("default", "app"))["authenticated"] is True


def test_jwks_content_type_and_cache_control(k3s_server: EmulatedServer) -> None:
    status, headers, _ = k3s_server.client().request("GET", "/openid/v1/jwks")
    assert status == 200
    assert headers["content-type"] == "application/jwk-set+json"
    assert headers["cache-control"] == "public, max-age=3600"
    status, headers, _ = k3s_server.client().request("GET", "/.well-known/openid-configuration")
    assert headers["cache-control"] == "public, max-age=3600"


def test_p224_key_in_the_verify_set_disables_discovery(k3s_server_factory, tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    srv = k3s_server_factory(start=False)
    signer = keys.marshal_private_key(keys.new_rsa_key(2048))
    p224 = keys.marshal_private_key(ec.generate_private_key(ec.SECP224R1()))
    srv.tls_dir.mkdir(parents=True, exist_ok=True)
    srv.service_key.write_bytes(signer + p224)
    srv.start()
    assert len(srv.disk_kids()) == 2
    assert srv.client().request("GET", "/openid/v1/jwks")[0] == 404
    time.sleep(0)  # tokens still work: the verify set holds both keys
    assert srv.review_token(srv.request_token("default", "app"))["authenticated"] is True
