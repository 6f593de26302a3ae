"""The emulator fault the chaos runs add: start_stale, a K3s start that keeps its own disk's key set (a joining
server before K3s PR #11844 reconciled from its join peer's disk, not the datastore)."""

from __future__ import annotations

from k3semu.keys import kid_of, marshal_private_key, new_rsa_key


def test_start_stale_keeps_the_disk_key_set_once_then_the_datastore_wins(k3s_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = k3s_server.jwks_kids()
    new = new_rsa_key()
    tls = tmp_path / "stage" / "tls"
    tls.mkdir(parents=True)
    (tls / "service.key").write_bytes(marshal_private_key(new) + k3s_server.service_key.read_bytes())
    assert k3s_server.rotate_ca(tmp_path / "stage").returncode == 0
    k3s_server.set_faults({"start_stale": {"times": 1}})

    k3s_server.restart()
    assert k3s_server.jwks_kids() == old  # the datastore holds [new, old]; this start kept the disk's [old]
    assert k3s_server.faults() == {}

    k3s_server.restart()
    assert k3s_server.jwks_kids() == [kid_of(new.public_key()), *old]
