"""`k3srotd rollback`: put back the key set from before the last completed step, or retry a failed rollback."""

from __future__ import annotations

import click

from k3srotd.commands.common import Confirm, Manual, Stop, summary
from k3srotd.core.model import ts
from k3srotd.engine import session as engine
from k3srotd.errors import SafetyRefusal


def rollback(m: Manual, yes: bool, ignore_window: bool, confirm: Confirm) -> None:
    cfg, clock = m.cfg, m.clock
    with Stop().around(m.session(ignore_window, retry_failed_rollback=True)) as s:
        if s.executor.resumed == ("rollback", "finished"):
            _, live, _ = s.read_live()
            click.echo("finished the rollback an earlier k3srotd left; " + summary(live, s.phase(live)))
            return
        intent = s.state.intent
        if intent is not None:  # a failed rollback, kept for a human: try it again
            live = s.executor.rollback_intent(f"manual retry of the rollback of {intent.step}")
            click.echo(summary(live, s.phase(live)))
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
        click.echo(summary(live, s.phase(live)))
