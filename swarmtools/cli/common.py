"""What every swarm-* command shares: --config, --json, -v/-q, the database, errors.

Shared state of one run travels on the click context (:class:`Run`, as
``ctx.obj``), not in module globals. Commands are :class:`SwarmCommand`
(groups: :class:`SwarmGroup`), so every error, a usage error inside a
command included, ends as one line and its exit code (:mod:`console`).
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import traceback

import click

from .. import config as config_mod
from .. import console, db
from ..errors import ExitCode, SwarmError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Run:
    """One command run: its config (loaded once) and database (closed at the end)."""

    def __init__(self):
        self.config_path: str | None = None
        self.log_file: str | None = None
        self._config: config_mod.Config | None = None

    def config(self) -> config_mod.Config:
        """The config, loaded on first use; its log file then receives this run's errors."""
        if self._config is None:
            self._config = config_mod.load(self.config_path)
            self.log_file = self._config.orchestrator.log_file or None
        return self._config

    def database(self, create: bool = False, writer: bool = True) -> sqlite3.Connection:
        """The queue, opened once and closed when the command ends."""
        ctx = click.get_current_context()
        conn = db.connect(self.config().database, create=create, writer=writer)
        ctx.call_on_close(conn.close)
        return conn


pass_run = click.make_pass_decorator(Run, ensure=True)


def who() -> str:
    """The user running this command, for the history."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fail(ctx: click.Context, exc: BaseException) -> None:
    run = ctx.find_object(Run)
    sys.exit(console.fail(exc, run.log_file if run else None))


class SwarmCommand(click.Command):
    """A command whose errors are one line each, logged, with the documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.UsageError as exc:  # raised inside the command
            _fail(ctx, SwarmError(exc.format_message(), ExitCode.USAGE))
        except (SwarmError, OSError, sqlite3.Error) as exc:
            _fail(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: one line here, the whole story in the log
            run = ctx.find_object(Run)
            console.append_to_log(run.log_file if run else None, traceback.format_exc())
            _fail(ctx, exc)


class SwarmGroup(click.Group):
    """A group of SwarmCommands."""

    command_class = SwarmCommand


def config_option(f):
    """--config PATH (else $SWARM_CONFIG, else /etc/swarmtools/swarm.toml)."""
    def remember(ctx, _param, value):
        ctx.ensure_object(Run).config_path = value

    return click.option(
        "--config", metavar="PATH", envvar="SWARM_CONFIG", expose_value=False,
        callback=remember, help="Config file [env SWARM_CONFIG; default /etc/swarmtools/swarm.toml].",
    )(f)


def json_option(f):
    """--json: machine output (one object, or one a line for lists)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for jq.")(f)


def verbosity_options(f):
    """-v (repeatable) and -q/--quiet; logging is set up before the command runs."""
    def set_verbose(ctx, _param, value):
        ctx.meta["swarm_verbose"] = value
        console.setup_logging(value, ctx.meta.get("swarm_quiet", False))
        return value

    def set_quiet(ctx, _param, value):
        ctx.meta["swarm_quiet"] = value
        console.setup_logging(ctx.meta.get("swarm_verbose", 0), value)
        return value

    f = click.option("-q", "--quiet", is_flag=True, callback=set_quiet,
                     help="Print errors only: nothing when all is well (cron).")(f)
    return click.option("-v", "--verbose", count=True, callback=set_verbose,
                        help="Explain each step (-vv: debug).")(f)


def run(command: click.Command) -> None:
    """Entry point of a console script: click's parse errors are one line too."""
    # `swarm-x | head -1` must end quietly, as coreutils do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    console.setup_logging()
    try:
        code = command.main(prog_name=console.prog(), standalone_mode=False)
    except click.Abort:
        sys.stderr.write(f"{console.prog()}: error: aborted\n")
        sys.exit(1)
    except click.ClickException as exc:
        sys.stderr.write(f"{console.prog()}: error: {exc.format_message()}"
                         f" (see {console.prog()} --help)\n".replace("\n", " ").rstrip() + "\n")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
