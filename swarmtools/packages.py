"""Every change of a package row, of the wants that place it, and its history, in one place.

A package is one row of ``packages``: what the world needs (``cp``, ``slot``,
``active``, ``scan_order``), the build identity the scan asked for (``cpv``,
``subslot``, ``repo``, ``use``), and the state of its build (``status``,
lease, file, binhost path). Every change goes through this module, inside
the caller's ``db.write()``: :func:`move` (a state change, with its event),
:func:`take` (a claim), :func:`retire` (wanted no more), :func:`note` (an
event that changes no state, maybe with columns), :func:`update` (columns
only) and :func:`insert` (a new row, with its first event). A guarded change
happens only if the row is still where the caller saw it, and the caller
learns whether it did. Which profiles want a build (``wants``) and so its
place in the queue change through :func:`want`, :func:`unwant` and
:func:`place`. The history (``events``) is append-only and explains every
state.
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
    STALLED = "stalled"    # no output and (almost) no CPU time for delegate.max_silent_seconds
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
        "UPDATE packages SET status = 'delegated', drone = ?, lease_until = ?, updated_at = ?"
        " WHERE id = ? AND status = 'needed' RETURNING id, cpv, slot, subslot, repo, use,"
        " lease_until, attempts",
        (drone, lease_until, at, package_id)).fetchone()
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


def insert(conn: sqlite3.Connection, *, at: str, event: Event, actor: str, detail: str = "",
           **columns) -> int:
    """A new row (first seen now) and its first EVENT; returns its id."""
    _checked(columns)
    values = {**columns, "first_seen": at, "updated_at": at}
    package_id = conn.execute(
        f"INSERT INTO packages ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        tuple(values.values())).lastrowid
    record(conn, package_id, event, actor, at, None, columns.get("status"), detail)
    return package_id


def note(conn: sqlite3.Connection, package_id: int | None, event: Event, *, actor: str, at: str,
         detail: str = "", drone: str | None = None, **columns) -> None:
    """Append EVENT, which changes no state (from and to: the row's status), after setting
    COLUMNS that are not the state. PACKAGE_ID None: an event of a drone, not a package."""
    _checked(columns)
    if "status" in columns:
        raise ValueError("note() changes no state: use move()")
    status = None
    if package_id is not None and columns:
        status = conn.execute(
            f"UPDATE packages SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?"
            " RETURNING status", (*columns.values(), package_id)).fetchone()[0]
    elif package_id is not None:
        status = conn.execute("SELECT status FROM packages WHERE id = ?",
                              (package_id,)).fetchone()[0]
    record(conn, package_id, event, actor, at, status, status, detail, drone)


def retire(conn: sqlite3.Connection, pkg: sqlite3.Row, *, actor: str, at: str, why: str) -> None:
    """PKG (its id, status and drone as read) is wanted no more: inactive, its history kept."""
    # A lease on a package nobody wants any more ends here: its drone's
    # report is refused, and no heartbeat keeps it alive.
    if pkg["status"] == State.DELEGATED:
        move(conn, pkg["id"], expect=State.DELEGATED, to=State.NEEDED, event=Event.RETIRED,
             actor=actor, at=at, active=0, detail=f"{why}; lease of {pkg['drone']} ended",
             event_drone=pkg["drone"], **NO_LEASE)
    else:
        note(conn, pkg["id"], Event.RETIRED, actor=actor, at=at, detail=why, active=0,
             updated_at=at)


def record(conn: sqlite3.Connection, package_id: int | None, event: Event | str, actor: str,
           at: str, from_status: str | None, to_status: str | None, detail: str = "",
           drone: str | None = None, kind: str | None = None) -> None:
    """Append one entry to the history (inside the caller's write transaction), with the
    package's CPV as it is now: a rescan changes the row's CPV, never the event's."""
    conn.execute(
        "INSERT INTO events (package_id, at, actor, event, from_status, to_status, detail, drone,"
        " kind, cpv) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT cpv FROM packages WHERE id = ?))",
        (package_id, at, actor, str(event), from_status, to_status, detail, drone,
         None if kind is None else str(kind), package_id))


def hold(conn: sqlite3.Connection, package_id: int, drone: str, until: str, reason: str) -> None:
    """Keep one drone from one package until a moment (its upload was refused)."""
    conn.execute(
        "INSERT INTO holds (package_id, drone, until, reason) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (package_id, drone) DO UPDATE SET until = excluded.until,"
        " reason = excluded.reason", (package_id, drone, until, reason))


def want(conn: sqlite3.Connection, profile: str, package_id: int, order: int) -> None:
    """PROFILE wants the build, at place ORDER of its scan (again, if it wanted it before)."""
    conn.execute(
        "INSERT INTO wants (profile, package_id, scan_order, active) VALUES (?, ?, ?, 1)"
        " ON CONFLICT DO UPDATE SET scan_order = excluded.scan_order, active = 1",
        (profile, package_id, order))


def unwant(conn: sqlite3.Connection, package_id: int, profile: str | None = None) -> None:
    """PROFILE (None: every profile) no longer wants the build."""
    if profile is None:
        conn.execute("UPDATE wants SET active = 0 WHERE package_id = ?", (package_id,))
    else:
        conn.execute("UPDATE wants SET active = 0 WHERE profile = ? AND package_id = ?",
                     (profile, package_id))


def unwant_all_but(conn: sqlite3.Connection, profiles: list[str]) -> None:
    """The wants of every profile not among PROFILES end (profiles gone from the config)."""
    conn.execute(f"UPDATE wants SET active = 0 WHERE active = 1 AND profile NOT IN"
                 f" ({', '.join('?' * len(profiles))})", profiles)


def place(conn: sqlite3.Connection, package_id: int) -> None:
    """A build's place in the queue: the earliest any profile that wants it gives it."""
    # (A subquery update() cannot express.)
    conn.execute("UPDATE packages SET scan_order = (SELECT min(scan_order) FROM wants"
                 " WHERE package_id = ? AND active = 1) WHERE id = ?", (package_id, package_id))


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
