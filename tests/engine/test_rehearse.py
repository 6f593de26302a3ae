"""`k3srotd rehearse` against the emulator: one step through the real path with the live key set unchanged."""

from __future__ import annotations

import signal

from k3srotd_node import Node


def _starts(node: Node) -> int:
    return sum(1 for r in node.server.lifecycle() if r.get("event") == "start")


def _rehearsal_line(node: Node) -> str:
    out = node.k3srotd("doctor").stdout
    return next(ln for ln in out.splitlines() if "rehearsal:" in ln)


def test_a_rehearsal_restarts_once_changes_no_key_and_turns_doctor_to_pass(node: Node) -> None:
    assert _rehearsal_line(node).startswith("WARN"), _rehearsal_line(node)
    live, signer, starts = node.live_bytes(), node.server.signer_kid(), _starts(node)
    proc = node.ok("rehearse", "--yes")
    assert "rehearsal passed" in proc.stdout, proc.stdout
    assert node.live_bytes() == live  # byte for byte
    assert node.server.signer_kid() == signer and node.server.jwks_kids() == [signer]
    assert node.server.datastore_kids() == [signer]
    assert _starts(node) == starts + 1  # K3s restarted exactly once
    events = [e["event"] for e in node.events()]
    assert {"step.start", "rotate-ca", "rehearse.done"} <= set(events), events
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    line = _rehearsal_line(node)
    assert line.startswith("PASS") and "v1.31.4+k3s1" in line, line
    assert node.status()["phase"] == "idle"


def test_without_yes_it_asks_and_a_no_changes_nothing(node: Node) -> None:
    starts = _starts(node)
    proc = node.k3srotd("rehearse")  # stdin is not a terminal: click reads "no"
    assert proc.returncode != 0
    assert _starts(node) == starts
    assert _rehearsal_line(node).startswith("WARN")


def test_doctor_warns_again_after_a_k3s_upgrade(node: Node) -> None:
    node.ok("rehearse", "--yes")
    assert _rehearsal_line(node).startswith("PASS")
    state = node.state_dir / "state.json"
    text = state.read_text().replace("v1.31.4+k3s1", "v1.30.5+k3s1")  # as if it passed before an upgrade
    state.write_text(text)
    line = _rehearsal_line(node)
    assert line.startswith("WARN") and "v1.30.5+k3s1" in line and "v1.31.4+k3s1" in line, line


def test_a_failed_rehearsal_rolls_back_and_exits_1(node: Node) -> None:
    """K3s issue 11014: K3s fails to start after rotate-ca; the rehearsal fails and puts the live set back."""
    node.write_config(restart_timeout="6s", restart_command=node.server.restart_command(timeout=6))
    live, signer = node.live_bytes(), node.server.signer_kid()
    node.server.set_faults({"crash_at_start": {"times": 1}})
    proc = node.k3srotd("rehearse", "--yes")
    assert proc.returncode == 1, proc.stderr
    assert node.live_bytes() == live
    node.server.wait_ready(30)
    assert node.server.signer_kid() == signer and node.server.jwks_kids() == [signer]
    assert {"step.failed", "rollback.done"} <= {e["event"] for e in node.events()}
    assert _rehearsal_line(node).startswith("WARN")  # a failed rehearsal records no success


def test_a_crash_after_the_upload_is_undone_by_the_next_run(node: Node) -> None:
    live = node.live_bytes()
    crashed = node.k3srotd("rehearse", "--yes", env={"K3SROTD_TEST_CRASH_AT": "rehearse:uploaded"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert "interrupted" in node.ok("status").stdout
    again = node.ok("rehearse", "--yes")
    assert "undone" in again.stdout, again.stdout
    assert node.live_bytes() == live
    assert node.server.datastore_kids() == node.server.disk_kids() == node.server.jwks_kids()
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    assert "interrupted" not in node.ok("status").stdout
    assert _rehearsal_line(node).startswith("WARN")  # undone, not passed: run it again
    node.ok("rehearse", "--yes")
    assert _rehearsal_line(node).startswith("PASS")


def test_a_rehearsal_keeps_rollback_on_the_last_real_step(node: Node) -> None:
    old = node.server.signer_kid()
    node.ok("rotate-now")
    new = node.server.signer_kid()
    node.ok("rehearse", "--yes")
    node.ok("rollback", "--yes")  # undoes the promote, not the rehearsal
    assert node.server.signer_kid() == old and new in node.server.disk_kids()
