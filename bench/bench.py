"""k3srotd's speed and footprint, measured side by side in one run: ratios against a baseline, or medians.

    python bench/bench.py            all figures
    python bench/bench.py startup    one group: startup | step | keys | daemon

Targets (issues 3 and 4): `--version` <= 1.25x `import click`; `status` <= 1.5x importing click, yaml and
cryptography's serialization; the engine's own time in a step < 50 ms; 1,000 keys parsed and composed < 1 s;
the idle daemon <= 45 MB RSS and <= 20 ms CPU per idle minute.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
PY = sys.executable


def wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - t


def paired(a: list[str], b: list[str], runs: int = 21, env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run A and B in turn; return (median ratio A/B pair by pair, median A, median B)."""
    wall(a, env), wall(b, env)  # warm the page cache
    ratios, ta, tb = [], [], []
    for _ in range(runs):
        x, y = wall(a, env), wall(b, env)
        ratios.append(x / y)
        ta.append(x)
        tb.append(y)
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def report(name: str, value: str, target: str, ok: bool) -> None:
    print(f"{name:<46} {value:<28} target {target:<12} {'ok' if ok else 'OVER'}")


def emulated_node(root: Path):  # type: ignore[no-untyped-def]
    from k3semu.harness import EmulatedServer
    from k3srotd_node import Node

    server = EmulatedServer(root / "k3s")
    server.start()
    return Node(root, server)


def bench_startup() -> None:
    r, a, b = paired([PY, "-m", "k3srotd", "--version"], [PY, "-c", "import click"])
    report("k3srotd --version / import click", f"{r:.2f}x ({a * 1000:.0f} vs {b * 1000:.0f} ms)", "<= 1.25x", r <= 1.25)
    with tempfile.TemporaryDirectory() as tmp:
        node = emulated_node(Path(tmp))
        try:
            node.ok("rotate-now")  # a status with two keys, a state file and a plan
            base = [PY, "-c", "import click, yaml; from cryptography.hazmat.primitives import serialization"]
            r, a, b = paired([PY, "-m", "k3srotd", "--config", str(node.config), "status"], base)
            report(
                "k3srotd status / import click+yaml+crypto",
                f"{r:.2f}x ({a * 1000:.0f} vs {b * 1000:.0f} ms)",
                "<= 1.5x",
                r <= 1.5,
            )
        finally:
            node.server.stop()


def bench_step() -> None:
    """The engine's own time in a step: all but rotate-ca, the restart and its wait, and key generation."""
    from k3srotd import config
    from k3srotd.commands import rotate_now as commands
    from k3srotd.commands.common import Manual
    from k3srotd.core import keys
    from k3srotd.engine.restart import Restarter
    from k3srotd.node.k3s import K3s
    from k3srotd.output import logs

    outside = {"t": 0.0}

    def timed(fn):  # type: ignore[no-untyped-def]
        def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                outside["t"] += time.perf_counter() - t

        return wrapper

    K3s.rotate_ca = timed(K3s.rotate_ca)  # type: ignore[method-assign]
    Restarter.restart_and_verify = timed(Restarter.restart_and_verify)  # type: ignore[method-assign]
    keys.generate = timed(keys.generate)  # type: ignore[assignment]
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        node = emulated_node(Path(tmp))
        try:
            cfg = config.load(str(node.config))
            log = logs.configure("json", stream=io.StringIO())
            for _ in range(5):
                outside["t"] = 0.0
                t = time.perf_counter()
                commands.rotate_now(Manual(cfg, log), True, False)  # publish + promote: two steps
                samples.append((time.perf_counter() - t - outside["t"]) / 2)
        finally:
            node.server.stop()
    m = statistics.median(samples)
    report("engine's own time per step (median of 10)", f"{m * 1000:.1f} ms", "< 50 ms", m < 0.05)


def bench_keys() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from k3srotd.core import keys

    # 1,000 distinct RSA keys (1024 bits to make them in seconds; parsing cost per key is alike)
    blocks = []
    for _ in range(1000):
        k = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - bench data only
        blocks.append(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
    data = b"".join(blocks)
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        kf = keys.parse(data, "service.key")
        order = [kf.kids[-1], *kf.kids[:-1]]
        keys.compose(kf, order)
        samples.append(time.perf_counter() - t)
    m = statistics.median(samples)
    report("1,000 keys parsed + composed (median of 5)", f"{m * 1000:.0f} ms", "< 1000 ms", m < 1.0)


def bench_daemon(seconds: float = 60.0) -> None:
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        node = emulated_node(Path(tmp))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(Path(tmp) / "notify"))
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(Path(tmp) / "notify"),
            WATCHDOG_USEC="120000000",
            PATH=f"{Path(PY).parent}:{os.environ['PATH']}",
        )
        proc = subprocess.Popen(
            [PY, "-m", "k3srotd", "--config", str(node.config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock.settimeout(30)
            while b"READY=1" not in sock.recv(4096):
                pass
            time.sleep(3)  # settle: the first tick is done
            p = psutil.Process(proc.pid)
            c0 = p.cpu_times()
            time.sleep(seconds)
            c1 = p.cpu_times()
            rss = p.memory_info().rss / 2**20
            cpu = ((c1.user + c1.system) - (c0.user + c0.system)) * 60.0 / seconds
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            node.server.stop()
    report("idle daemon RSS", f"{rss:.1f} MB", "<= 45 MB", rss <= 45)
    report("idle daemon CPU per minute (watchdog on)", f"{cpu * 1000:.1f} ms (10 ms ticks)", "<= 20 ms", cpu <= 0.020)


GROUPS = {"startup": bench_startup, "step": bench_step, "keys": bench_keys, "daemon": bench_daemon}

if __name__ == "__main__":
    import cryptography

    print(f"python {sys.version.split()[0]}, cryptography {cryptography.__version__}, {os.cpu_count()} cpus")
    # Byte-compiled first, as the packages are at install (dh-python, %py3_install): with PYTHONDONTWRITEBYTECODE
    # set, every run would otherwise compile k3srotd from source while the baseline's libraries load their .pyc.
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "k3srotd")], check=True)
    for name in sys.argv[1:] or list(GROUPS):
        GROUPS[name]()
