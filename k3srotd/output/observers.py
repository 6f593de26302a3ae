"""After every completed or failed step: run the hooks, then rewrite the metrics file.

Both are best effort: a failing hook or an unwritable metrics file is logged and never fails the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from k3srotd.config import Config
from k3srotd.core.clock import Clock
from k3srotd.core.model import parse_ts
from k3srotd.core.ports import Log

if TYPE_CHECKING:  # metrics is imported where used
    from k3srotd.output.metrics import MetricsSnapshot

HOOK_TIMEOUT = 60.0


def snapshot(cfg: Config, clock: Clock) -> MetricsSnapshot:
    """The metrics as the state file and the live key file say now."""
    from k3srotd.core import planner
    from k3srotd.engine import session as engine
    from k3srotd.output import metrics

    v = engine.view(cfg, clock)
    since = planner.signer_since(v.state, v.live, v.live_mtime)
    plan = v.next_plan(cfg)
    return metrics.MetricsSnapshot(
        phase=v.phase,
        signer_key_age_seconds=max(0.0, (v.now - since).total_seconds()),
        keys={"signer": 1, "verify": len(v.live.kids) - 1},
        last_success={
            step: t.timestamp()
            for step, s in v.state.last_success.items()
            if step in metrics.STEPS and (t := parse_ts(s)) is not None
        },
        failures={step: v.state.failures.get(step, 0) for step in metrics.STEPS},
        next_action={} if plan is None else {plan.action: plan.not_before.timestamp()},
    )


def write_metrics(cfg: Config, log: Log, clock: Clock) -> None:
    if not cfg.metrics_file:
        return
    from k3srotd.errors import K3srotdError
    from k3srotd.output import metrics

    try:
        metrics.write_metrics(cfg.metrics_file, snapshot(cfg, clock))
    except (OSError, K3srotdError) as e:
        log.warning("metrics.failed", msg=f"{cfg.metrics_file}: cannot write metrics: {e}")


def make_events(cfg: Config, log: Log, clock: Clock) -> Callable[[str, str, Sequence[str], str], None]:
    def on_event(event: str, signer_kid: str, kids: Sequence[str], phase: str) -> None:
        from pathlib import Path

        from k3srotd.output import hooks

        try:
            hooks.run_hooks(Path(cfg.hooks_dir), event, signer_kid, list(kids), phase, HOOK_TIMEOUT, log)
        except Exception as e:  # noqa: BLE001 - a hook never fails the step it reports on
            log.warning("hook.failed", msg=f"{cfg.hooks_dir}: hooks could not run: {type(e).__name__}: {e}")
        write_metrics(cfg, log, clock)

    return on_event
