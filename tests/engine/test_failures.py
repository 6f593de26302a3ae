"""Failures injected into the emulated K3s: the live keys end as they were before, or restored."""

from __future__ import annotations

import subprocess
import sys

from k3srotd_node import Node


def _assert_unchanged(node: Node, live: bytes, signer: str) -> None:
    assert node.live_bytes() == live
    assert node.server.signer_kid() == signer
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()


def test_rotate_ca_failure_changes_nothing(node: Node) -> None:
    live, signer = node.live_bytes(), node.server.signer_kid()
    pid = node.server.pid
    node.server.set_faults({"rotate_ca_fail": {"times": 1}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "rotate-ca" in proc.stderr.splitlines()[-1]
    _assert_unchanged(node, live, signer)
    assert node.server.pid == pid  # never restarted
    failed = [e for e in node.events() if e["event"] == "step.failed"]
    assert failed and failed[0]["step"] == "publish" and failed[0]["signer_kid"] == signer
    assert node.status()["phase"] == "idle"
    node.server.clear_faults()
    node.ok("rotate-now")
    assert node.server.signer_kid() != signer


def test_a_rotate_ca_whose_reply_is_lost_is_put_back(node: Node) -> None:
    """The server saved the staged set but the client failed: the datastore must not keep a set nobody verified,
    or the next restart of K3s, for any reason, would apply it."""
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"reply_lost": {"times": 1}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "the datastore holds the live key set" in proc.stderr.splitlines()[-1]
    assert node.server.datastore_kids() == [signer]
    _assert_unchanged(node, live, signer)
    node.server.restart()  # what an unrelated restart would load
    _assert_unchanged(node, live, signer)
    assert node.server.jwks_kids() == [signer]
    assert node.status()["phase"] == "idle"


def test_k3s_serving_old_keys_after_restart_is_rolled_back(node: Node) -> None:
    """K3s issue 8952: rotate-ca says it saved, the restarted server serves the old key set."""
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"stale_keys": {"times": 1}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "another key set" in proc.stderr
    _assert_unchanged(node, live, signer)
    assert node.server.jwks_kids() == [signer]
    assert {"step.failed", "rollback.done"} <= {e["event"] for e in node.events()}


def test_k3s_not_coming_back_is_rolled_back(node: Node) -> None:
    node.write_config(restart_timeout="6s", restart_command=node.server.restart_command(timeout=6))
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"no_come_back": {"times": 1, "mode": "exit"}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "restored" in proc.stderr
    _assert_unchanged(node, live, signer)


def test_crash_at_start_is_rolled_back(node: Node) -> None:
    """K3s issue 11014: K3s fails to start after rotate-ca."""
    node.write_config(restart_timeout="6s", restart_command=node.server.restart_command(timeout=6))
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"crash_at_start": {"times": 1}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    _assert_unchanged(node, live, signer)


def test_failed_rollback_is_critical_keeps_everything_and_can_be_retried(node: Node) -> None:
    node.write_config(restart_timeout="4s", restart_command=node.server.restart_command(timeout=4))
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"no_come_back": {"times": 3, "mode": "exit"}})
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    assert "rollback failed too" in proc.stderr
    crit = [e for e in node.events() if e["event"] == "rollback.failed"]
    assert crit and crit[0]["level"] == "critical" and "By hand" in crit[0]["msg"]
    backups = list((node.state_dir / "backups").iterdir())
    assert any(b.read_bytes() == live for b in backups)
    # no other step runs over a failed rollback
    node.server.clear_faults()
    if node.server.pid is None:
        node.server.start()
    refused = node.k3srotd("rotate-now")
    assert refused.returncode == 1 and "rollback" in refused.stderr
    assert "interrupted" in node.ok("status").stdout
    # the operator retries it
    node.ok("rollback", "--yes")
    _assert_unchanged(node, live, signer)
    assert node.status()["phase"] == "idle"


def test_rollback_command_undoes_the_last_step_and_itself(node: Node) -> None:
    old = node.server.signer_kid()
    node.ok("rotate-now")
    new = node.status()["signer_kid"]
    refused = node.k3srotd("rollback")  # no terminal to ask on
    assert refused.returncode == 2 and "--yes" in refused.stderr
    node.ok("rollback", "--yes")
    st = node.status()
    assert st["signer_kid"] == old and [k["kid"] for k in st["keys"]] == [old, new]
    assert st["phase"] == "published"
    assert node.server.signer_kid() == old
    node.ok("rollback", "--yes")  # the rollback is a step too: undo it
    assert node.status()["signer_kid"] == new == node.server.signer_kid()


def test_a_second_k3srotd_is_refused_with_exit_4(node: Node) -> None:
    node.state_dir.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(node.state_dir / 'lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = node.k3srotd("rotate-now")
        assert proc.returncode == 4
        assert f"pid {holder.pid}" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    node.ok("rotate-now")
