"""Root trusts nothing it did not create: real owners (uid 65534) and modes, a real second process for the lock,
and live files that are no files. Each refusal is one line, exit 3, nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from k3srotd_node import Node

NOBODY = 65534


def _line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("k3srotd: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _foreign_state_dir(node: Node) -> Path:
    node.state_dir.mkdir(mode=0o700)
    os.chown(node.state_dir, NOBODY, NOBODY)
    return node.state_dir


def _open_state_dir(node: Node) -> Path:
    node.state_dir.mkdir()
    os.chmod(node.state_dir, 0o777)  # noqa: S103 - the unsafe mode under test
    return node.state_dir


def _open_staging_parent(node: Node) -> Path:
    parent = node.staging_dir.parent
    parent.mkdir(parents=True)
    os.chmod(parent, 0o777)  # noqa: S103 - world-writable without the sticky bit
    return parent


def _foreign_dropin(node: Node) -> Path:
    d = Path(str(node.config) + ".d")
    d.mkdir()
    p = d / "50-bin.yaml"
    p.write_text("k3s-bin: /tmp/evil\n")
    os.chown(p, NOBODY, NOBODY)
    return p


def _open_hooks_dir(node: Node) -> Path:
    d = node.root / "hooks"
    d.mkdir()
    os.chmod(d, 0o757)  # noqa: S103
    return d


def _foreign_kubeconfig(node: Node) -> Path:
    os.chown(node.server.kubeconfig, NOBODY, NOBODY)
    return Path(node.server.kubeconfig)


@pytest.mark.parametrize(
    "make",
    [_foreign_state_dir, _open_state_dir, _open_staging_parent, _foreign_dropin, _open_hooks_dir, _foreign_kubeconfig],
)
def test_a_path_someone_else_could_change_is_refused(node: Node, make: Callable[[Node], Path]) -> None:
    bad = make(node)
    live, pid = node.live_bytes(), node.server.pid
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    line = _line(proc)
    assert str(bad) in line and "chown root:root" in line
    assert node.live_bytes() == live and node.server.pid == pid
    assert not (node.state_dir / "backups").exists()


def test_a_root_sticky_parent_is_safe(node: Node) -> None:
    parent = node.root / "shared-tmp"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # noqa: S103 - like /tmp
    node.write_config(staging_dir=str(parent / "k3s"))
    node.ok("rotate-now")
    assert node.status()["phase"] == "promoted"


def test_two_configs_aimed_at_one_k3s_exclude_each_other(node: Node, tmp_path: Path) -> None:
    """A real second process holds the lock through another state-dir; ours is refused with exit 4."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from k3srotd.node.lock import Lock; "
            "Lock(Path(sys.argv[1]), sys.argv[2]).acquire(); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "other-state" / "lock"),
            str(node.server.data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = node.k3srotd("rotate-now")
        assert proc.returncode == 4, proc.stderr
        assert os.path.realpath(node.server.data_dir) in _line(proc)
    finally:
        holder.kill()
        holder.wait()
    node.ok("rotate-now")  # the lock died with its holder


def test_a_newer_state_is_refused_naming_its_version(node: Node) -> None:
    node.state_dir.mkdir(mode=0o700)
    (node.state_dir / "state.json").write_text(json.dumps({"version": 7}))
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3 and "state version 7" in _line(proc)
    assert json.loads((node.state_dir / "state.json").read_text()) == {"version": 7}


@pytest.mark.parametrize("text", ["null", "[]", '{"version": 1, "keys": {"k": {"first_seen": "2026-01-01T00:00:00"}}}'])
def test_a_corrupt_state_with_a_staged_file_left_is_refused(node: Node, text: str) -> None:
    node.state_dir.mkdir(mode=0o700)
    (node.state_dir / "state.json").write_text(text)
    tls = node.staging_dir / "server" / "tls"
    tls.mkdir(parents=True, mode=0o700)
    (tls / "service.key").write_bytes(node.live_bytes())
    os.chmod(tls / "service.key", 0o600)
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    assert str(tls / "service.key") in _line(proc)
    assert (node.state_dir / "state.json").read_text() == text
    (tls / "service.key").unlink()
    node.ok("rotate-now")  # now the datastore is put back to the live file, and the state rebuilt
    assert "state.rebuilt" in {e["event"] for e in node.events()}


@pytest.mark.parametrize("kind", ["zero", "fifo"])
def test_a_live_key_that_is_no_file_is_refused_at_once(node: Node, kind: str) -> None:
    path = node.server.service_key
    path.unlink()
    if kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    started = time.monotonic()
    for cmd in (["status"], ["rotate-now"]):
        proc = node.k3srotd(*cmd, timeout=30)
        assert proc.returncode == 3, proc.stderr
        assert str(path) in _line(proc) and "not a regular file" in _line(proc)
    # no hang: each command also has its own 30 s bound; the total allows for a loaded machine
    assert time.monotonic() - started < 55
