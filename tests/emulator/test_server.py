"""`k3s server`: files and modes, the kubeconfig, process title, HTTPS endpoints and their authentication,
config files, and the key set held in memory."""

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from k3semu import harness
from k3semu.harness import EmulatedServer, kid_of, public_keys, token_kid
from k3semu.jwt import verify
from k3semu.keys import b64url_decode, certs_from_pem, marshal_private_key, new_ec_key, new_rsa_key


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One server for the read-only checks of this module."""
    server = EmulatedServer(tmp_path_factory.mktemp("k3s-ro") / "data").start()
    yield server
    server.stop()


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def raw_get(srv, path, headers=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_files_modes_and_token(srv):
    tls = srv.tls_dir
    key = (tls / "service.key").read_bytes()
    assert key.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public_keys(key)[0].key_size == 2048
    for name in ("service.key", "service.current.key", "server-ca.key", "client-ca.key"):
        assert mode(tls / name) == 0o600, name
    assert (tls / "service.current.key").read_bytes() == key  # one PKCS#1 key: re-marshalled identically
    token = srv.token_file.read_text().strip()
    ca = (tls / "server-ca.crt").read_bytes()
    assert token.startswith(f"K10{hashlib.sha256(ca).hexdigest()}::server:")
    assert mode(srv.token_file) == 0o600
    assert os.readlink(srv.server_dir / "node-token") == "token"
    status, body = raw_get(srv, "/cacerts")
    assert status == 200 and body == ca


def test_admin_kubeconfig(srv):
    doc = yaml.safe_load(srv.kubeconfig.read_text())
    assert mode(srv.kubeconfig) == 0o600
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == srv.url
    assert base64.b64decode(cluster["certificate-authority-data"]) == (srv.tls_dir / "server-ca.crt").read_bytes()
    user = doc["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    client_ca = certs_from_pem((srv.tls_dir / "client-ca.crt").read_bytes())[0]
    assert cert.issuer == client_ca.subject
    assert base64.b64decode(user["client-key-data"]).startswith(b"-----BEGIN EC PRIVATE KEY-----")


def test_process_title_has_k3s_server(srv):
    with open(f"/proc/{srv.pid}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    pairs = list(zip(argv, argv[1:]))
    assert any(os.path.basename(a) == "k3s" and b == "server" for a, b in pairs), argv
    assert os.getsid(srv.pid) == srv.pid  # its own session


def test_api_needs_authentication_like_k3s(srv):
    for path in ("/readyz", "/livez", "/openid/v1/jwks", "/.well-known/openid-configuration", "/version"):
        status, body = raw_get(srv, path)
        assert status == 401, path
        assert json.loads(body)["reason"] == "Unauthorized"
    assert raw_get(srv, "/ping") == (200, b"pong")
    # a service-account token authenticates; it may read health and discovery but not mint tokens
    token = srv.request_token("default", "app")
    auth = {"Authorization": f"Bearer {token}"}
    assert raw_get(srv, "/readyz", auth) == (200, b"ok")
    assert raw_get(srv, "/openid/v1/jwks", auth)[0] == 200
    assert raw_get(srv, "/readyz", {"Authorization": "Bearer " + token[:-4] + "AAAA"})[0] == 401
    client = srv.client()
    assert client.request("GET", "/readyz")[2] == b"ok"
    assert client.request("GET", "/nope")[0] == 404


def test_jwks_and_discovery(srv):
    keys = public_keys(srv.service_key.read_bytes())
    [jwk] = srv.jwks()["keys"]
    nums = keys[0].public_numbers()
    assert jwk["kid"] == kid_of(keys[0])
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    assert int.from_bytes(b64url_decode(jwk["n"]), "big") == nums.n
    assert int.from_bytes(b64url_decode(jwk["e"]), "big") == nums.e
    doc = srv.openid_configuration()
    assert doc["issuer"] == "https://kubernetes.default.svc.cluster.local"
    assert doc["jwks_uri"] == "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


def test_token_request_and_review(srv):
    client = srv.client()
    status, _, raw = client.request("POST", "/api/v1/namespaces/ns1/serviceaccounts/sa1/token", {"spec": {}})
    assert status == 404  # the ServiceAccount must exist
    srv.ensure_service_account("ns1", "sa1")
    body = {"spec": {"audiences": ["vault"], "expirationSeconds": 1200}}
    status, _, raw = client.request("POST", "/api/v1/namespaces/ns1/serviceaccounts/sa1/token", body)
    assert status == 201
    doc = json.loads(raw)
    token = doc["status"]["token"]
    header = json.loads(b64url_decode(token.split(".")[0]))
    claims = json.loads(b64url_decode(token.split(".")[1]))
    assert header == {"alg": "RS256", "kid": kid_of(public_keys(srv.current_key.read_bytes())[0])}
    assert claims["sub"] == "system:serviceaccount:ns1:sa1"
    assert claims["aud"] == ["vault"]
    assert claims["exp"] - claims["iat"] == 1200 and claims["nbf"] == claims["iat"]
    assert claims["iss"] == "https://kubernetes.default.svc.cluster.local"
    keys = public_keys(srv.service_key.read_bytes())
    assert verify(token, keys, [claims["iss"]], ["vault"])["sub"] == claims["sub"]
    assert srv.review_token(token, audiences=["vault"])["authenticated"] is True
    assert srv.review_token(token)["authenticated"] is False  # wrong audience
    assert srv.review_token("not.a.jwt")["authenticated"] is False
    status, _, raw = client.request(
        "POST", "/api/v1/namespaces/ns1/serviceaccounts/sa1/token", {"spec": {"expirationSeconds": 60}}
    )
    assert status == 422 and b"less than 10 minutes" in raw


def test_config_file_drop_ins_and_cli_precedence(k3s_server_factory, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "https-listen-port": 1,  # the command line wins
                "kube-apiserver-arg": ["service-account-issuer=https://old.example"],
            }
        )
    )
    drop_ins = tmp_path / "config.yaml.d"
    drop_ins.mkdir()
    (drop_ins / "10-issuer.yaml").write_text(
        yaml.safe_dump(
            {
                "kube-apiserver-arg": [
                    "service-account-issuer=https://issuer.example/k3s",
                    "service-account-max-token-expiration=24h",
                ],
            }
        )
    )
    (drop_ins / "20-more.yaml").write_text(yaml.safe_dump({"kube-apiserver-arg+": ["api-audiences=aud1,aud2"]}))

    srv = k3s_server_factory(config_file=config)

    doc = srv.openid_configuration()
    assert doc["issuer"] == "https://issuer.example/k3s"
    assert doc["jwks_uri"] == "https://issuer.example/openid/v1/jwks"
    token = srv.request_token("default", "app", expiration_seconds=7 * 24 * 3600)
    claims = json.loads(b64url_decode(token.split(".")[1]))
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert claims["aud"] == ["aud1", "aud2"]
    assert srv.review_token(token)["authenticated"] is True


def test_running_server_keeps_the_key_set_it_loaded(k3s_server):
    kids = k3s_server.jwks_kids()
    signer = k3s_server.signer_kid()
    k3s_server.service_key.write_bytes(marshal_private_key(new_rsa_key()))
    k3s_server.current_key.unlink()
    assert k3s_server.jwks_kids() == kids
    assert k3s_server.signer_kid() == signer


def test_key_file_parsing_like_client_go(k3s_server_factory, tmp_path):
    """service.key with CRLF, a PKCS#8 EC key first, other PEM blocks, a PUBLIC KEY and a certificate."""
    from cryptography.hazmat.primitives import serialization

    ec = new_ec_key()
    rsa_old = new_rsa_key()
    pub_only = new_rsa_key().public_key()
    cert_key = new_ec_key()
    from k3semu.keys import cert_pem, new_ca

    cert = new_ca("verify-only", cert_key)
    content = (
        b"comment line\n"
        + b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        + ec.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).replace(b"\n", b"\r\n")
        + marshal_private_key(rsa_old)
        + pub_only.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        + cert_pem(cert)
    )
    data_dir = tmp_path / "data"
    (data_dir / "server" / "tls").mkdir(parents=True)
    (data_dir / "server" / "tls" / "service.key").write_bytes(content)

    srv = k3s_server_factory(data_dir=data_dir)

    # the PKCS#8 EC key signs (by label) but is not in the verify set (SEC1 only), as client-go's keyutil
    expected = [kid_of(k) for k in (rsa_old.public_key(), pub_only, cert_key.public_key())]
    assert srv.jwks_kids() == expected
    assert srv.service_key.read_bytes() == content  # kept byte for byte: the datastore was empty
    assert srv.current_key.read_bytes() == marshal_private_key(ec)
    token = srv.request_token("default", "app")
    assert token_kid(token) == kid_of(ec.public_key())
    assert json.loads(b64url_decode(token.split(".")[0]))["alg"] == "ES256"
    assert srv.review_token(token)["authenticated"] is False  # its signer is not in its verify set


