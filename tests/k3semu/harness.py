"""Drive emulated K3s servers from tests (no pytest dependency).

    srv = EmulatedServer(tmp_path / "k3s")          # picks a free port
    srv.start()                                      # detached process, waits for /readyz
    srv.jwks_kids(); srv.request_token("default", "app"); srv.review_token(token)
    srv.set_faults({"no_come_back": {"times": 1}})
    srv.restart()                                    # through bin/k3s-restart, like k3srotd's restart-command
    srv.stop()

Servers run in their own session (setsid) and log to <data-dir>/emulator/server.log. Every server started
here is also stopped by `stop_all()`, which runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import faults as _faults
from . import identity as _identity
from . import keys as _keys
from . import objects as _objects
from .bootstrap import Datastore, File
from .client import KubeClient
from .env import BIN_DIR, free_port, subprocess_env
from .restart import alive, is_server_of, read_pid

K3S_BIN = BIN_DIR / "k3s"
K3S_RESTART_BIN = BIN_DIR / "k3s-restart"
PathLike = Union[str, "os.PathLike[str]"]

kid_of = _keys.kid_of
public_keys = _keys.public_keys


class ServerError(RuntimeError):
    pass


_RUNNING: List[EmulatedServer] = []


class EmulatedServer:
    bin_dir = BIN_DIR

    def __init__(
        self,
        data_dir: PathLike,
        port: Optional[int] = None,
        datastore: Optional[PathLike] = None,
        config_file: Optional[PathLike] = None,
        node_name: Optional[str] = None,
        extra_args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.datastore = Path(datastore).resolve() if datastore else None
        self.config_file = Path(config_file).resolve() if config_file else self.data_dir / "emulator" / "config.yaml"
        self.node_name = node_name
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self._procs: List[subprocess.Popen] = []

    # ----- paths and facts
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def emulator_dir(self) -> Path:
        return self.data_dir / "emulator"

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def tls_dir(self) -> Path:
        return self.server_dir / "tls"

    @property
    def service_key(self) -> Path:
        return self.tls_dir / "service.key"

    @property
    def current_key(self) -> Path:
        return self.tls_dir / "service.current.key"

    @property
    def token_file(self) -> Path:
        return self.server_dir / "token"

    @property
    def kubeconfig(self) -> Path:
        return self.server_dir / "cred" / "admin.kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.emulator_dir / "server.log"

    @property
    def datastore_dir(self) -> Path:
        return self.datastore or self.server_dir / "db"

    @property
    def argv(self) -> List[str]:
        argv = [sys.executable, str(K3S_BIN), "server", "--data-dir", str(self.data_dir)]
        argv += ["--https-listen-port", str(self.port), "--config", str(self.config_file)]
        if self.datastore:
            argv += ["--datastore", str(self.datastore)]
        if self.node_name:
            argv += ["--node-name", self.node_name]
        return argv + self.extra_args

    @property
    def pid(self) -> Optional[int]:
        pid = read_pid(str(self.data_dir))
        if pid is not None and alive(pid):
            return pid
        for proc in self._procs:
            if proc.poll() is None:
                return proc.pid
        return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lifecycle(self) -> List[Dict[str, Any]]:
        """The server's own records (start, ready, stopping, stopped) with precise times, oldest first."""
        try:
            text = (self.emulator_dir / "lifecycle.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def objects(self) -> Dict[str, Any]:
        """The Nodes and Leases of its datastore (k3semu/objects.py): {"nodes": {...}, "leases": {...}}."""
        return _objects.read_all(str(self.datastore_dir))

    def restart_command(self, timeout: float = 60) -> List[str]:
        """argv for k3srotd's `restart-command` (run it with `subprocess_env()` on PATH)."""
        return [str(K3S_RESTART_BIN), "--data-dir", str(self.data_dir), "--timeout", f"{timeout:g}"]

    # ----- lifecycle
    def start(self, wait: bool = True, timeout: float = 30) -> EmulatedServer:
        self.emulator_dir.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text("")
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=subprocess_env(self.env),
                cwd=str(self.emulator_dir),
            )
        self._procs.append(proc)
        if self not in _RUNNING:
            _RUNNING.append(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def client(self) -> KubeClient:
        return KubeClient(str(self.kubeconfig))

    def is_ready(self) -> bool:
        try:
            return self.client().ready(timeout=1.0)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: kubeconfig half-written
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            if self.pid is None:
                raise ServerError(f"k3s server for {self.data_dir} exited during start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise ServerError(f"k3s server for {self.data_dir} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process this harness started last to exit (e.g. a fatal start); its exit status."""
        if not self._procs:
            raise ServerError("no process started by this harness")
        try:
            return self._procs[-1].wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"k3s server for {self.data_dir} still running after {timeout}s") from exc

    def _signal_all(self, sig: int) -> List[int]:
        pids = set()
        pid = read_pid(str(self.data_dir))
        if pid is not None and alive(pid) and is_server_of(pid, str(self.data_dir)):
            pids.add(pid)
        pids.update(p.pid for p in self._procs if p.poll() is None)
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        return sorted(pids)

    def _wait_gone(self, pids: Sequence[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self._procs:
                proc.poll()
            if not any(alive(p) for p in pids):
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10) -> None:
        pids = self._signal_all(signal.SIGTERM)
        if not self._wait_gone(pids, timeout):
            self.kill()
        for proc in self._procs:
            proc.poll()
        self._procs = [p for p in self._procs if p.returncode is None]

    def kill(self) -> None:
        pids = self._signal_all(signal.SIGKILL)
        self._wait_gone(pids, 10)
        for proc in self._procs:
            proc.poll()

    def restart(self, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Restart through bin/k3s-restart (as k3srotd's restart-command would)."""
        if self not in _RUNNING:
            _RUNNING.append(self)
        result = subprocess.run(
            [sys.executable, *self.restart_command(timeout)],
            env=subprocess_env(self.env),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        for proc in self._procs:
            proc.poll()
        if check and result.returncode != 0:
            raise ServerError(f"k3s-restart failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def __enter__(self) -> EmulatedServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- faults
    def set_faults(self, faults: Dict[str, Any]) -> None:
        """Replace <data-dir>/emulator/faults.json (see k3semu/faults.py for the format)."""
        self.emulator_dir.mkdir(parents=True, exist_ok=True)
        _faults.set_all(str(self.data_dir), faults)

    def clear_faults(self) -> None:
        self.set_faults({})

    def faults(self) -> Dict[str, Any]:
        return _faults.read_all(str(self.data_dir))

    # ----- the API
    def jwks(self) -> Dict[str, Any]:
        return dict(self.client().json("GET", "/openid/v1/jwks"))

    def jwks_kids(self) -> List[str]:
        return [k["kid"] for k in self.jwks()["keys"]]

    def openid_configuration(self) -> Dict[str, Any]:
        return dict(self.client().json("GET", "/.well-known/openid-configuration"))

    def request_token(
        self, namespace: str, name: str, audiences: Optional[List[str]] = None, expiration_seconds: Optional[int] = None
    ) -> str:
        """A token for namespace/name, creating the ServiceAccount first if it is missing (as a user would:
        TokenRequest for a missing ServiceAccount is 404)."""
        self.ensure_service_account(namespace, name)
        spec: Dict[str, Any] = {}
        if audiences:
            spec["audiences"] = audiences
        if expiration_seconds:
            spec["expirationSeconds"] = expiration_seconds
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        doc = self.client().json("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(doc["status"]["token"])

    def ensure_service_account(self, namespace: str, name: str) -> Dict[str, Any]:
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
        status, _, data = self.client().request("GET", f"{path}/{name}")
        if status == 200:
            return dict(json.loads(data))
        status, _, data = self.client().request("POST", path, {"metadata": {"name": name}})
        if status not in (201, 409):
            raise ServerError(f"POST {path}: HTTP {status}: {data.decode(errors='replace')}")
        return dict(self.client().json("GET", f"{path}/{name}"))

    def review_token(self, token: str, audiences: Optional[List[str]] = None) -> Dict[str, Any]:
        spec: Dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        return dict(self.client().json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)["status"])

    def signer_kid(self) -> str:
        """kid of the key that signs new tokens (from a fresh TokenRequest's header)."""
        return token_kid(self.request_token("default", "default"))

    # ----- workload identity (k3semu/identity.py)
    def add_token_uses(self, **by: float) -> Dict[str, float]:
        """Raise /metrics counters, e.g. add_token_uses(stale=3, legacy=1): the short names drop the
        `serviceaccount_` prefix and `_total`/`_token_uses_total` suffix. Returns the counters after."""
        short = {
            n.replace("serviceaccount_", "").replace("_token_uses_total", "").replace("_tokens_total", ""): n
            for n in _identity.COUNTERS
        }
        return _identity.add_counters(str(self.data_dir), {short.get(k, k): v for k, v in by.items()})

    def metrics_text(self) -> str:
        status, _, data = self.client().request("GET", "/metrics")
        if status != 200:
            raise ServerError(f"/metrics: HTTP {status}")
        return data.decode()

    def service_account(self, namespace: str, name: str) -> Optional[Dict[str, Any]]:
        status, _, data = self.client().request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        return dict(json.loads(data)) if status == 200 else None

    # ----- files and commands
    def disk_kids(self) -> List[str]:
        return [kid_of(k) for k in public_keys(self.service_key.read_bytes())]

    def datastore_files(self) -> Dict[str, File]:
        ds = Datastore(str(self.datastore_dir))
        with ds.locked(exclusive=False):
            return ds.read() or {}

    def datastore_kids(self) -> List[str]:
        return [kid_of(k) for k in public_keys(self.datastore_files()["ServiceKey"].content)]

    def k3s(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `k3s <args>` (the emulator CLI) with the test environment."""
        return subprocess.run(
            [sys.executable, str(K3S_BIN), *args],
            env=subprocess_env(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def rotate_ca(self, path: PathLike, force: bool = False) -> subprocess.CompletedProcess:
        args = ["certificate", "rotate-ca", f"--path={path}", "--data-dir", str(self.data_dir), "--server", self.url]
        return self.k3s(*(args + (["--force"] if force else [])))


def token_kid(token: str) -> str:
    header = json.loads(_keys.b64url_decode(token.split(".")[0]))
    return str(header["kid"])


def stop_all() -> None:
    while _RUNNING:
        srv = _RUNNING.pop()
        try:
            srv.stop()
        except Exception as exc:  # teardown must go on with the others
            print(f"k3semu: could not stop {srv.data_dir}: {exc}", file=sys.stderr)


atexit.register(stop_all)

# EmulatedCluster lives in cluster.py (this module's size); importable from here as before
from .cluster import EmulatedCluster  # noqa: E402

__all__ = ["EmulatedCluster", "EmulatedServer", "kid_of", "public_keys", "subprocess_env", "token_kid"]
