"""The command line. Only click is imported at module level: `k3srotd --version` must cost no more.

At this boundary a known error (K3srotdError) is one line and the documented exit code; anything else is
"unexpected", with its traceback only under --debug.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Optional

import click

from k3srotd import __version__

if TYPE_CHECKING:  # types only: `k3srotd --version` imports nothing more than click
    from k3srotd.commands.common import Manual
    from k3srotd.config import Config
    from k3srotd.core.ports import Log
    from k3srotd.engine.coordinator import Run
    from k3srotd.engine.executor import Events
    from k3srotd.engine.restart import Progress

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Ctx:
    def __init__(
        self, config: Optional[str], log_format: Optional[str], debug: bool, run: Optional[Run] = None
    ) -> None:
        self.config_path = config
        self.log_format = log_format
        self.debug = debug
        self.run = run  # engine.coordinator.Run: how sessions start (the tests' crash point and leases); None: default
        self._cfg: Optional[Config] = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            from k3srotd import config

            self._cfg = config.load(self.config_path)
            explicit = self.config_path  # click fills it from K3SROTD_CONFIG too
            if explicit and not os.path.exists(explicit):  # all defaults, as documented; a typo shows here
                click.echo(f"k3srotd: {explicit}: does not exist; using the defaults and {explicit}.d/*.yaml", err=True)
            unsafe = config.short_grace_warning(self._cfg)
            if unsafe:
                click.echo(f"k3srotd: {unsafe}", err=True)
        return self._cfg

    def logger(self) -> Log:
        from k3srotd.output import logs

        return logs.configure(self.log_format or self.cfg.log_format)

    def manual(self) -> Manual:
        """A manual command's start: the log, the event sinks (metrics, hooks) and the progress line."""
        from k3srotd.commands.common import Manual
        from k3srotd.engine.coordinator import Run

        log = self.logger()
        return Manual(self.cfg, log, _events(self, log), _progress(log), self.run or Run())


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="k3srotd", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config",
    metavar="FILE",
    envvar="K3SROTD_CONFIG",
    help="Main config file (default /etc/k3srotd/config.yaml; a missing file means all defaults); its drop-ins "
    "are FILE.d/*.yaml. Also from K3SROTD_CONFIG.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "journal", "json", "console"]),
    help="Override log-format: auto (journald under systemd, else console), journal, json, console.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, config: Optional[str], log_format: Optional[str], debug: bool) -> None:
    """Rotate the service-account signing key of a K3s server: publish, promote, prune, verified."""
    ctx.obj = Ctx(config, log_format, debug, (ctx.obj or {}).get("run") if isinstance(ctx.obj, dict) else None)


def _progress(log: Log) -> Progress:
    """On a TTY, one line rewritten in place; off a TTY, a plain log line every 15 s."""
    tty = sys.stderr.isatty()
    last = [-15.0]

    def show(what: str, elapsed: float) -> None:
        if tty:
            sys.stderr.write(f"\r\033[K{what} ({int(elapsed)}s)")
            sys.stderr.flush()
        elif elapsed - last[0] >= 15:
            last[0] = elapsed
            log.info("wait", msg=f"{what} ({int(elapsed)}s)")

    return show


def _events(obj: Ctx, log: Log) -> Events:
    from k3srotd.core.clock import Clock
    from k3srotd.output.observers import make_events

    return make_events(obj.cfg, log, Clock())


@cli.command("rotate-now")
@click.option("--dry-run", is_flag=True, help="Print what would be done; write, run and restart nothing.")
@click.option("--skip-publish-wait", is_flag=True, help="Promote right after publish (after a key leak).")
@click.option("--ignore-window", is_flag=True, help="Run outside maintenance-window.")
@click.pass_obj
def rotate_now(obj: Ctx, dry_run: bool, skip_publish_wait: bool, ignore_window: bool) -> None:
    """Rotate now, in the foreground, up to the new key signing (staged: publish, wait, promote).

    Continues a rotation already under way.
    """
    from k3srotd.commands import rotate_now as command

    if dry_run:
        command.rotate_now_dry_run(obj.cfg, skip_publish_wait)
        return
    command.rotate_now(obj.manual(), skip_publish_wait, ignore_window)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what would be dropped; change nothing.")
