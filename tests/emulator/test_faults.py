"""Each fault switch, set through <data-dir>/emulator/faults.json (or K3SEMU_FAULTS) between steps."""

import json
import subprocess
import time

import pytest
from k3semu.harness import subprocess_env
from k3semu.keys import marshal_private_key, new_rsa_key


@pytest.fixture
def staged(k3s_server, tmp_path):
    """A staging dir holding [new, old] for the server, and the new key."""
    new = new_rsa_key()
    tls = tmp_path / "stage" / "tls"
    tls.mkdir(parents=True)
    (tls / "service.key").write_bytes(marshal_private_key(new) + k3s_server.service_key.read_bytes())
    return tmp_path / "stage"


def test_rotate_ca_fail_is_one_shot(k3s_server, staged):
    k3s_server.set_faults({"rotate_ca_fail": {"times": 1}})
    before = k3s_server.datastore_files()

    failed = k3s_server.rotate_ca(staged)

    assert failed.returncode == 1
    assert "see server log for details" in failed.stderr
    assert "fault rotate_ca_fail" in k3s_server.log()
    assert k3s_server.datastore_files() == before
    assert k3s_server.faults() == {}
    assert k3s_server.rotate_ca(staged).returncode == 0


def test_datastore_write_fail(k3s_server, staged):
    k3s_server.set_faults({"datastore_write_fail": True})
    before = k3s_server.datastore_files()

    result = k3s_server.rotate_ca(staged)

    assert result.returncode == 1
    assert "certificate error ID" in result.stderr
    assert "failed to save bootstrap data" in k3s_server.log()
    assert k3s_server.datastore_files() == before
    assert k3s_server.faults() == {"datastore_write_fail": True}  # stays on


def test_stale_keys_reports_success_but_nothing_changes(k3s_server, staged):
    old_kids = k3s_server.jwks_kids()
    k3s_server.set_faults({"stale_keys": {"times": 1}})

    result = k3s_server.rotate_ca(staged)

    assert result.returncode == 0
    assert "certificates saved to datastore" in result.stdout
    k3s_server.restart()
    assert k3s_server.jwks_kids() == old_kids


def test_no_come_back_then_a_second_restart_succeeds(k3s_server):
    k3s_server.set_faults({"no_come_back": {"times": 1}})

    failed = k3s_server.restart(timeout=1, check=False)

    assert failed.returncode == 1
    assert "not ready after 1s" in failed.stderr
    assert k3s_server.pid is not None  # hanging, like a unit stuck in "activating"
    assert not k3s_server.is_ready()
    k3s_server.restart(timeout=20)
    assert k3s_server.is_ready()


def test_no_come_back_exit_mode(k3s_server):
    k3s_server.set_faults({"no_come_back": {"mode": "exit"}})
    result = k3s_server.restart(timeout=10, check=False)
    assert result.returncode == 1
    assert "exited with status 1" in result.stderr
    assert k3s_server.pid is None


def test_crash_at_start(k3s_server):
    k3s_server.set_faults({"crash_at_start": True})

    result = k3s_server.restart(timeout=10, check=False)

    assert result.returncode == 1
    assert "exited with status 1 during start" in result.stderr
    assert "level=fatal" in result.stderr  # the tail of the server log
    k3s_server.clear_faults()
    k3s_server.restart()


def test_slow_start(k3s_server):
    k3s_server.set_faults({"slow_start": {"seconds": 0.8, "times": 1}})

    started = time.monotonic()
    k3s_server.restart(timeout=20)

    assert time.monotonic() - started >= 0.8
    assert "fault slow_start: waiting 0.8s before serving" in k3s_server.log()
    assert k3s_server.faults() == {}


def test_faults_from_the_environment(k3s_server_factory, tmp_path):
    srv = k3s_server_factory(env={"K3SEMU_FAULTS": json.dumps({"rotate_ca_fail": True})})
    tls = tmp_path / "s" / "tls"
    tls.mkdir(parents=True)
    (tls / "service.key").write_bytes(srv.service_key.read_bytes())
    assert srv.rotate_ca(tmp_path / "s").returncode == 1
    assert srv.rotate_ca(tmp_path / "s").returncode == 1


def test_unknown_fault_names_are_refused(k3s_server):
    with pytest.raises(ValueError, match="unknown fault"):
        k3s_server.set_faults({"no_comeback": True})


def test_restart_helper_as_a_command(k3s_server):
    """restart_command() is what k3srotd gets as its restart-command."""
    old_pid = k3s_server.pid
    result = subprocess.run(
        k3s_server.restart_command(30), env=subprocess_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert k3s_server.pid not in (None, old_pid)
    assert k3s_server.is_ready()
