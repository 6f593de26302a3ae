"""The start-up reconcile of bootstrap files with the datastore (pkg/cluster/bootstrap.go), one rule each."""

import os
import stat

import pytest
from k3semu.keys import marshal_private_key, new_rsa_key

FATAL_TAIL = (
    " newer than datastore and could cause a cluster outage. "
    "Remove the file(s) from disk and restart to be recreated from datastore."
)


@pytest.fixture
def stopped(k3s_server):
    """A server that has run once (datastore and disk agree), now stopped."""
    k3s_server.stop()
    return k3s_server


def ds_ns(srv, field="ServiceKey"):
    return srv.datastore_files()[field].timestamp_ns


def set_mtime(path, ns):
    os.utime(path, ns=(ns, ns))


def new_log(srv, since):
    return srv.log()[since:]


def test_same_content_is_left_alone_whatever_its_mtime(stopped):
    path = stopped.service_key
    much_newer = ds_ns(stopped) + 3600 * 10**9
    set_mtime(path, much_newer)
    mark = len(stopped.log())

    stopped.start()

    assert path.stat().st_mtime_ns == much_newer
    log = new_log(stopped, mark)
    assert "will be updated from the datastore" not in log
    assert "Updating bootstrap data on disk from datastore" not in log


def test_different_and_3s_newer_on_disk_is_fatal(stopped):
    path = stopped.service_key
    other = marshal_private_key(new_rsa_key())
    path.write_bytes(other)
    set_mtime(path, ds_ns(stopped) + 3 * 10**9)
    mark = len(stopped.log())

    stopped.start(wait=False)

    assert stopped.wait_exit(30) != 0
    log = new_log(stopped, mark)
    assert f'level=fatal msg="{path}{FATAL_TAIL}"' in log
    assert path.read_bytes() == other
    assert not stopped.is_ready()

    # the documented way out: remove the file and start again
    path.unlink()
    stopped.start()
    assert path.read_bytes() == stopped.datastore_files()["ServiceKey"].content


def test_different_and_older_on_disk_is_updated_from_the_datastore(stopped):
    path = stopped.service_key
    ca = stopped.tls_dir / "server-ca.crt"
    stored = stopped.datastore_files()
    path.write_bytes(marshal_private_key(new_rsa_key()))
    set_mtime(path, ds_ns(stopped) + 2 * 10**9)  # newer, but within the 3 s skew
    set_mtime(ca, ds_ns(stopped, "ServerCA") + 3600 * 10**9)  # same content
    mark = len(stopped.log())

    stopped.start()

    log = new_log(stopped, mark)
    assert f'level=warning msg="{path} will be updated from the datastore."' in log
    assert "Updating bootstrap data on disk from datastore" in log
    assert path.read_bytes() == stored["ServiceKey"].content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_mtime_ns == stored["ServiceKey"].timestamp_ns
    # K3s then writes back every file of the datastore, so an unchanged file gets the datastore's mtime too
    assert ca.stat().st_mtime_ns == stored["ServerCA"].timestamp_ns
    assert stopped.jwks_kids() == stopped.disk_kids()


def test_missing_file_is_written_from_the_datastore(stopped):
    path = stopped.service_key
    stored = stopped.datastore_files()["ServiceKey"]
    path.unlink()
    mark = len(stopped.log())

    stopped.start()

    assert f"{path} doesn't exist. continuing..." in new_log(stopped, mark)
    assert path.read_bytes() == stored.content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_mtime_ns == stored.timestamp_ns


def test_missing_tls_dir_is_written_whole(stopped):
    import shutil

    shutil.rmtree(stopped.tls_dir)

    stopped.start()

    stored = stopped.datastore_files()
    assert stopped.service_key.read_bytes() == stored["ServiceKey"].content
    assert (stopped.tls_dir / "etcd" / "peer-ca.key").read_bytes() == stored["ETCDPeerCAKey"].content
    assert stat.S_IMODE((stopped.tls_dir / "server-ca.crt").stat().st_mode) == 0o600


def test_rewrite_keeps_the_mode_of_an_existing_file(stopped):
    """os.WriteFile only applies 0600 when it creates the file; an existing file keeps its mode."""
    path = stopped.service_key
    path.write_bytes(marshal_private_key(new_rsa_key()))
    path.chmod(0o640)
    set_mtime(path, ds_ns(stopped) - 60 * 10**9)

    stopped.start()

    assert path.read_bytes() == stopped.datastore_files()["ServiceKey"].content
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_restart_after_rotate_ca_sets_the_staged_mtime(k3s_server, tmp_path):
    tls = tmp_path / "stage" / "tls"
    tls.mkdir(parents=True)
    staged = tls / "service.key"
    staged.write_bytes(marshal_private_key(new_rsa_key()) + k3s_server.service_key.read_bytes())
    staged_ns = staged.stat().st_mtime_ns

    assert k3s_server.rotate_ca(tmp_path / "stage").returncode == 0
    k3s_server.restart()

    assert k3s_server.service_key.read_bytes() == staged.read_bytes()
    assert k3s_server.service_key.stat().st_mtime_ns == staged_ns