@click.option("--force", is_flag=True, help="Drop retired keys before their grace-period has passed.")
@click.option("--yes", is_flag=True, help="Do not ask before --force.")
@click.option("--ignore-window", is_flag=True, help="Run outside maintenance-window.")
@click.option(
    "--reissue-legacy",
    is_flag=True,
    help="Instead of pruning: have K3s sign again the service-account-token Secrets that retired keys signed.",
)
@click.pass_obj
def prune(obj: Ctx, dry_run: bool, force: bool, yes: bool, ignore_window: bool, reissue_legacy: bool) -> None:
    """Drop retired keys whose grace-period has passed; --force drops them before that."""
    from k3srotd.commands import prune as command

    if reissue_legacy:
        from k3srotd.commands import reissue

        reissue.reissue_legacy(obj.cfg, obj.logger(), dry_run)
        return
    if dry_run:
        command.prune_dry_run(obj.cfg, force)
        return
    command.prune(obj.manual(), force, yes, ignore_window, _confirm)


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--ignore-window", is_flag=True, help="Run outside maintenance-window.")
@click.pass_obj
def rollback(obj: Ctx, yes: bool, ignore_window: bool) -> None:
    """Put back the key set that was live before the last completed step; asks first unless --yes."""
    from k3srotd.commands import rollback as command

    command.rollback(obj.manual(), yes, ignore_window, _confirm)


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--ignore-window", is_flag=True, help="Run outside maintenance-window.")
@click.pass_obj
def rehearse(obj: Ctx, yes: bool, ignore_window: bool) -> None:
    """Rehearse one step with the live key set unchanged: stage the same bytes, rotate-ca, restart K3s (every server
    in turn on a cluster) and run every check; asks first unless --yes.

    Rolls back like any step when a check fails. doctor warns until a rehearsal has passed since the last K3s
    upgrade.
    """
    from k3srotd.commands import rehearse as command

    command.rehearse(obj.manual(), yes, ignore_window, _confirm)


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: phase, signer_kid, keys (position, kid, role, algorithm, bits, retired_at), "
    "last_rotation, next_action.",
)
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """Keys, roles, phase, and what happens next and when."""
    from k3srotd.commands import status as st
    from k3srotd.core.clock import Clock

    click.echo(st.render(obj.cfg, as_json, Clock(), obj.config_path), nl=False)


@cli.command()
@click.pass_obj
def doctor(obj: Ctx) -> None:
    """Preflight checks, one PASS/WARN/FAIL/SKIP line each; exit 0 when nothing FAILs.

    SKIP: a check that did not run, and why (a FAIL it follows from, or nothing to check here).
    """
    from k3srotd.commands import doctor as dr
    from k3srotd.core.clock import Clock

    lines, failed = dr.run(obj.cfg, Clock(), obj.config_path)
    for line in lines:
        click.echo(line)
    if failed:
        sys.exit(1)


@cli.command()
@click.pass_obj
def run(obj: Ctx) -> None:
    """The daemon: schedules and drives rotations and prunes; resumes an interrupted step at start.

    It starts rotations and prunes by itself only with `automatic: true` in the config; without it, it finishes
    or undoes an interrupted step, follows a step started on another server, and says what would be due.
    """
    from k3srotd.daemon import service as daemon

    sys.exit(daemon.main(obj.config_path, obj.log_format, obj.run))


def _confirm(question: str) -> bool:
    from k3srotd.errors import ConfigError

    if not sys.stdin.isatty():
        raise ConfigError(f"{question.rstrip('?')}: cannot ask without a terminal; add --yes to confirm")
    return click.confirm(question, default=False)


def _error_line(message: str) -> str:
    """The final line: one line, bounded, through the same key-material guard as the logs (a failing
    rotate-ca or restart-command that echoes its input must not put a key on stderr)."""
    from k3srotd.core.text import cut
    from k3srotd.output.logs import redact_text

    return "k3srotd: " + cut(redact_text(message))


def main(argv: Optional[list[str]] = None, run: Optional[Run] = None) -> None:
    """The entry point. `run` (an engine.coordinator.Run) is for the tests' launcher only: production has none."""
    from k3srotd.errors import K3srotdError, Terminated

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="k3srotd", standalone_mode=False, obj={"run": run})
    except click.exceptions.Abort:
        click.echo("k3srotd: aborted; nothing was changed", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except K3srotdError as e:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        click.echo(_error_line(str(e)), err=True)
        sys.exit(e.exit_code)
    except Terminated as e:
        click.echo(_error_line(str(e)), err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("k3srotd: interrupted", err=True)
        sys.exit(1)
    except Exception as e:
        if debug or os.environ.get("K3SROTD_DEBUG"):
            raise
        click.echo(_error_line(f"unexpected error: {type(e).__name__}: {e} (run with --debug for details)"), err=True)
        sys.exit(1)
