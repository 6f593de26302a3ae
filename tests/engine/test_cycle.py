"""Full rotations through the CLI against an emulated K3s server: what an operator would check."""

from __future__ import annotations

import signal
import time

from k3srotd_node import Node, mode

from k3srotd.core import keys


def test_staged_cycle_publish_promote_prune(node: Node) -> None:
    srv = node.server
    old = srv.signer_kid()
    old_token = srv.request_token("default", "app")
    before = node.status()
    assert before["phase"] == "idle" and before["signer_kid"] == old

    proc = node.ok("rotate-now")
    st = node.status()
    new = st["signer_kid"]
    assert new != old
    assert st["phase"] == "promoted"
    assert [k["kid"] for k in st["keys"]] == [new, old]
    assert [k["role"] for k in st["keys"]] == ["signer", "verify"]
    assert st["keys"][0]["algorithm"] == "RSA" and st["keys"][0]["bits"] == 2048
    assert st["keys"][0]["retired_at"] is None and st["keys"][1]["retired_at"] is not None
    assert st["last_rotation"] is not None
    assert st["next_action"]["action"] == "prune"
    assert new in proc.stdout

    # K3s itself: the new key signs, both verify, the old token still passes review
    assert srv.signer_kid() == new
    assert srv.jwks_kids() == [new, old]
    assert srv.review_token(old_token)["authenticated"] is True
    # both steps were logged as the contract's events, with their fields
    events = {e["event"]: e for e in node.events()}
    assert events["publish.done"]["kids"] == [old, new] and events["publish.done"]["signer_kid"] == old
    assert events["promote.done"]["kids"] == [new, old] and events["promote.done"]["signer_kid"] == new
    # files: staging removed, backups private, state private
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    backups = sorted((node.state_dir / "backups").iterdir())
    assert len(backups) == 2 and all(mode(b) == 0o600 for b in backups)
    assert mode(node.state_dir) == 0o700 and mode(node.state_dir / "backups") == 0o700
    assert mode(node.state_dir / "state.json") == 0o600

    # prune before grace: refused, nothing changed
    live = node.live_bytes()
    refused = node.k3srotd("prune")
    assert refused.returncode == 3, refused.stderr
    assert "grace-period" in refused.stderr
    assert node.live_bytes() == live

    # grace of 1 s: prune drops the old key; the old token stops verifying
    node.write_config(grace_period="1s")
    time.sleep(1.1)
    node.ok("prune")
    st = node.status()
    assert st["phase"] == "idle" and [k["kid"] for k in st["keys"]] == [new]
    assert srv.jwks_kids() == [new]
    assert srv.review_token(old_token)["authenticated"] is False
    assert "prune.done" in {e["event"] for e in node.events()}


def test_direct_strategy_is_the_documented_procedure(node: Node) -> None:
    node.write_config(strategy="direct")
    old = node.server.signer_kid()
    node.ok("rotate-now")
    st = node.status()
    assert st["keys"][1]["kid"] == old and st["signer_kid"] != old
    assert node.server.signer_kid() == st["signer_kid"]
    done = [e for e in node.events() if e["event"].endswith(".done")]
    assert [e["event"] for e in done] == ["publish.done", "promote.done"]  # the contract's events, both at once
    assert {e["step"] for e in done} == {"rotate"}
    assert done[1]["signer_kid"] == st["signer_kid"] and done[1]["kids"] == [st["signer_kid"], old]


def test_rotate_now_continues_a_published_rotation(node: Node) -> None:
    """rotate-now stopped during publish-wait; the next rotate-now promotes the key already published."""
    node.write_config(publish_wait="1h")
    old = node.server.signer_kid()
    first = node.popen("rotate-now")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and node.status()["phase"] != "published":
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=10)
    st = node.status()
    assert st["phase"] == "published"
    published = st["keys"][-1]["kid"]
    assert st["next_action"]["action"] == "promote"
    assert node.server.jwks_kids() == [old, published]
    assert node.server.signer_kid() == old  # published keys verify, they do not sign

    proc = node.ok("rotate-now", "--skip-publish-wait")
    assert "continuing" in proc.stdout
    assert node.status()["signer_kid"] == published == node.server.signer_kid()


