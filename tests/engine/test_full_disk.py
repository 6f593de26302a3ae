"""A full filesystem under state-dir: one line naming the file and what to do, exit 1, the keys as they were; once
there is room again the same command goes through. (The chaos runs fill a daemon's state-dir the same way.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from k3srotd_node import Node


@contextlib.contextmanager
def _small_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(path)], check=False)
    if proc.returncode != 0:
        pytest.skip("this machine does not allow a tmpfs mount")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def test_a_full_state_dir_is_one_clear_line_and_nothing_changes(node: Node, tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "state") as state:
        node.write_config(state_dir=str(state))
        node.ok("status")
        before, pid = node.server.service_key.read_bytes(), node.server.pid
        filler = _fill(state)

        proc = node.k3srotd("rotate-now")
        assert proc.returncode == 1, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("k3srotd: ")]
        assert len(lines) == 1, proc.stderr
        assert str(state) in lines[0] and "No space left on device" in lines[0], lines[0]
        assert f"Free space in {state}" in lines[0] and "unexpected" not in proc.stderr
        assert node.server.service_key.read_bytes() == before and node.server.pid == pid
        assert not list(state.rglob(".*.tmp.*")), "a temp file was left on the full disk"

        filler.unlink()
        node.ok("rotate-now")
        assert node.server.service_key.read_bytes() != before
