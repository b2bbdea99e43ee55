"""Every change of a package row, and its history, in one place.

A package is one row of ``packages``: what the world needs (``cp``, ``slot``,
``active``, ``scan_order``), the build identity the scan asked for (``cpv``,
``subslot``, ``repo``, ``use``), and the state of its build (``status``,
lease, file, binhost path). Every change goes through :func:`move` (a state
change, with its event) or :func:`update` (columns only), inside the
caller's ``db.write()``: the row changes only if it is still where the
caller saw it, and the caller learns whether it was. The history
(``events``) is append-only and explains every state.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum


class State(StrEnum):
    """Where a package's build is."""

    NEEDED = "needed"          # must exist on the binhost and does not
    DELEGATED = "delegated"    # a drone holds a lease on it
    RECEIVED = "received"      # its binary package is in staging
    SYNCED = "synced"          # published on the binhost and listed in its index
    FAILED = "failed"          # the last attempt failed; back-off, then needed again


STATES = tuple(State)


class Event(StrEnum):
    """What happened to a package (the ``event`` column of the history)."""

    ADDED = "added"                # a scan queued it (or brought it back)
    REQUEUED = "requeued"          # a scan changed its identity: build again
    RETIRED = "retired"            # gone from the scan; kept, with its history
    ON_BINHOST = "binary"          # the scan found it already on the binhost
    CLAIMED = "claimed"
    BUILT = "built"                # reported with its file: received
    BUILD_FAILED = "build-failed"
    RELEASED = "released"
    EXPIRED = "expired"            # lease ran out without heartbeat
    RETRY = "retry"                # back-off over
    QUARANTINED = "quarantined"    # swarm-sync refused the file
    SYNCED = "synced"              # published
    REINDEXED = "reindexed"        # published file listed in the index again
    EXCLUDED = "excluded"          # failure memory: not built on some drones any more
    GROUNDED = "grounded"          # a drone, not a package: failed too often in a row
    UNGROUNDED = "ungrounded"
    WANTED = "wanted"              # another profile wants the same build (shared)
    UNWANTED = "unwanted"          # one profile no longer does; others still do


class FailureKind(StrEnum):
    """Why a build failed, as the drone saw it (``events.kind``)."""

    BUILD = "build"        # emerge failed building the package
    STALLED = "stalled"    # no output and no CPU time for delegate.max_silent_seconds
    # Not the package's fault: a dependency is not on the binhost yet. The
    # package waits for it; no attempt is counted.
    MISSING_DEPENDENCY = "missing-binary-dependency"
    # The drone's trouble, not the package's: they never exclude a package.
    ENVIRONMENT = "environment"  # a full disk, no memory, a broken toolchain file...
    FETCH = "fetch"              # the sources could not be downloaded


# Columns of the current build. Cleared together when a package must be
# built anew, so no value of an old build survives into the next.
NO_BUILD = {"drone": None, "lease_until": None, "attempts": 0, "retry_after": None,
            "build_id": None, "file": None, "size": None, "digest": None,
            "binhost_path": None, "waits_for": None}
NO_LEASE = {"drone": None, "lease_until": None}

_COLUMNS = frozenset({
    "cp", "slot", "cpv", "subslot", "repo", "use", "status", "active", "scan_order",
    "priority", "drone", "lease_until", "attempts", "retry_after", "build_id", "file",
    "size", "digest", "first_seen", "updated_at", "binhost_path", "resolved",
    "expected_seconds", "waits_for", "binhost"})


def _checked(columns) -> None:
    unknown = set(columns) - _COLUMNS
    if unknown:
        raise ValueError(f"not a column of packages: {sorted(unknown)}")


