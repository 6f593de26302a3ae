"""The K3s seam: the live files, the server process, `k3s certificate rotate-ca`, the restart, the API.

Every path and command comes from config, so the tests drive the same code against the K3s emulator.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from k3srotd.config import DEFAULT_K3S_DATA_DIR, DEFAULT_SERVER_URL, Config
from k3srotd.errors import SafetyRefusal

if TYPE_CHECKING:  # imported where used: `status` needs neither subprocess nor HTTPS
    from k3srotd.node.kubeapi import KubeAPI
    from k3srotd.node.runner import Result


@dataclasses.dataclass(frozen=True)
class ServerProcess:
    pid: int
    started: float  # create_time: a new process after a restart has a new one, even with a reused pid


def _data_dir_of(tokens: list[str]) -> Optional[str]:
    for i, t in enumerate(tokens):
        if t in ("--data-dir", "-d") and i + 1 < len(tokens):
            return tokens[i + 1]
        if t.startswith("--data-dir="):
            return t.split("=", 1)[1]
    return None


def server_processes(bin_name: str = "k3s") -> list[tuple[ServerProcess, Optional[str]]]:
    """Processes whose title reads `k3s server` (K3s rewrites its title to that; args may be hidden)."""
    import psutil

    names = {bin_name, "k3s"}
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = p.info.get("cmdline") or []
        tokens = " ".join(cmd).split()
        for i in range(len(tokens) - 1):
            if os.path.basename(tokens[i]) in names and tokens[i + 1] == "server":
                found.append((ServerProcess(p.info["pid"], p.info["create_time"]), _data_dir_of(tokens)))
                break
    return found


class K3s:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # --- files
    @property
    def live_path(self) -> Path:
        return self.cfg.live_key

    def is_server_node(self) -> bool:
        """As `k3s certificate` decides: a server has <data-dir>/server."""
        return (Path(self.cfg.k3s_data_dir) / "server").is_dir()

    def require_server_node(self) -> None:
        if not self.is_server_node():
            raise SafetyRefusal(
                f"{Path(self.cfg.k3s_data_dir) / 'server'}: does not exist; this is not a K3s server node "
                "(an agent, or no K3s). Run k3srotd on the servers, or set k3s-data-dir"
            )

    def live_bytes(self) -> bytes:
        """The live file, read only if it is a regular file, with a size cap (a link to /dev/zero or a FIFO there
        must neither fill memory nor hang)."""
        from k3srotd.node.store import read_regular

        try:
            return read_regular(self.live_path)
        except FileNotFoundError:
            self.require_server_node()
            raise SafetyRefusal(
                f"{self.live_path}: does not exist; K3s has not started on this server yet, or k3s-data-dir "
                "is wrong. Start K3s once, or set k3s-data-dir"
            ) from None
        except OSError as e:
            raise SafetyRefusal(f"{self.live_path}: cannot be read ({e.strerror}); run k3srotd as root") from None

    def live_mtime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.live_path.stat().st_mtime, dt.timezone.utc)

    def current_kid(self) -> Optional[str]:
        """The kid K3s signs with: its service.current.key, written at every start."""
        from k3srotd.core import keys
        from k3srotd.node.store import read_regular

        try:
            data = read_regular(self.cfg.current_key)
            return keys.parse(data, str(self.cfg.current_key)).signer.kid
        except (OSError, SafetyRefusal):
            return None

    # --- process
    def server_process(self) -> Optional[ServerProcess]:
        """The K3s server of our data dir: the one whose argv names it, else one whose argv names none (K3s
        rewrites its title to `k3s server`, hiding its flags). A server of another data dir is never ours."""
        ours = os.path.realpath(self.cfg.k3s_data_dir)
        hidden = None
        for proc, data_dir in server_processes(os.path.basename(self.cfg.k3s_bin)):
            if data_dir is None:
                hidden = hidden or proc
            elif os.path.realpath(data_dir) == ours:
                return proc
        return hidden

    # --- commands
    def rotate_ca_argv(self) -> list[str]:
        argv = [self.cfg.k3s_bin, "certificate", "rotate-ca", f"--path={self.cfg.staging_server_dir}"]
        if os.path.realpath(self.cfg.k3s_data_dir) != os.path.realpath(DEFAULT_K3S_DATA_DIR):
            argv.append(f"--data-dir={self.cfg.k3s_data_dir}")
        if self.cfg.k3s_server_url.rstrip("/") != DEFAULT_SERVER_URL:
            argv.append(f"--server={self.cfg.k3s_server_url}")
        return argv

    def rotate_ca(self) -> Result:
        from k3srotd.node import runner

        return runner.run(self.rotate_ca_argv(), timeout=min(120.0, self.cfg.restart_timeout.total_seconds()))

    def restart(self) -> Result:
        from k3srotd.node import runner

        return runner.run(self.cfg.restart_command, timeout=self.cfg.restart_timeout.total_seconds())

    def version(self) -> Optional[str]:
        """The release `k3s --version` names (e.g. v1.31.4+k3s1), or None when it names none."""
        from k3srotd.core import versions
        from k3srotd.node import runner

        res = runner.run([self.cfg.k3s_bin, "--version"], timeout=20)
        return versions.release(res.stdout + res.stderr) if res.ok else None

    def api(self) -> KubeAPI:
        from k3srotd.node.kubeapi import KubeAPI

        return KubeAPI(self.cfg.kubeconfig, self.cfg.k3s_server_url)
