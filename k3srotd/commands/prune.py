"""`k3srotd prune`: drop retired keys whose grace-period has passed (`--force`: before that), and its dry run."""

from __future__ import annotations

import datetime as dt
from typing import Optional

import click

from k3srotd.commands.common import Confirm, Manual, Stop, refuse_other_rotator, summary
from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core import prune as core_prune
from k3srotd.core.clock import Clock
from k3srotd.core.model import State
from k3srotd.engine import session as engine
from k3srotd.errors import SafetyRefusal
from k3srotd.node.k3s import K3s


def _prunable(cfg: Config, state: State, live: keys.KeyFile, now: dt.datetime, force: bool) -> list[str]:
    return core_prune.due(planner.retired(state, live), cfg.grace_period, now, force)


def _refuse_grace(cfg: Config, state: State, live: keys.KeyFile) -> SafetyRefusal:
    return SafetyRefusal(core_prune.grace_refusal(live.path, planner.retired(state, live), cfg.grace_period))


def prune(m: Manual, force: bool, yes: bool, ignore_window: bool, confirm: Confirm) -> None:
    cfg, clock = m.cfg, m.clock
    refuse_other_rotator(cfg, K3s(cfg), "prune")
    with Stop().around(m.session(ignore_window)) as s:
        s.catch_up()  # a cluster: this server's part of another server's step first
        data, live, obs = s.observe()
        if obs.adopted:
            raise SafetyRefusal(f"{obs.notes[0]}. Run prune again to prune from it")
        if not planner.retired(s.state, live):
            click.echo("nothing to prune: no retired key is published")
            return
        drop = _prunable(cfg, s.state, live, clock.now(), force)
        if not drop:
            raise _refuse_grace(cfg, s.state, live)
        if force and not yes:
            early = [k for k in drop if k not in _prunable(cfg, s.state, live, clock.now(), False)]
            if early and not confirm(
                f"Drop {len(early)} key(s) before their grace-period? Tokens they signed stop working"
            ):
                raise click.exceptions.Abort()
        if not force:
            reason = s.prune_gate(tuple(drop))
            if reason is not None:
                raise SafetyRefusal(f"prune delayed: {reason}. `prune --force` overrides")
        engine.require_window(cfg, clock.now(), "prune", ignore_window)
        live = s.prune(data, live, tuple(drop))
        click.echo(f"pruned {', '.join(drop)}; " + summary(live, s.phase(live)))


def prune_dry_run(cfg: Config, force: bool, clock: Optional[Clock] = None) -> None:
    clock = clock or Clock()
    v = engine.view(cfg, clock)
    if not planner.retired(v.state, v.live):
        click.echo("nothing to prune: no retired key is published")
        return
    drop = _prunable(cfg, v.state, v.live, v.now, force)
    if not drop:
        raise _refuse_grace(cfg, v.state, v.live)
    keep = planner.prune_order(v.live.kids, drop)
    click.echo(f"would prune {', '.join(drop)}: stage {', '.join(keep)}; rotate-ca; restart; verify")
    click.echo("dry run: nothing was written, run or restarted")
