"""`k3srotd status`: keys, roles, phase, and what happens next and when. Reads only; writes nothing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.durations import format_duration
from k3srotd.core.model import ts
from k3srotd.engine import session as engine
from k3srotd.node import trust


def snapshot(cfg: Config, clock: Clock) -> dict[str, Any]:
    """The status object of `status --json` (README)."""
    v = engine.view(cfg, clock)
    signer = v.live.signer.kid
    out_keys = []
    for i, b in enumerate(v.live.blocks):
        rec = v.state.keys.get(b.kid)
        retired = None if b.kid == signer or b.kid == v.state.pending or rec is None else rec.retired_at
        out_keys.append(
            {
                "position": i,
                "kid": b.kid,
                "role": "signer" if b.kid == signer else "verify",
                "algorithm": b.algorithm,
                "bits": b.bits,
                "retired_at": ts(retired),
            }
        )
    plan = v.next_plan(cfg)
    return {
        "phase": v.phase,
        "signer_kid": signer,
        "keys": out_keys,
        "last_rotation": ts(v.state.last_rotation),
        "next_action": None if plan is None else {"action": plan.action, "not_before": ts(plan.not_before)},
        # not in the JSON object, for the table only
        "_view": v,
    }


def _when(t: Optional[dt.datetime], now: dt.datetime) -> str:
    if t is None:
        return "-"
    delta = t - now
    rel = f"in {format_duration(delta)}" if delta.total_seconds() > 0 else f"{format_duration(-delta)} ago"
    return f"{ts(t)} ({rel})"


def render(cfg: Config, as_json: bool, clock: Clock, config_path: Optional[str] = None) -> str:
    snap = snapshot(cfg, clock)
    v: engine.View = snap.pop("_view")
    if as_json:
        return json.dumps(snap) + "\n"
    now = v.now
    rows = [
        ("phase", snap["phase"]),
        ("signer", snap["signer_kid"]),
        ("last rotation", _when(v.state.last_rotation, now)),
    ]
    plan = v.next_plan(cfg)
    if plan is not None:
        by = "" if cfg.automatic else f"; run `k3srotd {'prune' if plan.action == 'prune' else 'rotate-now'}`"
        rows.append(("next", f"{plan.action} {_when(plan.not_before, now)}{by}"))
        if plan.not_before != plan.due:
            rows.append(("", f"(due {ts(plan.due)}, held for the maintenance window)"))
    rows.append(_automatic_row(cfg, config_path))
    if v.state.intent is not None and v.state.intent.stage == "rolling":  # multi-server: waits for the others
        rows.append(
            (
                "rolling",
                f"{v.state.intent.step} since {_when(v.state.intent.started_at, now)}; done when "
                "every server runs it (below)",
            )
        )
    elif v.state.intent is not None:
        rows.append(
            (
                "interrupted",
                f"{v.state.intent.step} ({v.state.intent.stage}) since "
                f"{_when(v.state.intent.started_at, now)}; the next k3srotd run finishes or undoes it",
            )
        )
    if v.state.last_failure:
        f = v.state.last_failure
        rows.append(("last failure", f"{f.get('step')} at {f.get('at')}: {f.get('reason')}"))
    rows.extend(_identity_rows(cfg, v))
    servers: list[str] = []
    if (Path(cfg.state_dir) / "cluster.json").exists():  # multi-server (cluster/book.py): every server, the leases
        from k3srotd.cluster import book

        cluster_rows, servers = book.status(cfg, clock)
        rows.extend(cluster_rows)
    rows += [("note", note) for note in v.notes]
    rows += [("warning", w) for w in trust.live_report(cfg.live_key, v.live)]  # mode, link, weak RSA, ignored
    width = max(len(r[0]) for r in rows)
    lines = [f"{k.ljust(width)}  {val}" for k, val in rows]
    lines += ["", *_key_table(snap["keys"], v)]
    if servers:
        lines += ["", *servers]
    return "\n".join(lines) + "\n"


def _key_table(rows: list[dict[str, Any]], v: engine.View) -> list[str]:
    table = [("POS", "KID", "ROLE", "ALG", "BITS", "RETIRED")]
    for k in rows:
        rec = v.state.keys.get(k["kid"])
        role = k["role"] if k["kid"] != v.state.pending else "verify (published)"
        retired = _when(rec.retired_at if rec else None, v.now) if k["retired_at"] else "-"
        table.append((str(k["position"]), k["kid"], role, k["algorithm"], str(k["bits"]), retired))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]


def _automatic_row(cfg: Config, config_path: Optional[str]) -> tuple[str, str]:
    """Whether the daemon acts by itself, and, when it does not, how to opt in."""
    from k3srotd.core.schedule import opt_in_hint

    if cfg.automatic:
        return ("automatic", "on: the daemon starts the next step when it is due")
    return ("automatic", f"off: the daemon starts no rotation or prune by itself; {opt_in_hint(config_path)}")


def _identity_rows(cfg: Config, v: engine.View) -> list[tuple[str, str]]:
    """What promote or prune awaits and since when, the public issuer, the token evidence (identity/report.py)."""
    from k3srotd.core import planner
    from k3srotd.identity import report
    from k3srotd.node.k3s import K3s

    pending = v.state.pending if v.phase == planner.PUBLISHED else None
    return report.status_rows(cfg, K3s(cfg), pending, [kid for kid, _ in planner.retired(v.state, v.live)])
