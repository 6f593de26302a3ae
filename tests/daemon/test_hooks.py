"""Hooks: real shell scripts in a real directory; environment, order, skips, failures, timeouts, permissions."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from k3srotd.output import hooks as hooks_module
from k3srotd.output.hooks import OUTPUT_LIMIT, run_hooks

KIDS = ["kidB", "kidA"]


class Recorder:
    """A logger that keeps what it was told (the hooks module only calls these methods)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, kw: dict[str, Any]) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._add("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._add("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._add("error", event, kw)

    def events(self, level: str | None = None) -> list[str]:
        return [e for lvl, e, _ in self.records if level is None or lvl == level]

    def messages(self, event: str) -> list[str]:
        return [kw["msg"] for _, e, kw in self.records if e == event]


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hooks.d"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)  # noqa: S103 (a hooks dir as installed: root-owned, 0755)
    return d


def hook(d: Path, name: str, body: str, mode: int = 0o755) -> Path:
    p = d / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(p, mode)
    return p


def run(d: Path, log: Recorder, timeout: float = 10, **env: str) -> list[Any]:
    environ = {"PATH": os.environ["PATH"], **env}
    return run_hooks(d, "promote.done", "kidB", KIDS, "promoted", timeout, log, environ=environ)


def test_environment(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    hook(hooks_dir, "10-env", 'env > "$OUT"')
    log = Recorder()
    [res] = run(hooks_dir, log, OUT=str(out), NOTIFY_SOCKET="/run/systemd/notify", WATCHDOG_USEC="1", MINE="x y")
    assert res.ok and res.returncode == 0
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["K3SROTD_EVENT"] == "promote.done"
    assert env["K3SROTD_SIGNER_KID"] == "kidB"
    assert env["K3SROTD_KIDS"] == "kidB,kidA"
    assert env["K3SROTD_PHASE"] == "promoted"
    assert env["MINE"] == "x y", "the daemon's environment is inherited"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env, "systemd's notify variables are not"
    assert env["PWD"] == "/"
    assert log.events() == ["hook.done"]


def test_lexical_order_and_skips(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    for name in ("20-c", "10-a", "2-b"):
        hook(hooks_dir, name, f'echo {name} >> "$OUT"')
    hook(hooks_dir, ".hidden", 'echo hidden >> "$OUT"')
    hook(hooks_dir, "30-not-executable", 'echo nx >> "$OUT"', mode=0o644)
    (hooks_dir / "40-dir").mkdir()
    os.symlink("/nonexistent", hooks_dir / "50-dangling")
    log = Recorder()
    results = run(hooks_dir, log, OUT=str(out))
    assert out.read_text().split() == ["10-a", "2-b", "20-c"]
    assert [r.path.name for r in results] == ["10-a", "2-b", "20-c"]
    skipped = log.messages("hook.skip")
    assert len(skipped) == 4
    assert any(".hidden: a dotfile" in m for m in skipped)
    assert any("30-not-executable: not executable" in m for m in skipped)
    assert any("40-dir: not a regular file" in m for m in skipped)
    assert any("50-dangling" in m for m in skipped)
    assert set(log.events("debug")) == {"hook.skip"}


def test_a_failing_hook_is_logged_and_the_next_still_runs(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    hook(hooks_dir, "10-fail", 'echo "webhook said 500" >&2; exit 3')
    hook(hooks_dir, "20-ok", 'echo ok; touch "$OUT"')
    log = Recorder()
    fail, ok = run(hooks_dir, log, OUT=str(out))
    assert not fail.ok and fail.returncode == 3 and not fail.timed_out
    assert fail.output == "webhook said 500\n"
    assert ok.ok and ok.output == "ok\n" and out.exists()
    assert log.events() == ["hook.failed", "hook.done"]
    level, _, kw = log.records[0]
    assert level == "warning"
    assert kw["msg"] == "hook 10-fail for promote.done exited with status 3: webhook said 500"
    assert kw["returncode"] == 3 and kw["output"] == "webhook said 500\n" and kw["kids"] == KIDS
    assert kw["step_event"] == "promote.done" and kw["hook"].endswith("10-fail")


def test_a_timed_out_hook_and_its_children_are_killed(hooks_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook(hooks_dir, "10-slow", f'echo started; sleep 60 & echo $! > "{pids}"; wait')
    log = Recorder()
    started = time.monotonic()
    [res] = run(hooks_dir, log, timeout=0.5)
    assert time.monotonic() - started < 3
    assert res.timed_out and res.returncode is None and not res.ok
    assert res.output == "started\n"
    child = int(pids.read_text())
    deadline = time.monotonic() + 2  # SIGKILL is sent; on a loaded machine the child may take a moment to die
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(child), "the hook's background child was killed with its process group"
    assert log.messages("hook.failed") == ["hook 10-slow for promote.done timed out after 0.5s and was killed: started"]


def test_a_hook_ignoring_sigterm_gets_sigkill(hooks_dir: Path) -> None:
    hook(hooks_dir, "10-stubborn", "trap '' TERM; echo waiting; while :; do sleep 0.1; done")
    log = Recorder()
    started = time.monotonic()
    [res] = run(hooks_dir, log, timeout=0.5)
    assert 2 <= time.monotonic() - started < 5
    assert res.timed_out and res.output == "waiting\n"


@pytest.mark.slow
def test_an_escaped_child_holding_the_output_does_not_hang_the_daemon(hooks_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook(hooks_dir, "10-escape", f'setsid sleep 60 & echo $! > "{pids}"; echo bye')
    log = Recorder()
    started = time.monotonic()
    try:
        [res] = run(hooks_dir, log, timeout=0.5)
        assert time.monotonic() - started < 3
        # the hook itself exited at once: no timeout, whatever its escaped child does
        assert res.ok and not res.timed_out and res.output == "bye\n"
    finally:
        escaped = int(pids.read_text())
        os.kill(escaped, 9)


def test_a_hook_that_exits_leaving_children_has_not_timed_out_and_they_are_killed(
    hooks_dir: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    hook(hooks_dir, "10-leaves", f'sleep 60 & echo $! > "{pids}"; echo done')
    log = Recorder()
    started = time.monotonic()
    [res] = run(hooks_dir, log, timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 4  # the group was waited for, up to the timeout
    assert res.ok and not res.timed_out and res.output == "done\n"
    child = int(pids.read_text())
    deadline = time.monotonic() + 2
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(child), "the child left running at the timeout was killed with the group"


def test_a_hook_swapped_after_the_check_is_not_run(hooks_dir: Path, tmp_path: Path) -> None:
    """The hook is opened through the held folder and run from its descriptor: the file checked is the one run."""
    from k3srotd.output import hooks as h

    marker = tmp_path / "ran"
    hook(hooks_dir, "10-good", "echo good")
    fd = os.open(hooks_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hfd = h._open_hook(fd, hooks_dir / "10-good", Recorder())
        assert hfd is not None
        os.unlink(hooks_dir / "10-good")
        hook(hooks_dir, "10-good", f'touch "{marker}"; echo evil')
        res = h.run_hook(hooks_dir / "10-good", {"PATH": "/usr/bin:/bin"}, 5.0, hfd)
        os.close(hfd)
    finally:
        os.close(fd)
    assert res.output == "good\n" and not marker.exists()


def test_hooks_that_cannot_start_or_are_killed(hooks_dir: Path) -> None:
    (hooks_dir / "10-no-shebang").write_text("echo hi\n")
    os.chmod(hooks_dir / "10-no-shebang", 0o755)  # noqa: S103
    hook(hooks_dir, "20-suicide", "kill -9 $$")
    log = Recorder()
    nostart, killed = run(hooks_dir, log)
    assert nostart.error and "Exec format error" in nostart.error and nostart.returncode is None
    assert killed.returncode == -9
    msgs = log.messages("hook.failed")
    assert msgs[0].startswith("hook 10-no-shebang for promote.done could not start: Exec format error")
    assert msgs[1] == "hook 20-suicide for promote.done was killed by signal 9"


def test_long_output_keeps_the_tail(hooks_dir: Path) -> None:
    hook(hooks_dir, "10-chatty", "head -c 200000 /dev/zero | tr '\\0' x; echo END")
    [res] = run(hooks_dir, Recorder())
    assert res.ok
    assert res.output.startswith("[... first ")
    assert res.output.endswith("xxxEND\n")
    assert len(res.output) < OUTPUT_LIMIT + 100


def test_a_missing_hooks_dir_runs_nothing(tmp_path: Path) -> None:
    log = Recorder()
    assert run(tmp_path / "nope", log) == []
    assert log.events() == ["hook.none"]
    (tmp_path / "file").write_text("")
    assert run(tmp_path / "file", log) == []
    assert log.events("warning") == ["hook.refused"]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_hooks_dir_writable_by_others_is_refused(hooks_dir: Path, tmp_path: Path, mode: int) -> None:
    out = tmp_path / "ran"
    hook(hooks_dir, "10-x", f'touch "{out}"')
    os.chmod(hooks_dir, mode)
    log = Recorder()
    assert run(hooks_dir, log) == []
    assert not out.exists()
    [msg] = log.messages("hook.refused")
    assert f"writable by group or others (mode {mode:04o})" in msg


def test_a_hook_writable_by_others_is_refused_the_rest_run(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    hook(hooks_dir, "10-bad", f'echo bad >> "{out}"', mode=0o777)
    hook(hooks_dir, "20-good", f'echo good >> "{out}"')
    log = Recorder()
    [res] = run(hooks_dir, log)
    assert res.path.name == "20-good"
    assert out.read_text() == "good\n"
    [msg] = log.messages("hook.refused")
    assert "10-bad: it is writable by group or others (mode 0777)" in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_hooks_owned_by_another_user_are_refused(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    p = hook(hooks_dir, "10-theirs", f'touch "{out}"')
    os.chown(p, 65534, 65534)
    log = Recorder()
    assert run(hooks_dir, log) == []
    assert "owned by uid 65534" in log.messages("hook.refused")[0]
    os.chown(p, 0, 0)
    os.chown(hooks_dir, 65534, 65534)
    log = Recorder()
    assert run(hooks_dir, log) == []
    assert "owned by uid 65534" in log.messages("hook.refused")[0]
    assert not out.exists()


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def example_hook() -> str:
    """The example hook in the hooks module's documentation, as an operator would copy it."""
    doc = hooks_module.__doc__ or ""
    block = doc.split("Example:", 1)[1].split("::\n", 1)[1]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip()]
    return "\n".join(lines).strip() + "\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="the example hook uses curl")
def test_the_documented_webhook_example_posts_the_step(hooks_dir: Path) -> None:
    received: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        p = hooks_dir / "50-webhook"
        p.write_text(example_hook())
        p.chmod(0o755)
        log = Recorder()
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/xyz"
        [res] = run(hooks_dir, log, WEBHOOK_URL=url)
    finally:
        server.shutdown()
        server.server_close()
    assert res.ok, res
    [(content_type, body)] = received
    assert content_type == "application/json"
    text = json.loads(body)["text"]
    assert text == f"{os.uname().nodename}: k3srotd promote.done, phase promoted, signer kidB, keys kidB,kidA"
