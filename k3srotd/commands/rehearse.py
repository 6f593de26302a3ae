"""`k3srotd rehearse`: one step through the real path with the live key set unchanged. It stages the live file's
own bytes, runs rotate-ca, restarts K3s (every server in turn on a cluster) and runs every check a step runs, so
an operator learns on their own node that the token, rotate-ca, restart-command, the reconcile, the API and the
identity checks work, before the first step that changes a key. It rolls back and recovers like any step."""

from __future__ import annotations

import click

from k3srotd.commands.common import Confirm, Manual, Stop, refuse_other_rotator, summary
from k3srotd.engine import session as engine
from k3srotd.node.k3s import K3s


def rehearse(m: Manual, yes: bool, ignore_window: bool, confirm: Confirm) -> None:
    from k3srotd.identity import gates

    cfg, clock = m.cfg, m.clock
    k3s = K3s(cfg)
    gates.require_usable_issuer(cfg, k3s)  # the same refusals as a real step, before any change
    refuse_other_rotator(cfg, k3s, "rehearse")
    with Stop().around(m.session(ignore_window)) as s:
        s.catch_up()  # a cluster: this server's part of another server's step first
        if s.executor.resumed is not None and s.executor.resumed[0] == "rehearse":
            _, live, _ = s.read_live()
            click.echo(
                f"an earlier rehearsal was interrupted and is {s.executor.resumed[1]}; " + summary(live, s.phase(live))
            )
            return
        data, live, _ = s.observe()
        engine.require_window(cfg, clock.now(), "rehearse", ignore_window)
        servers = len(s.coordinator.servers)
        where = f"every server of the cluster ({servers}) in turn" if servers > 1 else "K3s"
        if not yes and not confirm(
            f"Rehearse a step with the live key set unchanged ({', '.join(live.kids)}): rotate-ca, then restart "
            f"{where}?"
        ):
            raise click.exceptions.Abort()
        live = s.executor.run("rehearse", data, live, data)  # the same bytes: no key changes
        click.echo(f"rehearsal passed: rotate-ca, restart and every check; {summary(live, s.phase(live))}")
