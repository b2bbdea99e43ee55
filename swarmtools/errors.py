"""Exit codes and the one exception type the commands turn into them."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes shared by every swarm-* command (the README lists them)."""

    OK = 0
    FAILED = 1  # the work failed: emerge, rsync, ssh, a bad package
    USAGE = 2  # usage or configuration error
    TEMPFAIL = 75  # lock held, database busy: try again next run


class SwarmError(Exception):
    """An expected failure with a message for people and an exit code."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(SwarmError):
    """The config file is missing, unreadable or invalid."""

    exit_code = ExitCode.USAGE


class TryLater(SwarmError):
    """A lock is held or the database is busy; the next run will do it."""

    exit_code = ExitCode.TEMPFAIL
