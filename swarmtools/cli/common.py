"""What every swarm-* command shares: --config, -v/-q, errors, SIGPIPE."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys

import click

from .. import config as config_mod
from ..errors import SwarmError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def prog() -> str:
    """The command's name as the user typed it, for messages."""
    return os.path.basename(sys.argv[0]) or "swarm"


def config_option(f):
    """--config PATH (else $SWARM_CONFIG, else /etc/swarmtools/swarm.toml)."""
    return click.option(
        "--config", "config_path", metavar="PATH", envvar="SWARM_CONFIG",
        help="Config file [env SWARM_CONFIG; default /etc/swarmtools/swarm.toml].",
    )(f)


def verbosity_options(f):
    """-v (repeatable) and -q/--quiet, turned into a logging level."""
    f = click.option("-q", "--quiet", is_flag=True,
                     help="Print errors only: nothing when all is well (cron).")(f)
    return click.option("-v", "--verbose", count=True,
                        help="Explain each step (-vv: debug).")(f)


def setup_logging(verbose: int, quiet: bool) -> None:
    """One stderr handler: WARNING by default, -v INFO, -vv DEBUG, -q ERROR."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog()}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


_error_log: str | None = None


def load_config(path: str | None) -> config_mod.Config:
    """Load the config and remember its log file for the errors of this run."""
    global _error_log
    config = config_mod.load(path)
    _error_log = config["orchestrator"]["log_file"] or None
    return config


def handle_errors(f):
    """Turn SwarmError into 'prog: error: msg' and its exit code, and log it."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except SwarmError as exc:
            message = f"{prog()}: error: {exc}"
            click.echo(message, err=True)
            _append_to_log(message)
            sys.exit(int(exc.exit_code))
    return wrapper


def _append_to_log(message: str) -> None:
    # Cron mails stderr; the log file keeps the errors after the mail is gone.
    if not _error_log:
        return
    from datetime import datetime, timezone

    try:
        with open(_error_log, "a") as log_file:
            log_file.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {message}\n")
    except OSError:
        pass  # a drone has no orchestrator log directory; stderr still has it


def run(command: click.Command) -> None:
    """Entry point of a console script."""
    # `swarm-x | head -1` must end quietly, as coreutils do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    command(prog_name=prog())
