"""What every command does at its edges, without click: its name, logging, failing.

Every error a command ends with is one line, ``swarm-x: error: ...``, on
stderr and appended to ``orchestrator.log_file`` (cron mails stderr; the log
keeps it after the mail is gone), with the documented exit code.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from typing import IO

from . import clock
from .errors import ExitCode, SwarmError


def prog() -> str:
    """The command's name as the user typed it, for messages."""
    return os.path.basename(sys.argv[0]) or "swarm"


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """One stderr handler: WARNING by default, -v INFO, -vv DEBUG, -q ERROR."""
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog()}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def describe(exc: BaseException) -> tuple[str, ExitCode]:
    """The one line and exit code for an exception a command ends with."""
    if isinstance(exc, SwarmError):
        return str(exc), exc.exit_code
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        return f"database is busy ({exc}); try again", ExitCode.TEMPFAIL
    if isinstance(exc, sqlite3.Error):
        return f"database error: {exc}", ExitCode.FAILED
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", ExitCode.FAILED
    return f"{type(exc).__name__}: {exc}", ExitCode.FAILED


def fail(exc: BaseException, log_file: str | None, stream: IO[str] | None = None,
         name: str | None = None) -> int:
    """Print the one line for EXC (to STREAM, else stderr; as NAME, else this command),
    append it to the log file, return the exit code."""
    message, code = describe(exc)
    line = f"{name or prog()}: error: {message}".replace("\n", " ")
    (stream or sys.stderr).write(line + "\n")
    append_to_log(log_file, line)
    return int(code)


def append_to_log(log_file: str | None, line: str) -> None:
    """Append LINE, stamped, to the error log (if there is one and it can be written).

    A log that is not there yet is made only by the owner of its directory:
    one made by root would lock the swarm's user out of its own log.
    """
    if not log_file:
        return
    try:
        if not os.path.exists(log_file) and os.stat(os.path.dirname(log_file) or ".").st_uid != os.geteuid():
            return
        with open(log_file, "a") as f:
            f.write(f"{clock.iso(clock.utcnow())} {line}\n")
    except OSError:
        pass  # a drone has no orchestrator log directory; stderr still has it
