"""kill -9 of k3srotd at every side-effect boundary of every step type, then the same command again.

Each case checks what matters to workloads: after the crash no key that live tokens may need is gone; after the
next run the step is finished (or undone and redone), K3s serves exactly the live file, the datastore holds
nothing unverified, and no staged key is left on disk.
"""

from __future__ import annotations

import signal
import time

import pytest
from k3srotd_node import Node

CHECKPOINTS = ["backup", "intent", "staged", "uploaded", "restarted", "verified", "committed"]


def _prepare(node: Node, step: str) -> tuple[list[str], list[str]]:
    """Bring the node to just before `step`; return (the command that does it, the kids tokens need)."""
    srv = node.server
    if step == "publish":
        return ["rotate-now", "--skip-publish-wait"], [srv.signer_kid()]
    if step == "rotate":
        node.write_config(strategy="direct")
        return ["rotate-now"], [srv.signer_kid()]
    node.ok("rotate-now")
    kids = srv.disk_kids()
    if step == "promote":
        node.ok("rollback", "--yes")  # back to published: [old, new], old signing
        return ["rotate-now", "--skip-publish-wait"], srv.disk_kids()
    if step == "prune":
        node.write_config(grace_period="1s")
        time.sleep(1.1)
        return ["prune"], kids[:1]
    assert step == "rollback"
    return ["rollback", "--yes"], kids


def _expected(step: str, before: list[str], node: Node) -> None:
    kids = node.server.disk_kids()
    if step in ("publish", "promote", "rotate"):
        assert len(kids) == 2 and kids[1] == before[0], (step, before, kids)
    elif step == "prune":
        assert kids == before[:1]
    else:  # rollback of the promote: the old signer signs again, the new key stays published
        assert kids == [before[1], before[0]]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["publish", "promote", "prune", "rotate", "rollback"])
@pytest.mark.parametrize("point", CHECKPOINTS)
def test_crash_then_rerun(node: Node, step: str, point: str) -> None:
    command, needed = _prepare(node, step)
    before = node.server.disk_kids()
    crashed = node.k3srotd(*command, env={"K3SROTD_TEST_CRASH_AT": f"{step}:{point}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    # right after the crash: every key live tokens need is still in the live file and published by K3s
    if node.server.pid is None:  # killed while K3s restarted: the service manager would bring it back
        node.server.start()
    node.server.wait_ready(30)
    live = node.server.disk_kids()
    assert set(needed) <= set(live), (needed, live)
    assert set(needed) <= set(node.server.jwks_kids())
    status = node.ok("status")  # status works on a half-done step, and says so
    if point not in ("backup", "committed"):
        assert "interrupted" in status.stdout

    if point == "committed":
        # the step was durably complete: nothing to resume, and running the command again would start the
        # next operation; the keys are already where the step leaves them
        if step == "publish":
            assert node.server.disk_kids()[0] == before[0] and len(node.server.disk_kids()) == 2
        else:
            _expected(step, before, node)
    else:
        again = node.ok(*command)
        assert "resume" in again.stderr or point == "backup", again.stderr
        _expected(step, before, node)
    srv = node.server
    assert srv.jwks_kids() == srv.disk_kids()
    assert srv.signer_kid() == srv.disk_kids()[0]
    assert srv.datastore_kids() == srv.disk_kids()
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    st = node.status()
    assert [k["kid"] for k in st["keys"]] == srv.disk_kids()
    assert "interrupted" not in node.ok("status").stdout


@pytest.mark.slow
@pytest.mark.parametrize("point", ["staged", "restarted", "verified"])
def test_crash_during_the_automatic_rollback(node: Node, point: str) -> None:
    """A publish whose check fails (K3s serves the old set, K3s issue 8952) is rolled back; k3srotd is killed at a
    boundary of that rollback. The next run finishes the rollback first, then rotates."""
    old = node.server.signer_kid()
    node.server.set_faults({"stale_keys": {"times": 1}})
    crashed = node.k3srotd("rotate-now", "--skip-publish-wait", env={"K3SROTD_TEST_CRASH_AT": f"rollback:{point}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    if node.server.pid is None:  # killed while K3s restarted: the service manager would bring it back
        node.server.start()
    node.server.wait_ready(30)
    assert node.server.disk_kids() == [old] == node.server.jwks_kids()  # the old signer never left
    st = node.ok("status").stdout
    assert "interrupted" in st and "publish (rolling-back)" in st, st
    again = node.ok("rotate-now", "--skip-publish-wait")
    assert "interrupted rollback of publish" in again.stderr, again.stderr
    events = [e["event"] for e in node.events()]
    assert events.index("rollback.done") < events.index("promote.done")
    srv = node.server
    assert srv.signer_kid() != old and srv.disk_kids() == [srv.signer_kid(), old] == srv.jwks_kids()
    assert srv.datastore_kids() == srv.disk_kids()
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
