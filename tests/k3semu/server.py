"""`k3s server`: bootstrap against the datastore, write the runtime files, then serve HTTPS until SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

from . import VERSION, api, apiserverid, bootstrap, deps, faults, flags, identity, join, keys, log, nodes

FLAGS = [
    flags.Flag("data-dir", ("d",), default="/var/lib/rancher/k3s", env="K3S_DATA_DIR"),
    flags.Flag("https-listen-port", kind="int", default=6443),
    flags.Flag("datastore", ("datastore-endpoint",), env="K3S_DATASTORE_ENDPOINT"),
    flags.Flag("node-name", env="K3S_NODE_NAME"),
    flags.Flag("write-kubeconfig", ("o",), env="K3S_KUBECONFIG_OUTPUT"),
    flags.Flag("write-kubeconfig-mode", env="K3S_KUBECONFIG_MODE"),
    flags.Flag("config", ("c",), default="/etc/rancher/k3s/config.yaml", env="K3S_CONFIG_FILE"),
    flags.Flag("kube-apiserver-arg", kind="slice"),
    flags.Flag("token", ("t",), env="K3S_TOKEN"),
    flags.Flag("debug", kind="bool", default=False, env="K3S_DEBUG"),
    flags.Flag("server", ("s",), env="K3S_URL"),  # the join URL (pkg/cli/cmds/server.go ServerURL)
    flags.Flag("cluster-init", kind="bool", default=False, env="K3S_CLUSTER_INIT"),
    flags.Flag("disable-agent", kind="bool", default=False),
    flags.Flag("kube-controller-manager-arg", kind="slice"),
    flags.Flag("kubelet-arg", kind="slice"),
]
MAX_EXPIRATION_BOUNDS = (3600, 1 << 32)  # pkg/kubeapiserver/options/authentication.go Validate
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_AUDIENCES = ["https://kubernetes.default.svc.cluster.local", "k3s"]


def parse_duration(text: str) -> int:
    """Seconds of a Go duration such as 24h, 1h30m, 90s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f'time: invalid duration "{text}"')
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return int(sum(float(n) * scale[u] for n, u in parts))


def apiserver_args(entries: List[str]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for entry in entries:
        key, _, value = entry.lstrip("-").partition("=")
        out.setdefault(key, []).append(value)
    return out


def sd_notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class _Stop(Exception):
    pass


def lifecycle(data_dir: str, event: str) -> None:
    """One line in <data-dir>/emulator/lifecycle.jsonl with a precise time (the log has whole seconds), so tests
    can tell from a server's own records when it was down: start, ready, stopping, stopped."""
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.time()})
    with open(os.path.join(data_dir, "emulator", "lifecycle.jsonl"), "a") as f:
        f.write(line + "\n")


def run(args: List[str]) -> int:
    try:
        values, _, given = flags.parse(FLAGS, args)
        config_path = os.path.expanduser(values["config"])
        config, config_files = flags.load_config(
            config_path, "config" in given or bool(os.environ.get("K3S_CONFIG_FILE"))
        )
        flags.apply_config(FLAGS, values, given, config)
    except (flags.UsageError, OSError, ValueError) as exc:
        log.fatal(str(exc))

    data_dir = os.path.abspath(os.path.expanduser(values["data-dir"]))
    server_dir = os.path.join(data_dir, "server")
    emu_dir = os.path.join(data_dir, "emulator")
    port = int(values["https-listen-port"])
    url = f"https://127.0.0.1:{port}"
    kubeconfig = values["write-kubeconfig"] or os.path.join(server_dir, "cred", "admin.kubeconfig")
    kubeconfig = os.path.abspath(os.path.expanduser(kubeconfig))
    os.makedirs(emu_dir, exist_ok=True)
    pid_path = os.path.join(emu_dir, "server.pid")
    with open(pid_path, "w") as f:
        f.write(f"{os.getpid()}\n")
    lifecycle(data_dir, "start")
    _write_json(
        os.path.join(emu_dir, "argv.json"),
        {
            "argv": [os.path.abspath(sys.argv[0]), *sys.argv[1:]],
            "python": sys.executable,
            "cwd": os.getcwd(),
            "data_dir": data_dir,
            "port": port,
            "url": url,
            "kubeconfig": kubeconfig,
        },
    )

    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if not serving.is_set():
            raise _Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _serve(values, config_files, data_dir, server_dir, port, url, kubeconfig, stop, serving)
    except _Stop:
        log.info("Shutting down k3s (signal received during start)")
        return 0
    finally:
        lifecycle(data_dir, "stopped")
        try:
            with open(pid_path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_path)
        except OSError:
            pass


