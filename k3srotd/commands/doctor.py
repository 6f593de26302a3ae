"""`k3srotd doctor`: preflight checks, one PASS/WARN/FAIL line each. Reads and asks; changes nothing."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

from k3srotd.config import Config
from k3srotd.core import keys
from k3srotd.errors import K3srotdError
from k3srotd.node import runner
from k3srotd.node.files import Staging
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
Check = tuple[str, str]  # level, text

# rotate-ca exists from these; a service.key-only upload passes validation from the second set (FACTS.md).
ROTATE_CA_FLOOR = {(1, 26): 2, (1, 25): 7, (1, 24): 11, (1, 23): 17}
SERVICE_KEY_ONLY_FLOOR = {(1, 31): 1, (1, 30): 5, (1, 29): 9, (1, 28): 14}


def _version_check(cfg: Config) -> Check:
    res = runner.run([cfg.k3s_bin, "--version"], timeout=20)
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", res.stdout + res.stderr)
    if not res.ok or not m:
        return WARN, f"k3s version: `{cfg.k3s_bin} --version` gave no version; cannot check rotate-ca support"
    major, minor, patch = (int(x) for x in m.groups())
    v = f"v{major}.{minor}.{patch}"

    def at_least(table: dict[tuple[int, int], int]) -> bool:
        if (major, minor) in table:
            return patch >= table[(major, minor)]
        return (major, minor) > max(table)

    if not at_least(ROTATE_CA_FLOOR):
        return FAIL, f"k3s version: {v} has no `certificate rotate-ca`; upgrade K3s (v1.26.2 or newer)"
    if not at_least(SERVICE_KEY_ONLY_FLOOR):
        return WARN, (
            f"k3s version: {v} rejects a service.key-only rotate-ca on default CAs (K3s issue 10689); "
            "upgrade to v1.28.14/v1.29.9/v1.30.5/v1.31.1 or newer"
        )
    return PASS, f"k3s version: {v}"


def checks(cfg: Config) -> list[Callable[[], Check]]:
    k3s = K3s(cfg)
    live: dict[str, Optional[keys.KeyFile]] = {"kf": None}

    def config() -> Check:
        return PASS, "config: " + (", ".join(cfg.sources) if cfg.sources else "no file, all defaults")

    def binary() -> Check:
        if os.access(cfg.k3s_bin, os.X_OK):
            return PASS, f"k3s-bin: {cfg.k3s_bin}"
        return FAIL, f"k3s-bin: {cfg.k3s_bin} is missing or not executable; install K3s or set k3s-bin"

    def server_node() -> Check:
        if k3s.is_server_node():
            return PASS, f"K3s server node: {Path(cfg.k3s_data_dir) / 'server'} exists"
        return FAIL, (
            f"K3s server node: {Path(cfg.k3s_data_dir) / 'server'} does not exist; not a K3s server "
            "(agent or no K3s); k3srotd runs on servers only, or set k3s-data-dir"
        )

    def process() -> Check:
        p = k3s.server_process()
        if p is None:
            return FAIL, f"K3s running: no `k3s server` process for {cfg.k3s_data_dir}; start K3s"
        return PASS, f"K3s running: pid {p.pid}"

    def keyfile() -> Check:
        try:
            kf = keys.parse(k3s.live_bytes(), str(k3s.live_path))
        except K3srotdError as e:
            return FAIL, f"live service.key: {e}"
        live["kf"] = kf
        extra = f"; {len(kf.duplicates)} duplicate block(s)" if kf.duplicates else ""
        return PASS, f"live service.key: {len(kf.kids)} key(s), signer {kf.signer.kid}{extra}"

    def current() -> Check:
        kf = live["kf"]
        cur = k3s.current_kid()
        if kf is None or cur is None:
            return WARN, f"signing key: {cfg.current_key} unreadable"
        if cur != kf.signer.kid:
            return WARN, (
                f"signing key: {cfg.current_key} holds {cur}, not the first key of service.key; "
                "K3s has not restarted since service.key changed"
            )
        return PASS, "signing key: service.current.key is the first key of service.key"

    def state_dir() -> Check:
        d = Path(cfg.state_dir)
        if d.exists():
            if not os.access(d, os.W_OK):
                return FAIL, f"state-dir: {d} is not writable; run as root or set state-dir"
            if d.stat().st_mode & 0o077:
                return WARN, f"state-dir: {d} is readable by others (holds key backups); chmod 700 {d}"
            return PASS, f"state-dir: {d}"
        parent = d.parent
        while not parent.exists():
            parent = parent.parent
        if os.access(parent, os.W_OK):
            return PASS, f"state-dir: {d} (created at the first step)"
        return FAIL, f"state-dir: cannot create {d}; run as root or set state-dir"

    def staging() -> Check:
        st = Staging(cfg.staging_dir)
        try:
            st.check()
        except K3srotdError as e:
            return FAIL, f"staging-dir: {e}"
        if st.key.exists():
            return WARN, f"staging-dir: {st.key} exists (left by an interrupted step, or by hand)"
        return PASS, f"staging-dir: {cfg.staging_dir}"

    def restart() -> Check:
        exe = cfg.restart_command[0]
        if shutil.which(exe) or os.access(exe, os.X_OK):
            return PASS, f"restart-command: {' '.join(cfg.restart_command)}"
        return FAIL, f"restart-command: {exe} not found; set restart-command"

    def api() -> Check:
        if not cfg.verify_api:
            return WARN, "API: verify-api is false; restarts are checked by files and process only"
        a = k3s.api()
        try:
            if not a.readyz():
                return FAIL, f"API: {cfg.k3s_server_url}/readyz is not ok"
            kids = a.jwks_kids()
        except (APIError, K3srotdError) as e:
            return FAIL, f"API: {e}"
        kf = live["kf"]
        if kf is not None and list(dict.fromkeys(kids)) != kf.kids:
            return WARN, "API: the JWKS does not list the live keys in order; K3s has not restarted since"
        return PASS, f"API: /readyz ok, JWKS lists {len(kids)} key(s)"

    def tokens() -> Check:
        from k3srotd.core.clock import Clock
        from k3srotd.identity import report

        return report.bound_check(cfg, k3s, Clock().now())

    def version() -> Check:
        return _version_check(cfg)

    return [
        config,
        binary,
        server_node,
        process,
        keyfile,
        current,
        state_dir,
        staging,
        restart,
        api,
        tokens,
        *identity_checks(cfg, k3s),
        version,
    ]


def identity_checks(cfg: Config, k3s: K3s) -> list[Callable[[], Check]]:
    """The public issuer reachable and consistent with the cluster, the legacy-token Secrets (identity/report.py)."""
    from k3srotd.core.clock import Clock
    from k3srotd.identity import report

    return report.doctor_checks(cfg, k3s, Clock().now)


def run(cfg: Config) -> tuple[list[str], bool]:
    lines: list[str] = []
    failed = False
    for check in checks(cfg):
        level, text = check()
        failed = failed or level == FAIL
        lines.append(f"{level}  {text}")
    return lines, failed
