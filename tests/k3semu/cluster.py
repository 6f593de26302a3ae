"""EmulatedCluster: n emulated servers sharing one datastore folder (see harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from .harness import EmulatedServer, PathLike
from .lb import LoadBalancer


class EmulatedCluster:
    """n servers on loopback sharing one datastore folder (etcd), each with its own data dir and port.

    join: None (every server reconciles from the datastore), "first" (servers 1.. have `--server` naming server 0,
    the init server) or "lb" (servers 1.. join through a LoadBalancer over all servers, `self.lb`).
    version: K3SEMU_VERSION for every server (it selects the join-URL bootstrap path, k3semu/join.py)."""

    def __init__(
        self,
        n: int,
        tmpdir: PathLike,
        config_file: Optional[PathLike] = None,
        join: Optional[str] = None,
        version: Optional[str] = None,
        extra_args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        base = Path(tmpdir)
        self.datastore = base / "datastore"
        env = dict(env or {}, **({"K3SEMU_VERSION": version} if version else {}))
        self.servers = [
            EmulatedServer(
                base / f"server-{i}",
                datastore=self.datastore,
                config_file=config_file,
                node_name=f"server-{i}",
                extra_args=extra_args,
                env=env,
            )
            for i in range(n)
        ]
        self.lb: Optional[LoadBalancer] = None
        if join == "lb":
            self.lb = LoadBalancer([s.port for s in self.servers])
        if join in ("first", "lb"):
            url = self.lb.url if self.lb else self.servers[0].url
            for srv in self.servers[1:]:
                srv.extra_args += ["--server", url]
        elif join is not None:
            raise ValueError(f"join must be None, 'first' or 'lb', not {join!r}")

    def start(self, timeout: float = 30) -> EmulatedCluster:
        for srv in self.servers:
            srv.start(wait=False)
        for srv in self.servers:
            srv.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for srv in self.servers:
            srv.stop()
        if self.lb is not None:
            self.lb.close()

    def __iter__(self) -> Iterator[EmulatedServer]:
        return iter(self.servers)

    def __getitem__(self, i: int) -> EmulatedServer:
        return self.servers[i]

    def __len__(self) -> int:
        return len(self.servers)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
