"""The manual commands: rotate-now, prune, rollback, and their dry runs."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Optional

import click

from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core import prune as core_prune
from k3srotd.core.clock import Clock
from k3srotd.core.durations import format_duration
from k3srotd.core.model import ts
from k3srotd.engine import session as engine
from k3srotd.errors import SafetyRefusal
from k3srotd.node.k3s import K3s

Confirm = Callable[[str], bool]


def _summary(live: keys.KeyFile, phase: str) -> str:
    return f"phase {phase}: {live.signer.kid} signs; keys in order: {', '.join(live.kids)}"


def _wait_until(clock: Clock, until: dt.datetime, what: str, progress: Any) -> None:
    start = clock.monotonic()
    while True:
        left = (until - clock.now()).total_seconds()
        if left <= 0:
            return
        if progress is not None:
            progress(f"{what}: {format_duration(dt.timedelta(seconds=left))} left", clock.monotonic() - start)
        clock.sleep(min(left, 1.0))


def rotate_now(
    cfg: Config,
    log: Any,
    events: Any,
    progress: Any,
    skip_publish_wait: bool,
    ignore_window: bool,
    clock: Optional[Clock] = None,
) -> None:
    clock = clock or Clock()
    from k3srotd.identity import gates

    gates.require_usable_issuer(cfg, K3s(cfg))  # verify-issuer true, no usable issuer: refused before any change
    with engine.Session(cfg, clock, log, events, progress) as s:
        if s.rolling is not None:  # multi-server: staged only; do this server's part, wait until in step
            s.rolling.ignore_window = ignore_window  # the other servers restart at once too
            if cfg.strategy == "direct":
                s.rolling.refuse_direct()
            s.rolling.wait_in_step(s.executor)
        data, live, obs = s.observe()
        if s.executor.resumed in (("promote", "finished"), ("rotate", "finished")):
            click.echo("finished the rotation an earlier k3srotd left; " + _summary(live, s.phase(live)))
            return
        if obs.adopted:
            raise SafetyRefusal(f"{obs.notes[0]}. Run rotate-now again to rotate from it")
        if s.phase(live) != planner.PUBLISHED:
            engine.require_window(cfg, clock.now(), "rotate-now", ignore_window)
            if cfg.strategy == "direct":
                live = s.rotate_direct(data, live)
                click.echo(_summary(live, s.phase(live)))
                return
            live = s.publish(data, live)
            click.echo(f"published {live.kids[-1]} (verify-only)")
        else:
            click.echo(f"continuing the rotation under way: {s.state.pending} is published")
        published_at = s.state.published_at or clock.now()
        if not skip_publish_wait:
            _wait_until(clock, published_at + cfg.publish_wait, "publish-wait before promote", progress)
        _await_promote_gate(s, cfg, clock, log, progress)
        engine.require_window(cfg, clock.now(), "promote", ignore_window)
        data, live, _ = s.read_live()
        # multi-server: another server's daemon may promote first; rotate-now then follows it
        live = s.promote(data, live) if s.rolling is None else s.rolling.promote_or_follow(s, data, live)
        click.echo(_summary(live, s.phase(live)))


def _await_promote_gate(s: engine.Session, cfg: Config, clock: Clock, log: Any, progress: Any) -> None:
    """Wait until the new key may sign (e.g. the public issuer lists it); the gate warns loudly past
    issuer-wait-warn and the wait goes on (Ctrl-C is safe: the key stays published)."""
    start = clock.monotonic()
    while True:
        reason = s.promote_gate()
        if reason is None:
            return
        if progress is not None:
            progress(f"before promote, waiting for: {reason}", clock.monotonic() - start)
        clock.sleep(cfg.issuer_poll.total_seconds())


def rotate_now_dry_run(cfg: Config, skip_publish_wait: bool, clock: Optional[Clock] = None) -> None:
    clock = clock or Clock()
    k3s = K3s(cfg)
    v = engine.view(cfg, clock, k3s)
    restart = " ".join(cfg.restart_command)
    rotate_ca = " ".join(k3s.rotate_ca_argv())
    click.echo(f"now: {_summary(v.live, v.phase)}")
    new = f"<new RSA-{cfg.key_size} key>"
    if v.phase != planner.PUBLISHED:
        if cfg.strategy == "direct":
            from k3srotd.cluster import rollplan

            known = rollplan.Book(cfg.state_dir).servers()
            if len(known) > 1:  # what rotate-now would say; the dry run asks the cluster nothing
                raise rollplan.direct_refused(known)
            order = [new, *v.live.kids]
            click.echo(f"would rotate (direct): stage {', '.join(order)}; run {rotate_ca}; run {restart}; verify")
            return
        click.echo(f"would publish: stage {', '.join([*v.live.kids, new])}; run {rotate_ca}; run {restart}; verify")
        pending, kids, published_at = new, [*v.live.kids, new], v.now
    else:
        pending, kids = v.state.pending or "?", v.live.kids
        published_at = v.state.published_at or v.now
    when = "at once" if skip_publish_wait else f"not before {ts(published_at + cfg.publish_wait)}"
    order = [pending, *(k for k in kids if k != pending)]
    click.echo(f"would promote {when}: stage {', '.join(order)}; run {rotate_ca}; run {restart}; verify")
    click.echo("dry run: nothing was written, run or restarted")


def _prunable(cfg: Config, state: Any, live: keys.KeyFile, now: dt.datetime, force: bool) -> list[str]:
    return core_prune.due(planner.retired(state, live), cfg.grace_period, now, force)


def _refuse_grace(cfg: Config, state: Any, live: keys.KeyFile) -> SafetyRefusal:
    return SafetyRefusal(core_prune.grace_refusal(live.path, planner.retired(state, live), cfg.grace_period))


def prune(
    cfg: Config,
    log: Any,
    events: Any,
    progress: Any,
    force: bool,
    yes: bool,
    ignore_window: bool,
    confirm: Confirm,
    clock: Optional[Clock] = None,
) -> None:
    clock = clock or Clock()
    with engine.Session(cfg, clock, log, events, progress) as s:
        if s.rolling is not None:  # multi-server: do this server's part and wait until the cluster is in step
            s.rolling.ignore_window = ignore_window
            s.rolling.wait_in_step(s.executor)
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
        click.echo(f"pruned {', '.join(drop)}; " + _summary(live, s.phase(live)))


def prune_dry_run(cfg: Config, force: bool, clock: Optional[Clock] = None) -> None:
    clock = clock or Clock()
    v = engine.view(cfg, clock)
    if not planner.retired(v.state, v.live):
        click.echo("nothing to prune: no retired key is published")
        return
    drop = _prunable(cfg, v.state, v.live, v.now, force)
    if not drop:
        raise _refuse_grace(cfg, v.state, v.live)
    keep = planner.prune_order(v.live, drop)
    click.echo(f"would prune {', '.join(drop)}: stage {', '.join(keep)}; rotate-ca; restart; verify")
    click.echo("dry run: nothing was written, run or restarted")


def rollback(
    cfg: Config,
    log: Any,
    events: Any,
    progress: Any,
    yes: bool,
    ignore_window: bool,
    confirm: Confirm,
    clock: Optional[Clock] = None,
) -> None:
    clock = clock or Clock()
    with engine.Session(cfg, clock, log, events, progress, retry_failed_rollback=True) as s:
        if s.rolling is not None:
            s.rolling.ignore_window = ignore_window
        if s.executor.resumed == ("rollback", "finished"):
            _, live, _ = s.read_live()
            click.echo("finished the rollback an earlier k3srotd left; " + _summary(live, s.phase(live)))
            return
        intent = s.state.intent
        if intent is not None:  # a failed rollback, kept for a human: try it again
            live = s.executor.rollback_intent(f"manual retry of the rollback of {intent.step}")
            click.echo(_summary(live, s.phase(live)))
            return
        data, live, _ = s.observe()
        last = s.state.last_step
        if last is None:
            raise SafetyRefusal(f"{s.store.path}: records no completed step to roll back")
        if live.kids != last.target_kids:
            raise SafetyRefusal(
                f"{live.path}: the live key set is not the one the last step ({last.step}) left; it changed "
                "since. Refusing to roll back over it"
            )
        try:
            backup = s.executor.backups.read(last.backup, last.backup_sha256)
        except OSError:
            raise SafetyRefusal(f"{last.backup}: the backup of the last step is gone; cannot roll back") from None
        engine.require_window(cfg, clock.now(), "rollback", ignore_window)
        if not yes and not confirm(
            f"Put back the key set from before the {last.step} of {ts(last.completed_at)} "
            f"({', '.join(last.before_kids)}) and restart K3s?"
        ):
            raise click.exceptions.Abort()
        staged = s.executor.restore_bytes(backup)
        live = s.executor.run("rollback", data, live, staged)
        click.echo(_summary(live, s.phase(live)))
