"""`k3srotd doctor`: preflight checks, one PASS/WARN/FAIL/SKIP line each. Reads and asks; changes nothing.

The checks and what each needs are listed in `checks()`; commands/checks.py runs them (one FAIL per root cause),
commands/doctor_host.py looks at the host's K3s process and restart-command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Optional

from k3srotd.commands import doctor_host
from k3srotd.commands.checks import FAIL, PASS, SKIP, WARN, Check, Outcome, Verdict, run_checks
from k3srotd.config import Config
from k3srotd.core import keys, schedule, versions
from k3srotd.core.clock import Clock
from k3srotd.core.model import ts
from k3srotd.errors import K3srotdError
from k3srotd.node import runner, trust
from k3srotd.node.files import Staging
from k3srotd.node.k3s import K3s
from k3srotd.node.kubeapi import APIError

BIN, NODE, RUNNING, LIVE, API = "k3s-bin", "K3s server node", "K3s running", "live service.key", "API"


def version(cfg: Config) -> Verdict:
    res = runner.run([cfg.k3s_bin, "--version"], timeout=20)
    v = versions.parse(res.stdout + res.stderr) if res.ok else None
    if v is None:
        return SKIP, f"K3s version: `{cfg.k3s_bin} --version` gave no version ({res.tail(1) or 'no output'})"
    level, text = versions.check(v)
    return level, f"K3s version: {text}"


def rehearsal_verdict(record: Optional[Mapping[str, str]], running: Optional[str]) -> Verdict:
    """PASS once a rehearsal has passed on this node against the K3s release it runs now; WARN before the first,
    and again after each K3s upgrade (a new release may restart or reconcile differently)."""
    how = "run `k3srotd rehearse` in a maintenance window before the first real step"
    if not record or not record.get("at"):
        return WARN, f"rehearsal: none has passed on this node; {how}"
    ran = record.get("k3s_version") or "unknown"
    if running is not None and ran != running:
        return WARN, f"rehearsal: the last one ({record['at']}) ran on K3s {ran}, this node runs {running}; {how}"
    return PASS, f"rehearsal: passed at {record['at']} on K3s {ran}"


def rehearsal(cfg: Config, k3s: K3s) -> Verdict:
    from k3srotd.node.store import Store

    try:
        record = Store(cfg.state_dir).load_readonly().rehearsed
    except (K3srotdError, OSError) as e:
        return SKIP, f"rehearsal: the state cannot be read ({e})"
    return rehearsal_verdict(record, k3s.version())


def automatic(cfg: Config, clock: Clock, config_path: Optional[str]) -> Verdict:
    """What the daemon will do by itself: with the opt-in, the next step and when; without it, that it starts
    none, what would be due and when, and how to opt in. Either is a choice, not a fault."""
    from k3srotd.engine import session as engine

    try:
        v = engine.view(cfg, clock)
        plan = v.next_plan(cfg)
        nxt = "" if plan is None else f"{plan.action} is due at {ts(plan.not_before)}"
    except K3srotdError:
        nxt = ""
    if cfg.automatic:
        return PASS, "automatic: on; the daemon starts rotations and prunes" + (f" ({nxt})" if nxt else "")
    would = f"; {nxt} and waits for an operator" if nxt else ""
    return PASS, (
        f"automatic: off (the default); the daemon starts no rotation or prune by itself{would}; "
        f"{schedule.opt_in_hint(config_path)}"
    )


def other_rotator(cfg: Config, k3s: K3s) -> Verdict:
    from k3srotd.node import keymanager

    if not cfg.verify_api:
        return SKIP, "other rotators: verify-api is false, the cluster is not asked"
    try:
        found = keymanager.detect(k3s.api())
    except (APIError, K3srotdError) as e:
        return FAIL, f"other rotators: the cluster cannot say whether another rotator is installed: {e}"
    if found is not None:
        return FAIL, f"other rotators: {found}"
    return PASS, "other rotators: Microsoft's Key Manager for Kubernetes extension is not installed"


def binary(cfg: Config) -> Verdict:
    if os.access(cfg.k3s_bin, os.X_OK):
        return PASS, f"k3s-bin: {cfg.k3s_bin}"
    return FAIL, f"k3s-bin: {cfg.k3s_bin} is missing or not executable; install K3s or set k3s-bin"


def server_node(cfg: Config, k3s: K3s) -> Verdict:
    server = Path(cfg.k3s_data_dir) / "server"
    if k3s.is_server_node():
        return PASS, f"K3s server node: {server} exists"
    return FAIL, (
        f"K3s server node: {server} does not exist; not a K3s server (agent or no K3s); k3srotd runs on "
        "servers only, or set k3s-data-dir"
    )


def node_checks(cfg: Config, k3s: K3s, levels: Mapping[str, str]) -> list[Check]:
    live: dict[str, keys.KeyFile] = {}

    def keyfile() -> Verdict:
        try:
            kf = keys.parse(k3s.live_bytes(), str(k3s.live_path))
        except K3srotdError as e:
            return FAIL, f"live service.key: {e}"
        live["kf"] = kf
        extra = f"; {len(kf.duplicates)} duplicate block(s)" if kf.duplicates else ""
        findings = trust.live_report(k3s.live_path, kf)  # mode, symlink, weak RSA, blocks kube-apiserver ignores
        if findings:
            return WARN, f"live service.key: {'; '.join(findings)}"
        return PASS, f"live service.key: {len(kf.kids)} key(s), signer {kf.signer.kid}{extra}"

    def current() -> Verdict:
        cur = k3s.current_kid()
        if cur is None:
            return WARN, f"signing key: {cfg.current_key} unreadable"
        if cur != live["kf"].signer.kid:
            return WARN, (
                f"signing key: {cfg.current_key} holds {cur}, not the first key of service.key; "
                "K3s has not restarted since service.key changed"
            )
        return PASS, "signing key: service.current.key is the first key of service.key"

    def api() -> Verdict:
        if not cfg.verify_api:
            return WARN, "API: verify-api is false; restarts are checked by files and process only"
        a = k3s.api()
        try:
            if not a.readyz():
                return FAIL, f"API: {cfg.k3s_server_url}/readyz is not ok"
            kids = a.jwks_kids()
        except (APIError, K3srotdError) as e:
            return FAIL, f"API: {e}"
        if "kf" in live and list(dict.fromkeys(kids)) != live["kf"].kids:
            return WARN, "API: the JWKS does not list the live keys in order; K3s has not restarted since"
        return PASS, f"API: /readyz ok, JWKS lists {len(kids)} key(s)"

    return [
        Check(BIN, lambda: binary(cfg)),
        Check(NODE, lambda: server_node(cfg, k3s), (BIN,)),
        Check(RUNNING, lambda: doctor_host.k3s_process(cfg.k3s_bin, cfg.k3s_data_dir), (NODE,)),
        Check("K3s version", lambda: version(cfg), (BIN,)),
        Check(LIVE, keyfile, (NODE,)),
        Check("signing key", current, (LIVE,)),
        Check(
            "restart-command",
            lambda: doctor_host.restart_command(cfg.restart_command, levels.get(RUNNING) == PASS),
            (BIN,),
        ),
        Check(API, api, (RUNNING,)),
        Check("rehearsal", lambda: rehearsal(cfg, k3s), (BIN,)),
    ]


def local_checks(cfg: Config) -> list[Check]:
    def state_dir() -> Verdict:
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

    def staging() -> Verdict:
        st = Staging(cfg.staging_dir)
        try:
            st.check()
        except K3srotdError as e:
            return FAIL, f"staging-dir: {e}"
        if st.key.exists():
            return WARN, f"staging-dir: {st.key} exists (left by an interrupted step, or by hand)"
        return PASS, f"staging-dir: {cfg.staging_dir}"

    def tokens() -> Verdict:
        from k3srotd.identity import report

        return report.bound_check(cfg, K3s(cfg), Clock().now())

    return [Check("state-dir", state_dir), Check("staging-dir", staging), Check("token lifetime", tokens)]


def identity_checks(cfg: Config, k3s: K3s, clock: Clock) -> list[Check]:
    """The public issuer reachable and consistent with the cluster, the legacy-token Secrets (identity/report.py)."""
    from k3srotd.identity import report

    names = {"public_issuer": "public issuer", "consistent": "public issuer consistency"}
    found: list[Callable[[], Verdict]] = report.doctor_checks(cfg, k3s, clock.now)
    return [Check(names.get(f.__name__, f.__name__.replace("_", " ")), f, (API,)) for f in found]


def ownership_checks(cfg: Config) -> list[Check]:
    """One FAIL per path root trusts that someone else could change (node/trust.py), else one PASS."""
    found = trust.problems(cfg)
    if not found:
        return [Check("ownership", lambda: (PASS, "ownership: every path root trusts is root's, writable by no other"))]
    return [Check(f"ownership {p.path}", lambda p=p: (FAIL, f"ownership: {p.line()}")) for p in found]  # type: ignore[misc]


def _servers(cfg: Config, k3s: K3s, clock: Clock) -> Verdict:
    from k3srotd.cluster import book

    level, text = book.doctor(cfg, k3s, clock)
    return {"PASS": PASS, "FAIL": FAIL}.get(level, SKIP), text


def checks(cfg: Config, outcome: Outcome, clock: Clock, config_path: Optional[str] = None) -> list[Check]:
    k3s = K3s(cfg)
    sources = ", ".join(cfg.sources) if cfg.sources else "no file, all defaults"
    return [
        Check("config", lambda: (PASS, f"config: {sources}")),
        *ownership_checks(cfg),
        Check("automatic", lambda: automatic(cfg, clock, config_path)),
        *node_checks(cfg, k3s, outcome.levels),
        *local_checks(cfg),
        Check("other rotators", lambda: other_rotator(cfg, k3s), (API,)),
        Check("servers", lambda: _servers(cfg, k3s, clock), (API,)),
        *identity_checks(cfg, k3s, clock),
    ]


def run(cfg: Config, clock: Clock, config_path: Optional[str] = None) -> tuple[list[str], bool]:
    outcome = Outcome([], False, {})
    run_checks(checks(cfg, outcome, clock, config_path), outcome)
    return outcome.lines, outcome.failed
