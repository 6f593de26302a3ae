"""Three servers on loopback sharing one datastore."""

from k3semu.harness import kid_of, token_kid
from k3semu.keys import marshal_private_key, new_rsa_key


def test_servers_share_the_bootstrap_data(k3s_cluster):
    a, b, c = k3s_cluster
    assert len({a.port, b.port, c.port}) == 3
    assert len({a.data_dir, b.data_dir, c.data_dir}) == 3
    assert a.token_file.read_text() == b.token_file.read_text() == c.token_file.read_text()
    assert a.service_key.read_bytes() == b.service_key.read_bytes() == c.service_key.read_bytes()
    assert a.jwks_kids() == b.jwks_kids() == c.jwks_kids()
    # a token from one server is valid on the others
    token = b.request_token("default", "app")
    assert a.review_token(token)["authenticated"] and c.review_token(token)["authenticated"]


def test_rotate_ca_on_one_server_saves_for_all_and_each_picks_it_up_at_its_restart(k3s_cluster, tmp_path):
    a, b, c = k3s_cluster
    old_kid = a.signer_kid()
    new = new_rsa_key()
    tls = tmp_path / "stage" / "tls"
    tls.mkdir(parents=True)
    (tls / "service.key").write_bytes(marshal_private_key(new) + a.service_key.read_bytes())

    assert a.rotate_ca(tmp_path / "stage").returncode == 0
    assert b.datastore_kids() == [kid_of(new.public_key()), old_kid]
    for srv in k3s_cluster:  # nobody changes before a restart
        assert srv.jwks_kids() == [old_kid]

    b.restart()
    assert b.jwks_kids() == [kid_of(new.public_key()), old_kid]
    assert a.jwks_kids() == c.jwks_kids() == [old_kid]
    # the rolling-restart window: a token signed by the restarted server fails on the others
    token = b.request_token("default", "app")
    assert token_kid(token) == kid_of(new.public_key())
    assert c.review_token(token)["authenticated"] is False

    a.restart()
    c.restart()
    for srv in k3s_cluster:
        assert srv.jwks_kids() == [kid_of(new.public_key()), old_kid]
        assert srv.review_token(token)["authenticated"] is True
