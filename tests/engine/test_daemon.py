"""The daemon: a year of schedule walked with a fake clock through real steps on the emulator, and `k3srotd run`
as a real process for READY/STATUS/WATCHDOG, SIGHUP and SIGTERM."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from k3semu.harness import subprocess_env
from k3srotd_node import Node

from k3srotd import config
from k3srotd.core.clock import FakeClock
from k3srotd.daemon.service import Daemon
from k3srotd.output import logs


@pytest.mark.slow
def test_a_year_of_schedule_in_seconds(node: Node) -> None:
    node.write_config(rotation_interval="90d", publish_wait="10m", grace_period="24h", max_splay="0s")
    cfg = config.load(str(node.config))
    stream = io.StringIO()
    log = logs.configure("json", stream=stream)
    start = dt.datetime.now(dt.timezone.utc)
    clock = FakeClock(start)
    d = Daemon(cfg, log, clock)
    d.recheck = dt.timedelta(days=1)  # the idle looks in between change nothing here; fewer make the walk faster
    ticks = 0
    steps: list[tuple[str, dt.datetime]] = []
    seen: dict[str, str] = {}
    state_file = node.state_dir / "state.json"
    while clock.now() < start + dt.timedelta(days=365):
        wake = d.tick()
        ticks += 1
        done = json.loads(state_file.read_text())["last_success"] if state_file.exists() else {}
        for step, when in sorted(done.items(), key=lambda kv: kv[1]):
            if seen.get(step) != when:
                steps.append((f"{step}.done", dt.datetime.fromisoformat(when.replace("Z", "+00:00"))))
        seen = dict(done)
        clock.advance(max(1.0, (wake - clock.now()).total_seconds()))
    logs.reset()
    assert "step.failed" not in stream.getvalue()
    names = [s for s, _ in steps]
    assert names == ["publish.done", "promote.done", "prune.done"] * 4, names
    day = dt.timedelta(days=1)
    # the live key is new: first rotation 90 days on, promote 10 minutes after publish, prune a day after promote
    pub1, prom1, prune1 = (t for _, t in steps[:3])
    assert abs(pub1 - (start + 90 * day)) < dt.timedelta(minutes=2)
    assert dt.timedelta(minutes=10) <= prom1 - pub1 < dt.timedelta(minutes=12)
    assert day <= prune1 - prom1 < day + dt.timedelta(minutes=2)
    pub2 = steps[3][1]
    assert abs(pub2 - (prom1 + 90 * day)) < dt.timedelta(minutes=2)
    # it sleeps until the next decision, looking at the live file every `recheck` in between
    assert ticks <= 365 + 50
    assert len(node.server.jwks_kids()) == 1


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []

    def receive(self) -> bool:
        """One datagram into messages; False when none came within the socket timeout."""
        try:
            self.messages.append(self.sock.recv(65536).decode())
        except socket.timeout:
            return False
        return True

    def drain(self, until: float) -> None:
        while time.monotonic() < until and self.receive():
            pass

    def wait_for(self, text: str, timeout: float = 30) -> str:
        # every datagram is looked at as it arrives: watchdog pings can come faster than the socket timeout
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if text in m:
                    return m
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {text!r} in {self.messages}")
            self.receive()


def _run(node: Node, notify: NotifySocket, **env: str) -> subprocess.Popen:
    e = subprocess_env({"NOTIFY_SOCKET": str(notify.path), **env})
    return subprocess.Popen(
        [sys.executable, "-m", "k3srotd", "--debug", "--config", str(node.config), "run"],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_ready_status_watchdog_and_sighup(node: Node, tmp_path: Path) -> None:
    node.write_config(max_splay="0s")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify, WATCHDOG_USEC="400000", WATCHDOG_PID="")
    try:
        notify.wait_for("READY=1")
        status = notify.wait_for("next publish at")
        assert status.startswith("STATUS=phase idle; ")
        notify.wait_for("WATCHDOG=1")
        # a bad config on SIGHUP keeps the old one and says why
        bad = Path(str(node.config) + ".d")
        bad.mkdir()
        (bad / "99-typo.yaml").write_text("grace-perid: 1h\n")
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        assert proc.poll() is None
        (bad / "99-typo.yaml").unlink()
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    records = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    failed = [r for r in records if r["event"] == "config.reload-failed"]
    assert failed and "grace-perid" in failed[0]["msg"] and "old one stays" in failed[0]["msg"]
    notify.drain(time.monotonic() + 0.5)
    assert "STOPPING=1" in "".join(notify.messages)


def test_sigterm_mid_step_finishes_the_step(node: Node, tmp_path: Path) -> None:
    # a key due at once, a restart that takes 3 s: SIGTERM arrives while K3s restarts
    node.write_config(rotation_interval="1s", publish_wait="1h", max_splay="0s")
    node.server.set_faults({"slow_start": {"times": 1, "seconds": 3}})
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify)
    try:
        notify.wait_for("doing publish")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(ln)["event"] for ln in err.splitlines() if ln.startswith("{")]
    assert "publish.done" in events and "step.failed" not in events
    assert events.index("daemon.stop") < events.index("publish.done")
    assert "promote.done" not in events
    st = node.status()
    assert st["phase"] == "published"
    assert node.server.jwks_kids() == [k["kid"] for k in st["keys"]]
    assert "interrupted" not in node.ok("status").stdout


def test_sighup_mid_step_reloads_after_it_and_hooks_see_every_step(node: Node, tmp_path: Path) -> None:
    """A reload during a step waits for the step (no second tick beside it), then takes effect at once: here a
    publish-wait cut to 0s lets the promote follow (the new key is not due for 30 days). The hooks in hooks-dir
    run after each step."""
    node.write_config(rotation_interval="1s", publish_wait="1h", max_splay="0s")
    hooks = Path(node.settings["hooks-dir"])
    hooks.mkdir(mode=0o755)
    seen = tmp_path / "hooks.log"
    hook = hooks / "10-record"
    hook.write_text(f'#!/bin/sh\necho "$K3SROTD_EVENT $K3SROTD_PHASE $K3SROTD_SIGNER_KID" >> {seen}\n')
    hook.chmod(0o755)
    node.server.set_faults({"slow_start": {"times": 1, "seconds": 3}})
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify)
    try:
        notify.wait_for("doing publish")
        drop_in = Path(str(node.config) + ".d")
        drop_in.mkdir()
        (drop_in / "50-fast.yaml").write_text("publish-wait: 0s\nrotation-interval: 30d\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("next prune at", timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    events = [json.loads(ln)["event"] for ln in err.splitlines() if ln.startswith("{")]
    assert events.index("config.reloaded") < events.index("promote.done")
    assert "step.failed" not in events
    assert not [m for m in notify.messages if "holds the lock" in m], notify.messages
    signer = node.server.signer_kid()
    assert node.status()["phase"] == "promoted" and node.status()["signer_kid"] == signer
    lines = seen.read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["publish.done", "published"], ["promote.done", "promoted"]]
    assert lines[1].split()[2] == signer


def test_the_daemon_finishes_or_undoes_an_interrupted_step_before_ready(node: Node, tmp_path: Path) -> None:
    signer = node.server.signer_kid()
    crashed = node.k3srotd("rotate-now", env={"K3SROTD_TEST_CRASH_AT": "publish:uploaded"})
    assert crashed.returncode == -signal.SIGKILL
    assert "interrupted" in node.ok("status").stdout
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify)
    try:
        notify.wait_for("READY=1")
        assert "interrupted" not in node.ok("status").stdout  # undone before READY
        assert node.server.datastore_kids() == [signer] == node.server.jwks_kids()
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    events = [json.loads(ln)["event"] for ln in err.splitlines() if ln.startswith("{")]
    assert "resume.done" in events and events.index("resume.done") < events.index("daemon.status")


def test_daemon_idles_on_a_node_that_is_not_a_k3s_server(node: Node, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    node.write_config(k3s_data_dir=str(agent), max_splay="0s")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify)
    try:
        notify.wait_for("READY=1")
        msg = notify.wait_for("STATUS=idle")
        assert "not a K3s server" in msg
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, err


def test_run_with_bad_config_exits_2(node: Node) -> None:
    node.config.write_text("strategy: sideways\n")
    proc = node.k3srotd("run")
    assert proc.returncode == 2 and "strategy" in proc.stderr


def test_metrics_file_after_steps(node: Node, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "textfile" / "k3srotd.prom"
    metrics.parent.mkdir()
    node.write_config(metrics_file=str(metrics))
    node.ok("rotate-now")
    fams = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    phase = {s.labels["phase"]: s.value for s in fams["k3srotd_phase"].samples}
    assert phase == {"idle": 0, "published": 0, "promoted": 1}
    roles = {s.labels["role"]: s.value for s in fams["k3srotd_keys"].samples}
    assert roles == {"signer": 1, "verify": 1}
    success = {s.labels["step"] for s in fams["k3srotd_last_success_timestamp_seconds"].samples}
    assert {"publish", "promote"} <= success
    nxt = {s.labels["action"]: s.value for s in fams["k3srotd_next_action_timestamp_seconds"].samples}
    assert "prune" in nxt and nxt["prune"] > time.time() + 23 * 3600
    assert os.stat(metrics).st_mode & 0o777 == 0o644


def test_without_automatic_a_due_rotation_only_says_so(node: Node) -> None:
    """The default: the daemon walks 100 days past a due rotation and restarts K3s not once; its status says what
    is due, since when, and how to act or opt in."""
    node.write_config(automatic=False, rotation_interval="90d", max_splay="0s")
    cfg = config.load(str(node.config))
    stream = io.StringIO()
    log = logs.configure("json", stream=stream)
    start = dt.datetime.now(dt.timezone.utc)
    clock = FakeClock(start)
    d = Daemon(cfg, log, clock, config_path=str(node.config))
    d.recheck = dt.timedelta(hours=12)
    restarts = len(node.server.lifecycle())
    kids = node.server.jwks_kids()
    while clock.now() < start + dt.timedelta(days=100):
        wake = d.tick()
        assert wake > clock.now()  # never a busy loop on the held step
        clock.advance((wake - clock.now()).total_seconds())
    logs.reset()
    assert len(node.server.lifecycle()) == restarts
    assert node.server.jwks_kids() == kids == node.server.datastore_kids()
    assert node.status()["phase"] == "idle"
    assert "publish is due (since " in d.status_line
    assert "automatic steps are off: run `k3srotd rotate-now`" in d.status_line
    assert f"write `automatic: true` to {node.config}.d/50-automatic.yaml" in d.status_line
    events = [json.loads(ln)["event"] for ln in stream.getvalue().splitlines()]
    assert "daemon.step" not in events and "publish.done" not in events


def test_without_automatic_the_daemon_still_undoes_an_interrupted_step_and_a_drop_in_opts_in(
    node: Node, tmp_path: Path
) -> None:
    signer = node.server.signer_kid()
    metrics = tmp_path / "k3srotd.prom"
    node.write_config(
        automatic=False, rotation_interval="1s", max_splay="0s", metrics_file=str(metrics), grace_period="30m"
    )
    crashed = node.k3srotd("rotate-now", env={"K3SROTD_TEST_CRASH_AT": "publish:uploaded"})
    assert crashed.returncode == -signal.SIGKILL
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = _run(node, notify)
    try:
        notify.wait_for("READY=1")
        status = notify.wait_for("automatic steps are off")
        assert "publish is due" in status and "k3srotd rotate-now" in status, status
        time.sleep(1.5)  # a daemon that would act has started its publish by now
        assert node.server.datastore_kids() == [signer] == node.server.jwks_kids()
        assert "interrupted" not in node.ok("status").stdout
        assert "k3srotd_phase" in metrics.read_text()
        # the opt-in, as a fleet's config management writes it: a drop-in, then a reload
        drop_in = Path(str(node.config) + ".d")
        drop_in.mkdir()
        (drop_in / "50-automatic.yaml").write_text("automatic: true\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("doing publish", timeout=60)  # SIGTERM below: the publish ends first
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    events = [json.loads(ln)["event"] for ln in err.splitlines() if ln.startswith("{")]
    assert "resume.done" in events and "daemon.manual" in events
    assert "config.unsafe-short-grace" in events  # grace-period 30m, let through by unsafe-short-grace
    assert events.index("config.reloaded") < events.index("daemon.step") < events.index("publish.done")


def test_status_and_doctor_say_automatic_is_off_and_how_to_opt_in(node: Node) -> None:
    node.write_config(automatic=False)
    status = node.ok("status").stdout
    assert "automatic" in status and "off" in status and "automatic: true" in status, status
    assert re.search(r"^next +publish .*; run `k3srotd rotate-now`$", status, re.M), status
    doctor = node.k3srotd("doctor").stdout
    line = next(ln for ln in doctor.splitlines() if ln[6:].startswith("automatic"))
    # a choice, not a fault: the production checklist has doctor all PASS before the opt-in
    assert line.startswith("PASS  automatic: off") and "publish is due at" in line, doctor
    assert f"write `automatic: true` to {node.config}.d/50-automatic.yaml" in line, line
    node.write_config(automatic=True)
    on = [ln for ln in node.k3srotd("doctor").stdout.splitlines() if ln[6:].startswith("automatic")]
    assert on and on[0].startswith("PASS  automatic: on"), on
