"""After rotate-ca has uploaded, the step ends or rolls back whatever happens: an error that is not a failed check,
and SIGTERM to a command in the foreground (as to the daemon)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from k3semu.harness import subprocess_env
from k3srotd_node import K3SROTD, Node


def _events(stderr: str) -> list[str]:
    return [json.loads(ln)["event"] for ln in stderr.splitlines() if ln.startswith("{")]


def test_an_error_after_the_upload_that_is_no_check_rolls_back(node: Node, tmp_path: Path) -> None:
    """K3s's restart leaves a kubeconfig that does not parse for longer than k3srotd reads it again (3 s): not a
    failed check, yet the datastore holds a set nobody verified. The step rolls back and exits 1."""
    live, signer = node.live_bytes(), node.server.signer_kid()
    kubeconfig = node.server.kubeconfig
    once = tmp_path / "broke-kubeconfig-once"
    wrapper = tmp_path / "restart-k3s"
    wrapper.write_text(
        "#!/bin/sh\nset -e\n"
        '"$@"\n'
        f'if [ ! -e "{once}" ]; then\n'
        f'  touch "{once}"; cp "{kubeconfig}" "{kubeconfig}.good"\n'
        f'  printf "apiVersion: [a kubeconfig K3s is still writing" > "{kubeconfig}"\n'
        f'  (sleep 5; cat "{kubeconfig}.good" > "{kubeconfig}") </dev/null >/dev/null 2>&1 &\n'
        "fi\n"
    )
    wrapper.chmod(0o755)
    node.write_config(restart_command=[str(wrapper), *node.server.restart_command(timeout=30)])
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert "ConfigError" in last and "the previous key set was restored" in last, last
    assert once.exists()
    assert node.live_bytes() == live
    assert node.server.signer_kid() == signer
    assert node.server.datastore_kids() == [signer]
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    events = _events(proc.stderr)
    assert "rollback.done" in events and events.index("step.failed") < events.index("rollback.done")
    assert node.status()["phase"] == "idle"


def test_sigterm_to_rotate_now_mid_step_finishes_the_step_first(node: Node) -> None:
    node.server.set_faults({"slow_start": {"times": 1, "seconds": 3}})
    proc = subprocess.Popen(
        [*K3SROTD, "--config", str(node.config), "rotate-now"],
        env=subprocess_env({}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # until rotate-ca has uploaded the publish; K3s then restarts (3 s)
            lines.append(line)
            if line.startswith("{") and json.loads(line)["event"] == "rotate-ca":
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        err = "".join(lines) + proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err  # not 1: the publish went through before the stop
    assert "stopped by SIGTERM after publish" in err.splitlines()[-1]
    events = _events(err)
    assert "publish.done" in events and "step.failed" not in events and "promote.done" not in events
    st = node.status()
    assert st["phase"] == "published"
    assert node.server.jwks_kids() == [k["kid"] for k in st["keys"]]
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()
    assert "interrupted" not in node.ok("status").stdout