def move(conn: sqlite3.Connection, package_id: int, *, to: State, event: Event, actor: str,
         at: str, expect: State, detail: str = "", guard: dict | None = None,
         event_drone: str | None = None, kind: str | None = None, **columns) -> bool:
    """Move a row from EXPECT to TO, set COLUMNS, append EVENT; False if it had moved on.

    GUARD adds conditions (column: value, NULL-safe) the row must still meet,
    e.g. the digest of the file a caller verified. EVENT_DRONE is recorded
    with the event as the drone it concerns (default: the drone column set).
    """
    _checked(columns)
    _checked(guard or {})
    assignments = {**columns, "status": to, "updated_at": at}
    conditions = {"status": expect, **(guard or {})}
    changed = conn.execute(
        f"UPDATE packages SET {', '.join(f'{c} = ?' for c in assignments)}"
        f" WHERE id = ? AND {' AND '.join(f'{c} IS ?' for c in conditions)}",
        (*assignments.values(), package_id, *conditions.values())).rowcount
    if changed:
        record(conn, package_id, event, actor, at, expect, to, detail,
               event_drone if event_drone is not None else columns.get("drone"), kind)
    return bool(changed)


def take(conn: sqlite3.Connection, package_id: int, *, drone: str, lease_until: str,
         actor: str, at: str, detail: str = "") -> sqlite3.Row | None:
    """needed -> delegated to DRONE, returning the row: the one write of a claim."""
    row = conn.execute(
        "UPDATE packages SET status = ?, drone = ?, lease_until = ?, updated_at = ?"
        " WHERE id = ? AND status = ? RETURNING id, cpv, slot, subslot, repo, use,"
        " lease_until, attempts",
        (State.DELEGATED, drone, lease_until, at, package_id, State.NEEDED)).fetchone()
    if row is not None:
        record(conn, package_id, Event.CLAIMED, actor, at, State.NEEDED, State.DELEGATED,
               detail, drone)
    return row


def update(conn: sqlite3.Connection, package_id: int, *, guard: dict | None = None,
           **columns) -> bool:
    """Set columns that are not the state (scan order, binhost path); False if guarded out."""
    _checked(columns)
    _checked(guard or {})
    conditions = guard or {}
    where = "".join(f" AND {c} IS ?" for c in conditions)
    return bool(conn.execute(
        f"UPDATE packages SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?{where}",
        (*columns.values(), package_id, *conditions.values())).rowcount)


def insert(conn: sqlite3.Connection, *, at: str, **columns) -> int:
    """A new row (first seen now); returns its id."""
    _checked(columns)
    values = {**columns, "first_seen": at, "updated_at": at}
    return conn.execute(
        f"INSERT INTO packages ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        tuple(values.values())).lastrowid


def record(conn: sqlite3.Connection, package_id: int | None, event: Event | str, actor: str,
           at: str, from_status: str | None, to_status: str | None, detail: str = "",
           drone: str | None = None, kind: str | None = None) -> None:
    """Append one entry to the history (inside the caller's write transaction)."""
    conn.execute(
        "INSERT INTO events (package_id, at, actor, event, from_status, to_status, detail, drone,"
        " kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (package_id, at, actor, str(event), from_status, to_status, detail, drone,
         None if kind is None else str(kind)))


def hold(conn: sqlite3.Connection, package_id: int, drone: str, until: str, reason: str) -> None:
    """Keep one drone from one package until a moment (its upload was refused)."""
    conn.execute(
        "INSERT INTO holds (package_id, drone, until, reason) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (package_id, drone) DO UPDATE SET until = excluded.until,"
        " reason = excluded.reason", (package_id, drone, until, reason))


def unwanted(binhost: str, wanted_by: list[str], profiles: list[str],
             binhosts: list[str]) -> str | None:
    """Why no profile of the config (PROFILES, BINHOSTS) wants a build any more; None: one does.

    A build on a binhost gone from the config, or wanted (WANTED_BY: its
    active wants) only by profiles gone from it. A build with no wants at
    all was made before profiles, and counts as wanted.
    """
    if binhost not in binhosts:
        return f"its binhost {binhost} is no longer in the config"
    if wanted_by and not set(wanted_by) & set(profiles):
        return f"only profiles no longer in the config wanted it ({', '.join(sorted(wanted_by))})"
    return None
