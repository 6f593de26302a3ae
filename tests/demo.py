"""What tests/demo runs: an emulated K3s server, then k3srotd's whole cycle against it, status in between."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k3semu.harness import K3S_BIN, EmulatedServer, subprocess_env


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="k3srotd-demo-"))
    server = EmulatedServer(root / "k3s")
    print(f"== starting an emulated K3s server in {root} (https://127.0.0.1:{server.port})")
    server.start()
    config = root / "k3srotd.yaml"
    config.write_text(
        f"k3s-bin: {K3S_BIN}\n"
        f"k3s-config: {root / 'k3s-config.yaml'}\n"
        f"k3s-data-dir: {server.data_dir}\n"
        f"k3s-server-url: {server.url}\n"
        f"kubeconfig: {server.kubeconfig}\n"
        f"restart-command: {server.restart_command()}\n"
        f"staging-dir: {root / 'opt-k3s'}\n"
        f"state-dir: {root / 'state'}\n"
        "publish-wait: 5s\ngrace-period: 5s\nlog-format: console\n"
        # a demo cannot wait out kube-apiserver's 1 h floor; a real config never sets this (every command warns)
        "unsafe-short-grace: true\n"
    )
    env = subprocess_env({})

    def k3srotd(*args: str) -> None:
        print(f"\n$ k3srotd {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", "k3srotd", "--config", str(config), *args], env=env, check=True)

    try:
        token = server.request_token("default", "demo-app")
        k3srotd("status")
        k3srotd("doctor")
        # publish the new key (verify-only), wait publish-wait, promote it to signer; status while it waits
        print("\n$ k3srotd rotate-now      (publish, wait publish-wait, promote; status meanwhile)", flush=True)
        rotate = subprocess.Popen([sys.executable, "-m", "k3srotd", "--config", str(config), "rotate-now"], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and rotate.poll() is None:
            phase = subprocess.run(
                [sys.executable, "-m", "k3srotd", "--config", str(config), "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if '"phase": "published"' in phase:
                k3srotd("status")
                break
            time.sleep(0.2)
        if rotate.wait(timeout=120) != 0:
            raise SystemExit("rotate-now failed")
        k3srotd("status")
        print(f"\n   a token minted before the rotation still verifies: {server.review_token(token)['authenticated']}")
        print("\n   waiting out the 5 s grace-period (1 h at least on a real cluster) ...", flush=True)
        time.sleep(5.5)
        k3srotd("prune")
        k3srotd("status")
        print(f"\n   that old token, its key pruned, now verifies: {server.review_token(token)['authenticated']}")
        print(f"\n== done; the JWKS K3s serves lists {server.jwks_kids()}")
    finally:
        server.stop()
        if not os.environ.get("K3SROTD_DEMO_KEEP"):
            subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