def test_dry_run_writes_runs_and_restarts_nothing(node: Node) -> None:
    pid = node.server.pid
    live = node.live_bytes()
    proc = node.ok("rotate-now", "--dry-run")
    assert "would publish" in proc.stdout and "would promote" in proc.stdout
    assert node.live_bytes() == live
    assert node.server.pid == pid
    assert not node.state_dir.exists()
    assert not node.staging_dir.exists()


def test_status_table_for_humans(node: Node) -> None:
    node.ok("rotate-now")
    out = node.ok("status").stdout
    assert out.splitlines()[0].split() == ["phase", "promoted"]
    assert "KID" in out and "signer" in out and "next" in out and " ago)" in out


def test_the_staged_file_is_private_while_it_exists(node: Node) -> None:
    """Killed right after staging (the crash hook), the staged key is there for rotate-ca: 0600 in 0700 folders,
    and a half-written temp file of an earlier crash is cleaned up. The next run undoes the step and removes it."""
    tls = node.staging_dir / "server" / "tls"
    proc = node.k3srotd("rotate-now", env={"K3SROTD_TEST_CRASH_AT": "staged"})
    assert proc.returncode == -signal.SIGKILL
    assert mode(tls / "service.key") == 0o600
    assert mode(tls) == mode(tls.parent) == mode(node.staging_dir) == 0o700
    (tls / ".service.key.tmp.4242").write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nMIIE")  # an earlier crash
    node.ok("rotate-now")
    assert not tls.exists()
    assert node.status()["phase"] == "promoted"


def test_manual_steps_outside_the_window_are_refused_unless_ignore_window(node: Node) -> None:
    import datetime as dt

    local = dt.datetime.now().astimezone()
    opens = local + dt.timedelta(hours=3)
    node.write_config(
        maintenance_window={"start": opens.strftime("%H:%M"), "end": (opens + dt.timedelta(hours=1)).strftime("%H:%M")}
    )
    live = node.live_bytes()
    for command in (["rotate-now"], ["prune", "--force", "--yes"], ["rollback", "--yes"]):
        proc = node.k3srotd(*command)
        if command[0] == "rotate-now":
            assert proc.returncode == 3, proc.stderr
            assert "outside maintenance-window" in proc.stderr and "--ignore-window" in proc.stderr
            assert node.live_bytes() == live
            node.ok("rotate-now", "--ignore-window")
        elif command[0] == "prune":
            assert proc.returncode == 3 and "outside maintenance-window" in proc.stderr, proc.stderr
            live = node.live_bytes()
            node.ok("prune", "--force", "--yes", "--ignore-window")
            assert len(node.status()["keys"]) == 1
        else:
            assert proc.returncode == 3 and "outside maintenance-window" in proc.stderr, proc.stderr
            assert len(node.status()["keys"]) == 1
            node.ok("rollback", "--yes", "--ignore-window")
            assert len(node.status()["keys"]) == 2  # the pruned key is back


def test_key_size_backup_keep_and_prune_dry_run(node: Node) -> None:
    node.write_config(key_size=3072, backup_keep=2, grace_period="1s")
    node.ok("rotate-now")  # publish + promote: two backups
    st = node.status()
    assert st["keys"][0]["bits"] == 3072 and st["keys"][1]["bits"] == 2048
    time.sleep(1.1)
    live, pid = node.live_bytes(), node.server.pid
    dry = node.ok("prune", "--dry-run")
    assert f"would prune {st['keys'][1]['kid']}" in dry.stdout and "nothing was written" in dry.stdout
    assert node.live_bytes() == live and node.server.pid == pid
    node.ok("prune")
    backups = sorted((node.state_dir / "backups").iterdir())
    # the promote's backup held the pruned private key: gone; the prune's own stays for its rollback
    assert [b.name.split("-", 1)[1] for b in backups] == ["prune.key"]
    pruned = st["keys"][1]["kid"]
    node.ok("rotate-now")  # the next step: the prune's backup, the last to hold the pruned key, goes too
    names = [b.name.split("-", 1)[1] for b in sorted((node.state_dir / "backups").iterdir())]
    assert names == ["publish.key", "promote.key"]
    assert all(pruned not in keys.parse(b.read_bytes(), "b").kids for b in (node.state_dir / "backups").iterdir())
