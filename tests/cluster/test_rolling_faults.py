"""Servers that fail around a rolling step: killed while holding the restart lease, down for a whole step, and cut
off from the API. What an operator checks: the others go on, nothing harmful happens, the logs and status say why,
and the server catches up when it returns."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest
from clusternode import LEASE_SECONDS, Cluster, ClusterNode, downtimes, wait_until
from k3semu.harness import free_port


def _holder(cluster: Cluster, lease: str) -> tuple[str, str]:
    spec = (cluster.leases().get(f"kube-system/{lease}") or {}).get("spec", {})
    return str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")


def _rfc(t: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def _reported(cluster: Cluster, *names: str) -> bool:
    return {f"k3srotd-node-{n}" for n in names} <= {k.split("/")[1] for k in cluster.leases()}


def _daemons_reported_server0_by_hand(cluster: Cluster) -> None:
    """Every server's daemon reports once; then server-0's stops, so that server-0's steps are run by hand."""
    for n in cluster:
        n.start_daemon()
    wait_until("every daemon reports", lambda: _reported(cluster, *(n.name for n in cluster)))
    cluster[0].stop_daemon()


def _finish(proc: subprocess.Popen, timeout: float = 240) -> int:
    return proc.wait(timeout=timeout)


def test_a_server_killed_holding_the_restart_lease_blocks_the_others_for_one_lease_only(cluster: Cluster) -> None:
    a, b, c = cluster
    old = a.server.signer_kid()
    b.start_daemon()
    c.start_daemon()
    wait_until("every daemon reports", lambda: _reported(cluster, "server-1", "server-2"))
    c.stop_daemon()  # server-2 joins later, so that server-1 takes the restart lease first
    b.server.set_faults({"slow_start": {"times": 1, "seconds": 30}})  # server-1's K3s hangs in its restart
    for n in cluster:
        n.write_config(publish_wait="1h")  # this test ends with the publish
    driver = a.start_bg("rotate-now", log=a.root / "rotate-now.log")
    try:
        wait_until(
            "server-1 holds the restart lease",
            lambda: _holder(cluster, "k3srotd-restart")[0] == "server-1",
            timeout=90,
            every=0.05,
        )
        starts = len([r for r in b.server.lifecycle() if r["event"] == "start"])
        wait_until(
            "server-1's K3s is restarting",
            lambda: len([r for r in b.server.lifecycle() if r["event"] == "start"]) > starts,
            every=0.05,
        )
        b.stop_daemon(sig=9)  # the whole server dies: its k3srotd, the restart under way, its K3s
        _kill_restart_helper(str(b.server.data_dir))
        b.server.kill()
        killed_at = time.time()
        c.start_daemon()
        # server-1 is down: server-2 does not restart (two of three down would lose etcd's quorum); it says why
        wait_until(
            "server-2 names server-1 as down",
            lambda: [
                e
                for e in c.daemon_events()
                if e["event"] == "rolling.turn" and "must be up and serving first: server-1" in e["msg"]
            ],
            timeout=60,
        )
        time.sleep(LEASE_SECONDS + 1)  # server-1's restart lease ran out meanwhile: still no turn while it is down
        assert not any(e["event"] == "rolling.restarted" for e in c.daemon_events())
        assert [s for s, _, _ in downtimes(c.server) if s >= killed_at] == []
        st = a.status()  # published here, not committed: promote waits
        assert st["phase"] == "published" and st["next_action"]["action"] == "promote"
        assert a.server.signer_kid() == old

        # server-1 comes back: K3s starts on the published set (from the datastore), its k3srotd checks and reports
        b.server.clear_faults()
        b.server.start()
        b.start_daemon()
        wait_until("the publish is committed", lambda: "rolling" not in a.ok("status").stdout, timeout=90)
        assert a.status()["phase"] == "published"
        assert any(e["event"] == "rolling.restarted" for e in c.daemon_events())  # once server-1 was back
        events = [e for e in b.daemon_events() if e["event"] == "rolling.on-step"]
        assert events and "server-1 runs publish" in events[-1]["msg"]
        new = a.status()["keys"][-1]["kid"]
        for n in cluster:
            assert n.server.jwks_kids() == [old, new], n.name
    finally:
        driver.terminate()
        driver.wait(timeout=30)


