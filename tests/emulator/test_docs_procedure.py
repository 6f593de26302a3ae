"""The service-account key rotation procedure of the K3s docs, run as a real shell script against an
emulated server: new key first, old key after it, rotate-ca, restart."""

import subprocess
import textwrap

from k3semu.harness import kid_of, public_keys, subprocess_env, token_kid

DOCS_PROCEDURE = textwrap.dedent(
    """\
    set -eu
    mkdir -p "$STAGING/server/tls"
    # new key first, old (current) key after it
    openssl genrsa -traditional -out "$STAGING/server/tls/service.key" 2048
    cat "$DATA_DIR/server/tls/service.key" >> "$STAGING/server/tls/service.key"
    k3s certificate rotate-ca --path="$STAGING/server" --data-dir "$DATA_DIR" --server "$SERVER"
    k3s-restart --data-dir "$DATA_DIR" --timeout 30
    """
)


def run_procedure(srv, staging):
    env = subprocess_env({"STAGING": str(staging), "DATA_DIR": str(srv.data_dir), "SERVER": srv.url})
    return subprocess.run(["sh", "-c", DOCS_PROCEDURE], env=env, capture_output=True, text=True, timeout=90)


def test_documented_procedure_makes_the_new_key_sign_and_publishes_both(k3s_server, tmp_path):
    old_kid = k3s_server.signer_kid()
    assert k3s_server.jwks_kids() == [old_kid]

    result = run_procedure(k3s_server, tmp_path / "opt" / "k3s")

    assert result.returncode == 0, result.stderr
    assert "certificates saved to datastore" in result.stdout
    new_kid = kid_of(public_keys((tmp_path / "opt/k3s/server/tls/service.key").read_bytes())[0])
    assert new_kid != old_kid
    assert k3s_server.signer_kid() == new_kid
    assert k3s_server.jwks_kids() == [new_kid, old_kid]
    assert k3s_server.disk_kids() == [new_kid, old_kid]
    # the staged file is what the datastore holds now, byte for byte
    staged = (tmp_path / "opt/k3s/server/tls/service.key").read_bytes()
    assert k3s_server.service_key.read_bytes() == staged
    assert k3s_server.datastore_files()["ServiceKey"].content == staged


def test_rotate_ca_alone_changes_nothing_until_the_restart(k3s_server, tmp_path):
    old_kid = k3s_server.signer_kid()
    before = k3s_server.service_key.read_bytes()
    staging = tmp_path / "server" / "tls"
    staging.mkdir(parents=True)
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(staging / "service.key"), "2048"],
        check=True,
        capture_output=True,
    )
    (staging / "service.key").write_bytes((staging / "service.key").read_bytes() + before)

    result = k3s_server.rotate_ca(tmp_path / "server")

    assert result.returncode == 0, result.stderr
    assert k3s_server.service_key.read_bytes() == before  # never its own disk files
    assert k3s_server.jwks_kids() == [old_kid]  # the running server keeps the keys it loaded
    assert k3s_server.signer_kid() == old_kid
    assert len(k3s_server.datastore_kids()) == 2
    assert "k3s must be restarted" in k3s_server.log()


def test_token_survives_new_old_restart_and_dies_when_old_key_is_pruned(k3s_server, tmp_path):
    token = k3s_server.request_token("default", "app")
    old_kid = token_kid(token)
    assert k3s_server.review_token(token)["authenticated"] is True

    assert run_procedure(k3s_server, tmp_path / "opt").returncode == 0
    review = k3s_server.review_token(token)
    assert review["authenticated"] is True
    assert review["user"]["username"] == "system:serviceaccount:default:app"

    # prune: upload [new] only; the old signer is not first on disk any more, so validation passes
    new_only = public_keys(k3s_server.service_key.read_bytes())
    assert kid_of(new_only[0]) != old_kid
    staging = tmp_path / "prune" / "tls"
    staging.mkdir(parents=True)
    current = k3s_server.service_key.read_bytes()
    first_block = current[: current.index(b"-----END RSA PRIVATE KEY-----") + len(b"-----END RSA PRIVATE KEY-----\n")]
    (staging / "service.key").write_bytes(first_block)
    result = k3s_server.rotate_ca(tmp_path / "prune")
    assert result.returncode == 0, result.stderr
    k3s_server.restart()

    assert k3s_server.jwks_kids() == [kid_of(new_only[0])]
    review = k3s_server.review_token(token)
    assert review["authenticated"] is False
    assert "error" in review