def test_service_key_without_private_key_is_fatal(k3s_server_factory, tmp_path):
    from cryptography.hazmat.primitives import serialization

    data_dir = tmp_path / "data"
    (data_dir / "server" / "tls").mkdir(parents=True)
    pub = (
        new_rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (data_dir / "server" / "tls" / "service.key").write_bytes(pub)
    srv = k3s_server_factory(data_dir=data_dir, start=False)
    srv.start(wait=False)
    assert srv.wait_exit(30) == 1
    assert "data does not contain a valid RSA or ECDSA private key" in srv.log()


def test_systemd_notify_ready(k3s_server_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(30)
        srv = k3s_server_factory(env={"NOTIFY_SOCKET": sock_path}, start=False)
        env = harness.subprocess_env({"NOTIFY_SOCKET": sock_path})
        srv.emulator_dir.mkdir(parents=True, exist_ok=True)
        srv.config_file.write_text("")
        proc = subprocess.Popen(srv.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            message = sock.recv(4096).decode()
            assert "READY=1" in message.splitlines()
            assert srv.is_ready()
        finally:
            proc.terminate()
            assert proc.wait(10) == 0


def test_version_and_usage_errors(k3s_server):
    assert k3s_server.k3s("--version").stdout.startswith("k3s version v1.")
    result = k3s_server.k3s("server", "--no-such-flag")
    assert result.returncode == 1
    assert "flag provided but not defined: -no-such-flag" in result.stderr


def test_unit_file_verifies(tmp_path):
    analyze = "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        pytest.skip("systemd-analyze not installed")
    unit = (harness.BIN_DIR.parent / "k3s.service").read_text()
    assert "Type=notify" in unit and "ExecStart=/usr/local/bin/k3s server" in unit
    local = tmp_path / "k3s.service"
    local.write_text(unit.replace("/usr/local/bin/k3s", str(harness.K3S_BIN)))
    result = subprocess.run([analyze, "verify", "--man=no", str(local)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