def test_a_step_waits_while_a_server_is_down_then_refuses_with_nothing_changed(cluster: Cluster) -> None:
    """Issue 11, a server already down: rotate-now restarts nothing while another server's K3s is down (one more
    down and etcd loses its quorum); it waits, says for whom, and after restart-timeout refuses (exit 3)."""
    a, b, c = cluster
    old = a.server.signer_kid()
    _daemons_reported_server0_by_hand(cluster)
    c.server.stop()  # server-2's K3s stops; its k3srotd keeps running (and reporting what it can)
    # already down: status shows it so before the step (its Node's grace, or its identity Lease, has run out)
    wait_until("server-2 seen down", lambda: re.search(r"^not serving +server-2", a.ok("status").stdout, re.M))
    pids = [a.server.pid, b.server.pid]
    datastore = a.server.datastore_kids()
    a.write_config(restart_timeout="6s")
    proc = a.k3srotd("rotate-now", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "not every other server is up and serving: server-2 (" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert [a.server.pid, b.server.pid] == pids and a.server.datastore_kids() == datastore
    assert a.server.signer_kid() == old and not (a.staging_dir / "server" / "tls" / "service.key").exists()
    assert _holder(cluster, "k3srotd-step")[0] == "" and _holder(cluster, "k3srotd-restart")[0] == ""

    c.server.start()  # server-2 is back: the step goes
    a.write_config(restart_timeout="60s")
    a.ok("rotate-now", timeout=240)
    for n in cluster:
        assert n.server.jwks_kids() == a.server.jwks_kids() and old in a.server.jwks_kids(), n.name


def test_a_server_cut_off_from_the_api_does_nothing_and_says_so(cluster: Cluster) -> None:
    a, _, c = cluster
    old = a.server.signer_kid()
    _daemons_reported_server0_by_hand(cluster)
    c.stop_daemon()
    closed = _closed_port()
    c.write_config(k3s_server_url=f"https://127.0.0.1:{closed}")
    c.start_daemon()
    wait_until(
        "server-2 says it cannot reach the API",
        lambda: [e for e in c.daemon_events() if e["event"] == "daemon.idle" and "cannot reach the API" in e["msg"]],
    )
    refused = c.k3srotd("rotate-now")
    assert refused.returncode == 3 and "cannot reach the API" in refused.stderr
    assert "takes no step and restarts nothing" in refused.stderr
    assert "cannot reach the API" in c.ok("status").stdout

    # a step starts only while every other server's k3srotd reports: it waits, then refuses with nothing changed
    pid_c = c.server.pid
    a.write_config(restart_timeout="6s")
    time.sleep(LEASE_SECONDS + 1)  # server-2's last report runs out
    refused = a.k3srotd("rotate-now", timeout=60)
    assert refused.returncode == 3 and "server-2 (its k3srotd has not reported since" in refused.stderr
    assert c.server.pid == pid_c and a.server.signer_kid() == old
    assert "server-2" not in {_holder(cluster, "k3srotd-restart")[0], _holder(cluster, "k3srotd-step")[0]}

    c.write_config(k3s_server_url=c.server.url)  # reconnected: SIGHUP, and it catches up
    assert c.daemon is not None
    c.daemon.send_signal(1)
    a.write_config(restart_timeout="60s")
    wait_until(
        "server-2 reports again", lambda: a.k3srotd("rotate-now", timeout=240).returncode == 0, timeout=300, every=2
    )
    assert c.server.pid != pid_c and c.server.jwks_kids() == a.server.jwks_kids()


def test_a_driver_gone_for_good_does_not_block_the_cluster(cluster: Cluster) -> None:
    """The driver dies after it restarted onto its step and reported it, and never runs again: once its step
    lease ran out and every server runs the step, a follower commits it for the cluster and all adopt it."""
    a, b, c = cluster
    old = a.server.signer_kid()
    _followers(cluster)
    killed = a.k3srotd("rotate-now", env={"K3SROTD_TEST_CRASH_AT": "publish:reported"})
    assert killed.returncode == -9, killed.stderr
    wait_until(
        "a follower committed the step",
        lambda: cluster.annotations("k3srotd-step").get("k3srotd.io/outcome") == "committed",
        timeout=90,
    )
    taken = [e for n in (b, c) for e in n.daemon_events() if e["event"] == "rolling.taken-over"]
    assert len(taken) == 1 and "server-0 published publish" in taken[0]["msg"], taken
    wait_until("both followers adopted the step", lambda: all(n.status()["phase"] == "published" for n in (b, c)))
    new = b.status()["keys"][-1]["kid"]
    assert c.status()["keys"][-1]["kid"] == new != old
    for n in cluster:
        assert n.server.jwks_kids() == [old, new] and n.server.signer_kid() == old, n.name
    # the driver comes back after all: it finds its step committed and goes on from there
    proc = a.ok("rotate-now", "--skip-publish-wait", timeout=240)
    assert "finished the interrupted publish" in proc.stderr
    st = a.status()
    assert st["phase"] == "promoted" and st["signer_kid"] == new
    wait_until("every server signs with the new key", lambda: all(n.server.signer_kid() == new for n in cluster))


def test_a_prune_waits_while_another_server_still_sees_old_tokens(cluster: Cluster) -> None:
    """Each kube-apiserver counts the stale tokens presented to it: the server that prunes asks every other
    server's k3srotd, and a counter that grew on any of them delays the prune."""
    a, c = cluster[0], cluster[2]
    old = a.server.signer_kid()
    _followers(cluster)
    a.ok("rotate-now", timeout=240)
    new = a.status()["signer_kid"]
    a.write_config(grace_period="1s")
    # a max expiration with extend-token-expiration not false: the stale-token counter gates (core/prune.py)
    a.k3s_config.write_text("kube-apiserver-arg:\n- service-account-max-token-expiration=1h\n")
    time.sleep(1.1)
    c.server.add_token_uses(stale=2)  # a client still presents an old-key token, to server-2 only
    refused = a.k3srotd("prune", timeout=120)
    assert refused.returncode == 3, refused.stderr
    assert "server-2: serviceaccount_stale_tokens_total grew by 2" in refused.stderr
    assert "server-1" not in refused.stderr.splitlines()[-1]
    for n in cluster:
        assert n.server.jwks_kids() == [new, old], n.name
    a.ok("prune", "--force", "--yes", timeout=240)
    for n in cluster:
        assert n.server.jwks_kids() == [new], n.name


def _followers(cluster: Cluster) -> None:
    """server-1 and server-2 run their daemons (which follow, and never promote on their own) and have reported."""
    for n in cluster[1], cluster[2]:
        n.write_config(publish_wait="1h")
        n.start_daemon()
    wait_until("every daemon reports", lambda: _reported(cluster, "server-1", "server-2"))


def _awaiting(node: ClusterNode, name: str) -> str:
    """The status table's `awaiting` row for server `name`, or ""."""
    for line in node.ok("status").stdout.splitlines():
        if line.startswith("awaiting") and line.split(None, 1)[1].startswith(name + ":"):
            return line
    return ""


def _kill_restart_helper(data_dir: str) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if any(x.endswith("k3s-restart") for x in cmd) and data_dir in cmd:
            p.kill()


def _records(path) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connections are refused at once
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_a_server_that_fails_its_check_rolls_the_whole_cluster_back(cluster: Cluster) -> None:
    """server-2's new signer mints tokens that do not verify (emulator fault bad_tokens): its token probe after
    the promote restart fails, it reports so, and the driver rolls the whole cluster back to the published set."""
    a, c = cluster[0], cluster[2]
    old = a.server.signer_kid()
    _followers(cluster)
    c.server.set_faults({"bad_tokens": {"not_kid": old}})  # spoils tokens once any other key signs on server-2
    proc = a.k3srotd("rotate-now", timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "server-2" in proc.stderr and "restored" in proc.stderr
    failed = [e for e in c.daemon_events() if e["event"] == "step.failed"]
    assert failed and "promote failed on server-2: token probe" in failed[0]["msg"]
    events = [e["event"] for e in a.events()]
    assert "publish.done" in events and "rollback.done" in events and "promote.done" not in events
    # the rollback is published like a step: server-1 and server-2 restart onto it in turn

    def back() -> bool:
        try:
            return all(n.server.signer_kid() == old and len(n.server.jwks_kids()) == 2 for n in cluster)
        except OSError:  # a server restarting
            return False

    wait_until("everyone back on the published set", back, timeout=90)
    new = a.status()["keys"][-1]["kid"]
    for n in cluster:
        assert n.server.jwks_kids() == [old, new], n.name
    wait_until("every server adopted the state", lambda: all(n.status()["phase"] == "published" for n in cluster))
    windows = [(s_, e, n.name) for n in cluster for s_, e, _ in downtimes(n.server)]
    ordered = sorted(windows)
    assert all(x[1] <= y[0] for x, y in zip(ordered, ordered[1:])), "two servers down at once"


@pytest.mark.parametrize("crash", ["publish:uploaded", "publish:restarted"])
def test_a_driver_killed_mid_step_finishes_or_undoes_it_on_the_next_run(cluster: Cluster, crash: str) -> None:
    """uploaded: rotate-ca saved the new set, nothing was published: the next run undoes it and no server restarts.
    restarted: the step is published and the driver restarted (holding the restart lease when killed): the others
    take their turns once the lease ran out, and the next run on the driver verifies itself, waits and commits."""
    a, b, c = cluster
    old = a.server.signer_kid()
    _followers(cluster)
    pids = {n.name: n.server.pid for n in (b, c)}
    killed = a.k3srotd("rotate-now", env={"K3SROTD_TEST_CRASH_AT": crash})
    assert killed.returncode == -9, killed.stderr
    for n in cluster:  # right after the crash: every server still signs with the old key, which every server has
        assert n.server.signer_kid() == old, n.name
    if crash == "publish:uploaded":
        assert "k3srotd-step" not in {k.split("/")[1] for k in cluster.leases()} or not cluster.annotations(
            "k3srotd-step"
        ).get("k3srotd.io/step-id")
        undone = a.ok("rotate-now", "--dry-run")
        assert "would publish" in undone.stdout
        proc = a.ok("rotate-now", timeout=240)
        assert "undid the interrupted publish" in proc.stderr
    else:
        assert _holder(cluster, "k3srotd-restart")[0] == "server-0"
        wait_until(
            "both followers restarted after the lease ran out",
            lambda: all(n.server.pid != pids[n.name] for n in (b, c)),
            timeout=60,
        )
        proc = a.ok("rotate-now", timeout=240)
        # the driver's run finishes its part: or, once its step lease ran out and every server ran the step, a
        # follower committed it for the cluster first (test_a_driver_gone_for_good_...)
        finished = ("finished the publish on every server", "finished the interrupted publish")
        assert any(f in proc.stderr for f in finished), proc.stderr
    st = a.status()  # and the rerun went on to promote, on every server
    assert st["phase"] == "promoted" and st["signer_kid"] != old
    for n in cluster:
        assert n.server.jwks_kids() == [st["signer_kid"], old], n.name


def test_a_server_that_goes_down_after_the_step_began_fails_it_and_it_is_rolled_back(cluster: Cluster) -> None:
    """Issue 11: server-2's K3s stops after the step's start check passed, while the upload is under way (a slow
    rotate-ca). The driver's restart turn would take the cluster below quorum: it waits up to restart-timeout,
    then the step fails and is rolled back. Nothing restarts anywhere, and server-2 comes back on the old set."""
    a, b, c = cluster
    old = a.server.signer_kid()
    _daemons_reported_server0_by_hand(cluster)
    pids = [a.server.pid, b.server.pid]
    before = a.server.datastore_kids()
    a.write_config(restart_timeout="12s")
    a.server.set_faults({"slow_api": {"seconds": 6, "path": "/v1-k3s/cert/cacerts"}})
    log = a.root / "rotate-now.log"
    proc = a.start_bg("rotate-now", log=log)
    try:
        wait_until("server-0 takes the step", lambda: _holder(cluster, "k3srotd-step")[0] == "server-0", every=0.05)
        c.server.stop()
        assert _finish(proc, timeout=120) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "every other server must be up and serving first: server-2" in text, text
    assert "waited restart-timeout (12s) without restarting here" in text
    assert "the previous key set was restored" in text and "rollback.failed" not in text
    assert [a.server.pid, b.server.pid] == pids, "a server restarted while another was down"
    assert a.server.datastore_kids() == before and a.server.signer_kid() == old
    assert _holder(cluster, "k3srotd-restart")[0] != "server-0"

    a.server.set_faults({})
    c.server.start()  # back on the datastore's set: the one before the step
    assert c.server.jwks_kids() == a.server.jwks_kids()