def _serve(
    values: Dict[str, Any],
    config_files: List[str],
    data_dir: str,
    server_dir: str,
    port: int,
    url: str,
    kubeconfig: str,
    stop: threading.Event,
    serving: threading.Event,
) -> int:
    log.info(f"Starting k3s {VERSION} (emulator)")
    for name in config_files:
        log.info(f"Using config file {name}")
    store_dir = values["datastore"] or os.path.join(server_dir, "db")
    store_dir = os.path.abspath(os.path.expanduser(store_dir.replace("file://", "", 1)))
    datastore = bootstrap.Datastore(store_dir)
    remote = _http_bootstrap(values, server_dir)

    with datastore.locked():
        try:
            data = datastore.read()
        except ValueError as exc:
            log.fatal(f"failed to read bootstrap data from datastore: {exc}")
        if (remote or data) and faults.take(data_dir, "start_stale") is not None:
            log.info("fault start_stale: this start keeps the key set on its own disk")  # like K3s < #11844
        elif remote:
            bootstrap.reconcile(remote, server_dir)
            log.info("Successfully reconciled with remote datastore")
        elif data:
            bootstrap.reconcile(data, server_dir)
        deps.gen_bootstrap_files(server_dir, values["token"])
        if not data:
            log.info("Saving cluster bootstrap data to datastore")
            datastore.write(bootstrap.read_from_disk(bootstrap.paths(server_dir)))

    if faults.take(data_dir, "crash_at_start") is not None:
        log.fatal(
            "Error: failed to start kube-apiserver: emulated crash at start "
            "(fault crash_at_start, like K3s issue #11014)"
        )
    spec = faults.take(data_dir, "no_come_back")
    if spec is not None:
        if spec.get("mode") == "exit":
            log.fatal("Error: failed to start kube-apiserver: emulated (fault no_come_back, mode exit)")
        log.info("fault no_come_back: this server will never serve")
        while not stop.wait(3600):
            pass
        return 0
    spec = faults.take(data_dir, "slow_start")
    if spec is not None:
        seconds = float(spec.get("seconds", 5))
        log.info(f"fault slow_start: waiting {seconds:g}s before serving")
        if stop.wait(seconds):
            return 0

    api_args = apiserver_args(values["kube-apiserver-arg"])
    try:
        password = deps.server_password(server_dir)
        signer = deps.write_current_key(server_dir)
        with open(os.path.join(server_dir, "tls", "service.key"), "rb") as f:
            public_keys = keys.public_keys(f.read())
        deps.write_token(server_dir, password)
        chain, admin_key = deps.ensure_admin_cert(server_dir)
        with open(os.path.join(server_dir, "tls", "server-ca.crt"), "rb") as f:
            server_ca = f.read()
        with open(os.path.join(server_dir, "tls", "client-ca.crt"), "rb") as f:
            client_ca = f.read()
        content = deps.kubeconfig_yaml(url, server_ca, chain, admin_key)
        mode = int(values["write-kubeconfig-mode"] or "600", 8)
        deps.write_kubeconfig(kubeconfig, content, mode)
        admin = os.path.join(server_dir, "cred", "admin.kubeconfig")
        if admin != kubeconfig:
            deps.write_kubeconfig(admin, content)
        crt, key = deps.write_serving_cert(server_dir)
        max_exp = api_args.get("service-account-max-token-expiration", [""])[-1]
        max_expiration = parse_duration(max_exp) if max_exp else None
        if max_expiration and not MAX_EXPIRATION_BOUNDS[0] <= max_expiration <= MAX_EXPIRATION_BOUNDS[1]:
            raise ValueError("the service-account-max-token-expiration must be between 1 hour and 2^32 seconds")
        keys.algorithm(signer.public_key())  # pkg/serviceaccount/jwt.go: the signer needs a JWT algorithm
        kcm = apiserver_args(values["kube-controller-manager-arg"])
        grace_arg = kcm.get("node-monitor-grace-period", [""])[-1]
        grace = float(parse_duration(grace_arg)) if grace_arg else nodes.DEFAULT_GRACE
        kubelet = apiserver_args(values["kubelet-arg"])
        node_lease = int((kubelet.get("node-lease-duration-seconds") or [nodes.DEFAULT_NODE_LEASE_SECONDS])[-1])
    except (OSError, ValueError) as exc:
        log.fatal(f"Error: failed to start kube-apiserver: {exc}")

    issuers = [i for i in api_args.get("service-account-issuer", []) if i] or [DEFAULT_ISSUER]
    audiences_arg = api_args.get("api-audiences", [""])[-1]
    audiences = [a for a in audiences_arg.split(",") if a] or list(DEFAULT_AUDIENCES)
    jwks_uri = api_args.get("service-account-jwks-uri", [""])[-1]
    if not jwks_uri:
        jwks_uri = f"https://{urlsplit(issuers[0]).netloc}/openid/v1/jwks"
    state = api.State(
        data_dir=data_dir,
        server_dir=server_dir,
        port=port,
        password=password,
        server_ca_pem=server_ca,
        public_keys=public_keys,
        signer=signer,
        issuers=issuers,
        api_audiences=audiences,
        max_expiration=max_expiration,
        datastore=datastore,
        error_style=os.environ.get("K3SEMU_ERROR_STYLE", "legacy"),
        jwks_uri=jwks_uri,
    )
    state.extra["started"] = time.time()  # /metrics: process_start_time_seconds; the counters start at 0
    state.extra["node_grace"] = grace
    identity.reset_counters(data_dir)
    identity.ensure_default_service_accounts(store_dir)
    node_name = values["node-name"] or socket.gethostname()
    if not values["disable-agent"]:  # only a server that runs an agent has a kubelet, hence a Node
        nodes.register_node(store_dir, node_name)
    _Heartbeats(store_dir, node_name, not values["disable-agent"], node_lease * nodes.RENEW_FRACTION, stop).start()
    httpd = _listen(state, crt, key, client_ca)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    serving.set()
    kids = ",".join(keys.kid_of(k) for k in public_keys)
    log.info(f"Running kube-apiserver --service-account-issuer={issuers[0]} --secure-port={port} (emulated)")
    log.info(f"Service account keys loaded: signer kid {keys.kid_of(signer.public_key())}; verifying kids {kids}")
    log.info("k3s is up and running")
    sd_notify("READY=1\nSTATUS=k3s is up and running")
    lifecycle(data_dir, "ready")
    while not stop.wait(1):
        pass
    lifecycle(data_dir, "stopping")
    log.info("Shutting down k3s")
    sd_notify("STOPPING=1")
    httpd.shutdown()
    httpd.server_close()
    return 0


