"""`k3srotd rotate-now`: the steps the planner names from here until the new key signs (staged: publish, the
publish-wait, the promote gate, promote; direct: rotate), and its dry run from the same plan."""

from __future__ import annotations

from typing import Optional

import click

from k3srotd.commands.common import Manual, Stop, refuse_other_rotator, summary, wait_until
from k3srotd.config import Config
from k3srotd.core import keys, planner
from k3srotd.core.clock import Clock
from k3srotd.core.model import ts
from k3srotd.engine import session as engine
from k3srotd.errors import LockHeld, SafetyRefusal
from k3srotd.node.k3s import K3s


def rotate_now(m: Manual, skip_publish_wait: bool, ignore_window: bool) -> None:
    from k3srotd.identity import gates

    cfg, clock = m.cfg, m.clock
    gates.require_usable_issuer(cfg, K3s(cfg))  # verify-issuer true, no usable issuer: refused before any change
    refuse_other_rotator(cfg, K3s(cfg), "rotate-now")
    stop = Stop()
    gate_poll = cfg.issuer_poll.total_seconds()
    with stop.around(m.session(ignore_window)) as s:
        if cfg.strategy == "direct":
            s.coordinator.refuse_direct()  # a cluster: staged only
        s.catch_up()  # a cluster: this server's part of another server's step first
        data, live, obs = s.observe()
        if s.executor.resumed in (("promote", "finished"), ("rotate", "finished")):
            click.echo("finished the rotation an earlier k3srotd left; " + summary(live, s.phase(live)))
            return
        if obs.adopted:
            raise SafetyRefusal(f"{obs.notes[0]}. Run rotate-now again to rotate from it")
        steps = planner.rotation_steps(cfg.strategy, s.state, live)
        if steps[0] == "promote":
            click.echo(f"continuing the rotation under way: {s.state.pending} is published")
        for action in steps:
            stop.check(f"{s.state.last_step.step if s.state.last_step else 'the step'}; run rotate-now again")
            if action == "promote":
                live = _promote(s, cfg, clock, skip_publish_wait, ignore_window, gate_poll)
                click.echo(summary(live, s.phase(live)))
                continue
            engine.require_window(cfg, clock.now(), "rotate-now", ignore_window)
            if action == "rotate":
                live = s.rotate_direct(data, live)
                click.echo(summary(live, s.phase(live)))
            else:
                live = s.publish(data, live)
                click.echo(f"published {live.kids[-1]} (verify-only)")


def _promote(
    s: engine.Session, cfg: Config, clock: Clock, skip_publish_wait: bool, ignore_window: bool, gate_poll: float
) -> keys.KeyFile:
    published_at = s.state.published_at or clock.now()
    if not skip_publish_wait:
        wait_until(clock, published_at + cfg.publish_wait, "publish-wait before promote", s.progress)
    _await_promote_gate(s, clock, gate_poll)
    engine.require_window(cfg, clock.now(), "promote", ignore_window)
    data, live, _ = s.read_live()
    pending = s.state.pending
    try:
        return s.promote(data, live)
    except LockHeld:
        # a cluster: another server's daemon took the promote first; follow it to its end
        s.catch_up()
        _, now_live, _ = s.read_live()
        if pending is None or now_live.signer.kid != pending:
            raise
        s.log.info("rolling.followed", msg=f"another server promoted {pending}; this server followed it")
        return now_live


def _await_promote_gate(s: engine.Session, clock: Clock, gate_poll: float) -> None:
    """Wait until the new key may sign (e.g. the public issuer lists it); the gate warns loudly past
    issuer-wait-warn and the wait goes on (Ctrl-C is safe: the key stays published)."""
    start = clock.monotonic()
    while True:
        reason = s.promote_gate()
        if reason is None:
            return
        if s.progress is not None:
            s.progress(f"before promote, waiting for: {reason}", clock.monotonic() - start)
        clock.sleep(gate_poll)


def rotate_now_dry_run(cfg: Config, skip_publish_wait: bool, clock: Optional[Clock] = None) -> None:
    clock = clock or Clock()
    k3s = K3s(cfg)
    v = engine.view(cfg, clock, k3s)
    how = f"run {' '.join(k3s.rotate_ca_argv())}; run {' '.join(cfg.restart_command)}; verify"
    click.echo(f"now: {summary(v.live, v.phase)}")
    new = f"<new RSA-{cfg.key_size} key>"
    steps = planner.rotation_steps(cfg.strategy, v.state, v.live)
    kids, pending, published_at = v.live.kids, v.state.pending or "?", v.state.published_at or v.now
    for action in steps:
        if action == "rotate":
            from k3srotd.cluster import book

            known = book.Book(cfg.state_dir).servers()
            if len(known) > 1:  # what rotate-now would say; the dry run asks the cluster nothing
                from k3srotd.core.rollout import direct_refused

                raise direct_refused(known)
            order = planner.rotate_order(v.live.kids, new)
            click.echo(f"would rotate (direct): stage {', '.join(order)}; {how}")
            return
        if action == "publish":
            kids = planner.publish_order(v.live.kids, new)
            click.echo(f"would publish: stage {', '.join(kids)}; {how}")
            pending, published_at = new, v.now
            continue
        when = "at once" if skip_publish_wait else f"not before {ts(published_at + cfg.publish_wait)}"
        order = planner.promote_order(kids, pending)
        click.echo(f"would promote {when}: stage {', '.join(order)}; {how}")
    click.echo("dry run: nothing was written, run or restarted")
