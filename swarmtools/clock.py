"""The one clock: "now", the database's time format, and file-name stamps.

Library functions never read the time themselves: the command (or a test,
or the scheduling simulator; for the drone verbs, :func:`verbs.run`, which
the CLI and the gateway share) asks for :func:`utcnow` once and passes the
moment down, so the same code runs on a virtual clock. Work that runs long
and stamps what it does as it goes (a scan, the publications that follow
reports) is passed the clock itself, ``clock.utcnow``, and reads it there.
The command's edge (:mod:`console`) stamps the lines it appends to the log
file with utcnow. Elapsed seconds (time.monotonic) are not moments and are
not read here, nor is the TIMESTAMP Portage writes into a binhost's index:
it follows the real clock (binhost waits for it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current moment, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """The one time format of the database: ISO-8601 UTC to the second.

    One fixed width and zone, so the strings compare correctly in SQL.
    """
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse(text: str | None) -> datetime | None:
    """A database time back as a datetime (None stays None)."""
    return datetime.fromisoformat(text) if text else None


def stamp(moment: datetime) -> str:
    """A file-name stamp, e.g. 20260101T000000Z."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def later(moment: datetime, seconds: float) -> str:
    """iso(moment + seconds): a lease end, a back-off end."""
    return iso(moment + timedelta(seconds=seconds))


def age(moment_text: str | None, now: datetime) -> int | None:
    """Whole seconds from a database time to now (None when there is none)."""
    then = parse(moment_text)
    return None if then is None else int((now - then).total_seconds())