def _http_bootstrap(values: Dict[str, Any], server_dir: str) -> Optional[bootstrap.Files]:
    """A server with a join URL that has already joined asks that URL first (pkg/cluster/bootstrap.go Bootstrap)."""
    join_url = values["server"]
    if not join_url or not os.path.exists(os.path.join(server_dir, "cred", "passwd")):
        return None
    try:
        password = deps.server_password(server_dir)
    except (OSError, ValueError):
        return None
    return join.fetch(join_url, password, server_dir)


class _Heartbeats(threading.Thread):
    """The kubelet's node Lease renewals and kube-apiserver's identity Lease controller and its garbage collector."""

    def __init__(self, store: str, node: str, agent: bool, node_every: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.store, self.node, self.agent, self.node_every, self.stop = store, node, agent, node_every, stop
        self.lease_cfg = apiserverid.settings()
        self.holder = apiserverid.holder_identity(node)

    def run(self) -> None:
        due = {"node": 0.0, "identity": 0.0, "gc": time.time() + self.lease_cfg["gc"]}
        while not self.stop.is_set():
            now = time.time()
            try:
                if self.agent and now >= due["node"]:
                    nodes.heartbeat(self.store, self.node)
                    due["node"] = now + self.node_every
                if now >= due["identity"]:
                    apiserverid.renew(self.store, self.node, self.holder, int(self.lease_cfg["duration"]), now)
                    due["identity"] = now + self.lease_cfg["renew"]
                if now >= due["gc"]:
                    for name in apiserverid.collect(self.store, now):
                        log.info(f"apiserverleasegc: deleted expired identity lease kube-system/{name}")
                    due["gc"] = now + self.lease_cfg["gc"]
            except OSError as exc:  # the store is a shared folder; try again at the next tick
                log.warn(f"lease renewal failed: {exc}")
            self.stop.wait(max(0.05, min(due.values()) - time.time()))


def _listen(state: api.State, crt: str, key: str, client_ca: bytes) -> api.HTTPSServer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=client_ca.decode())
    try:
        httpd = api.HTTPSServer(("127.0.0.1", state.port), api.Handler)
    except OSError as exc:
        log.fatal(f"listen tcp 127.0.0.1:{state.port}: bind: {(exc.strerror or str(exc)).lower()}")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    httpd.state = state  # type: ignore[attr-defined]
    return httpd
