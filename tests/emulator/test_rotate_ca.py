"""`k3s certificate rotate-ca` against emulated servers: validation, --force, the <path>/tls trap, and how it
fails without a server, without a token, or on an agent."""

import os

import pytest
from k3semu.bootstrap import format_ts, parse_ts
from k3semu.harness import EmulatedServer, kid_of, token_kid
from k3semu.keys import marshal_private_key, new_ec_key, new_rsa_key

BOOTSTRAP_FILES = (
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
    "request-header-ca.crt",
    "request-header-ca.key",
    "etcd/server-ca.crt",
    "etcd/server-ca.key",
    "etcd/peer-ca.crt",
    "etcd/peer-ca.key",
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that leave it as they found it."""
    server = EmulatedServer(tmp_path_factory.mktemp("k3s-shared") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def token_restored(shared):
    token = shared.token_file.read_bytes()
    yield shared
    shared.token_file.write_bytes(token)


def stage(tmp_path, content, name="stage"):
    tls = tmp_path / name / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "service.key").write_bytes(content)
    return tmp_path / name


def test_new_list_without_the_old_signer_is_refused(shared, tmp_path):
    k3s_server = shared
    before = k3s_server.datastore_files()["ServiceKey"]
    path = stage(tmp_path, marshal_private_key(new_rsa_key()))

    result = k3s_server.rotate_ca(path)

    assert result.returncode == 1
    assert "certificates saved" not in result.stdout
    [fatal] = [line for line in result.stderr.splitlines() if "level=fatal" in line]
    assert "see server log for details: " in fatal
    assert f"{k3s_server.url}/v1-k3s/cert/cacerts?force=false: 500 Internal Server Error certificate error ID " in fatal
    assert "certificate error ID " in fatal
    assert "old ServiceAccount signing key not in new ServiceAccount key list" in k3s_server.log()
    assert k3s_server.datastore_files()["ServiceKey"] == before


def test_new_list_without_the_old_signer_is_accepted_with_force(k3s_server, tmp_path):
    new = new_rsa_key()
    path = stage(tmp_path, marshal_private_key(new))

    result = k3s_server.rotate_ca(path, force=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "certificates saved to datastore"
    assert "Save of CA certificates and keys forced, ignoring validation errors" in k3s_server.log()
    k3s_server.restart()
    assert k3s_server.jwks_kids() == [kid_of(new.public_key())]


def test_old_signer_may_stay_first_for_a_staged_publish(k3s_server, tmp_path):
    old = k3s_server.service_key.read_bytes()
    old_kid = k3s_server.signer_kid()
    new = new_rsa_key()
    path = stage(tmp_path, old + marshal_private_key(new))

    assert k3s_server.rotate_ca(path).returncode == 0
    k3s_server.restart()

    assert k3s_server.jwks_kids() == [old_kid, kid_of(new.public_key())]
    assert k3s_server.signer_kid() == old_kid


def test_files_directly_in_path_instead_of_path_tls_only_warn_and_change_nothing(k3s_server, tmp_path):
    old_kid = k3s_server.signer_kid()
    before = k3s_server.datastore_files()
    wrong = tmp_path / "opt" / "k3s" / "server"
    wrong.mkdir(parents=True)
    (wrong / "service.key").write_bytes(marshal_private_key(new_rsa_key()) + k3s_server.service_key.read_bytes())

    result = k3s_server.rotate_ca(wrong)

    assert result.returncode == 0, result.stderr
    assert "certificates saved to datastore" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "level=warning" in line]
    assert len(warnings) == 11  # every bootstrap file under <path>/tls, service.key included
    assert any(f"failed to stat ServiceKey: stat {wrong}/tls/service.key: no such file" in w for w in warnings)
    after = k3s_server.datastore_files()
    assert {k: v.content for k, v in after.items()} == {k: v.content for k, v in before.items()}
    k3s_server.restart()
    assert k3s_server.jwks_kids() == [old_kid]


def test_upload_timestamp_is_the_staged_files_mtime(k3s_server, tmp_path):
    path = stage(tmp_path, marshal_private_key(new_rsa_key()) + k3s_server.service_key.read_bytes())
    mtime_ns = 1_700_000_000_123_456_789 + 10**9 * 10**6  # some time in the future, with nanoseconds
    os.utime(path / "tls" / "service.key", ns=(mtime_ns, mtime_ns))

    assert k3s_server.rotate_ca(path).returncode == 0

    stored = k3s_server.datastore_files()["ServiceKey"]
    assert stored.timestamp_ns == mtime_ns
    assert parse_ts(format_ts(mtime_ns)) == mtime_ns


def test_pkcs8_ec_key_signs_but_does_not_verify_and_the_signer_is_remarshalled(k3s_server, tmp_path):
    """A PKCS#8 EC key: ParsePrivateKeyPEM takes it (by label), ParsePublicKeysPEM skips it (SEC1 only), so it
    signs tokens that this server cannot verify, exactly as kube-apiserver would."""
    from cryptography.hazmat.primitives import serialization

    ec = new_ec_key()
    pkcs8 = ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    old_kid = k3s_server.signer_kid()
    path = stage(tmp_path, pkcs8.replace(b"\n", b"\r\n") + k3s_server.service_key.read_bytes())

    assert k3s_server.rotate_ca(path).returncode == 0
    k3s_server.restart()

    assert k3s_server.current_key.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    jwks = k3s_server.jwks()["keys"]
    assert [k["kid"] for k in jwks] == [old_kid]
    token = k3s_server.request_token("kube-system", "coredns")
    assert token_kid(token) == kid_of(ec.public_key())
    assert k3s_server.review_token(token)["authenticated"] is False


def test_without_a_running_server_it_fails_with_connection_refused(k3s_server, tmp_path):
    k3s_server.stop()
    path = stage(tmp_path, marshal_private_key(new_rsa_key()))

    result = k3s_server.rotate_ca(path)

    assert result.returncode == 1
    assert "level=fatal" in result.stderr
    assert f'failed to get CA certs: Get \\"{k3s_server.url}/cacerts\\"' in result.stderr
    assert "connect: connection refused" in result.stderr


def test_without_a_token_file_it_fails(token_restored, tmp_path):
    k3s_server = token_restored
    k3s_server.token_file.unlink()
    result = k3s_server.rotate_ca(stage(tmp_path, b""))
    assert result.returncode == 1
    assert 'level=fatal msg="token must not be empty"' in result.stderr


def test_on_an_agent_data_dir_it_fails(shared, tmp_path):
    k3s_server = shared
    agent_dir = tmp_path / "agent-node"
    (agent_dir / "agent").mkdir(parents=True)
    result = k3s_server.k3s(
        "certificate", "rotate-ca", "--path", str(tmp_path), "--data-dir", str(agent_dir), "--server", k3s_server.url
    )
    assert result.returncode == 1
    assert "token must not be empty" in result.stderr


def test_a_wrong_password_is_unauthorized(token_restored, tmp_path):
    k3s_server = token_restored
    token = k3s_server.token_file.read_text()
    k3s_server.token_file.write_text(token.strip() + "x\n")
    result = k3s_server.rotate_ca(stage(tmp_path, k3s_server.service_key.read_bytes()))
    assert result.returncode == 1
    assert "see server log for details: Unauthorized" in result.stderr


def test_a_token_for_another_ca_is_refused(token_restored, tmp_path):
    k3s_server = token_restored
    token = k3s_server.token_file.read_text()
    k3s_server.token_file.write_text("K10" + "0" * 64 + token[67:])
    result = k3s_server.rotate_ca(stage(tmp_path, k3s_server.service_key.read_bytes()))
    assert result.returncode == 1
    assert "token CA hash does not match the Cluster CA certificate hash" in result.stderr


def test_path_is_required(shared):
    k3s_server = shared
    result = k3s_server.k3s("certificate", "rotate-ca", "--data-dir", str(k3s_server.data_dir))
    assert result.returncode == 1
    assert 'Required flag \\"path\\" not set' in result.stderr


def test_error_message_in_the_newer_status_style(k3s_server_factory, tmp_path):
    """K3SEMU_ERROR_STYLE=status: the server answers a Status object, as K3s releases from 2024 on."""
    srv = k3s_server_factory(env={"K3SEMU_ERROR_STYLE": "status"})
    result = srv.rotate_ca(stage(tmp_path, marshal_private_key(new_rsa_key())))
    assert result.returncode == 1
    assert 'msg="see server log for details: Internal error occurred: certificate error ID ' in result.stderr


def test_a_ca_uploaded_alone_needs_a_bundle_or_force(k3s_server, tmp_path):
    """validateCA: a new single self-signed CA cannot chain to the old one."""
    from k3semu.keys import cert_pem, new_ca

    key = new_ec_key()
    tls = tmp_path / "ca" / "tls"
    tls.mkdir(parents=True)
    (tls / "client-ca.crt").write_bytes(cert_pem(new_ca("k3s-client-ca@1", key)))
    (tls / "client-ca.key").write_bytes(marshal_private_key(key))

    assert k3s_server.rotate_ca(tmp_path / "ca").returncode == 1
    assert "new CA bundle contains only a single certificate" in k3s_server.log()
    assert k3s_server.rotate_ca(tmp_path / "ca", force=True).returncode == 0
    assert k3s_server.datastore_files()["ClientCA"].content == (tls / "client-ca.crt").read_bytes()
