"""The one SQLite file: connection (WAL, busy timeout), migrations, writes.

Every write goes through :func:`write`, which opens ``BEGIN IMMEDIATE`` so
two processes never interleave a read-modify-write. The schema version lives
in ``PRAGMA user_version``; a database newer than this code is refused.
Only the commands that fill the queue create the file; every other one
refuses a missing or empty database instead of starting a new one.
"""

from __future__ import annotations

import os
import pwd
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, TryLater

BUSY_TIMEOUT_MS = 30_000

_STATES = ("needed", "delegated", "received", "synced", "failed")  # packages.State


def _backfill_publications(conn: sqlite3.Connection) -> None:
    # Until migration 3 the names ever published lived only in the text of
    # 'synced' events ("published as CAT/PN/PF-ID.gpkg.tar").
    name = re.compile(r"^published as ((?P<cat>[^/]+)/[^/]+/(?P<pf>.+)-(?P<id>\d+)\.(?:gpkg\.tar|xpak))$")
    rows = conn.execute("SELECT package_id, at, detail FROM events WHERE event = 'synced'").fetchall()
    for package_id, at, detail in rows:
        if match := name.match(detail):
            conn.execute(
                "INSERT OR IGNORE INTO publications (path, cpv, build_id, package_id, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (match.group(1), f"{match.group('cat')}/{match.group('pf')}",
                 int(match.group("id")), package_id, at))


# The file names in the details of 'built' ("DRONE/CAT/PN/PF-ID.gpkg.tar (...)"),
# 'synced' ("published as CAT/PN/PF-ID.gpkg.tar") and 'reindexed' events.
_BUILT_FILE = re.compile(r"(?:^|[\s/])([^/\s]+)/[^/\s]+/([^/\s]+)-\d+\.(?:gpkg\.tar|xpak)(?:\s|$)")
_CPV_CHANGE = re.compile(r"^cpv (\S+) -> (\S+)")  # what a scan's identity change said first


def _backfill_event_cpvs(conn: sqlite3.Connection) -> None:
    # Until migration 11 an event named its package row, whose CPV a rescan
    # changes in place: the history showed today's version for past builds.
    # Each old event gets the CPV its own history proves. A package's events
    # fall in spans, each begun by an event that set the row's identity
    # (added, requeued, binary); the row's CPV is the last span's. A span
    # holds the version a file name in it says (built, synced, reindexed),
    # else the one the next span's first event changed from ("cpv A -> B"),
    # else the next span's when that event kept the version (a requeue for
    # USE, or the row was active: the scan says every version change). A
    # row brought back from retirement with another version said not which
    # version it had: its events before are left NULL (not known), never guessed.
    conn.execute("ALTER TABLE events ADD COLUMN cpv TEXT")
    current = dict(conn.execute("SELECT id, cpv FROM packages"))
    spans: dict[int, list[dict]] = {}
    active: dict[int, bool] = {}
    for event_id, package_id, event, from_status, detail in conn.execute(
            "SELECT id, package_id, event, from_status, detail FROM events"
            " WHERE package_id IS NOT NULL ORDER BY id"):
        starts = event in ("added", "requeued", "binary")
        if package_id not in spans or starts:
            change = _CPV_CHANGE.match(detail)
            kept = (package_id not in spans or event == "requeued" or active[package_id]
                    or detail == "back in the merge list, unchanged")
            spans.setdefault(package_id, []).append({
                "ids": [], "file": None, "was": change.group(1) if change else None,
                "kept": kept and not change})
        span = spans[package_id][-1]
        span["ids"].append(event_id)
        if event in ("built", "synced", "reindexed") and (found := _BUILT_FILE.search(detail)):
            span["file"] = f"{found.group(1)}/{found.group(2)}"
        if event == "retired":
            active[package_id] = False
        elif starts or package_id not in active:
            active[package_id] = True
    conn.execute("DROP TRIGGER events_append_only_update")  # (inside this migration's write)
    for package_id, package_spans in spans.items():
        cpv = current.get(package_id)
        for number in range(len(package_spans) - 1, -1, -1):
            span = package_spans[number]
            if number < len(package_spans) - 1:
                following = package_spans[number + 1]
                cpv = following["was"] or (cpv if following["kept"] else None)
            cpv = span["file"] or cpv
            conn.executemany("UPDATE events SET cpv = ? WHERE id = ?",
                             [(cpv, event_id) for event_id in span["ids"]])
    conn.execute("CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events"
                 " BEGIN SELECT RAISE(ABORT, 'events are append-only'); END")


# Numbered migrations: index + 1 is the user_version they lead to. Never
# edit one that has shipped; append a new one. A migration is SQL, or a
# function for what SQL cannot say.
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: queue, history, scans, drones.
    f"""
    CREATE TABLE packages (
        id          INTEGER PRIMARY KEY,
        cp          TEXT NOT NULL,              -- category/package, without version
        slot        TEXT NOT NULL,              -- SLOT without sub-slot; identity is (cp, slot)
        cpv         TEXT NOT NULL,
        subslot     TEXT,
        repo        TEXT NOT NULL DEFAULT '',
        use         TEXT NOT NULL DEFAULT '',   -- enabled USE and USE_EXPAND flags, sorted
        status      TEXT NOT NULL CHECK (status IN {_STATES!r}),
        active      INTEGER NOT NULL DEFAULT 1, -- 0: retired, gone from the latest scan
        scan_order  INTEGER NOT NULL DEFAULT 0, -- position in the latest merge list
        priority    INTEGER NOT NULL DEFAULT 0, -- higher first (swarm-resolve)
        drone       TEXT,                       -- holder of the lease, or last builder
        lease_until TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        retry_after TEXT,
        build_id    INTEGER,                    -- of the binary package, once there is one
        file        TEXT,
        size        INTEGER,
        digest      TEXT,
        first_seen  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE UNIQUE INDEX packages_active_identity ON packages (cp, slot) WHERE active = 1;
    CREATE INDEX packages_status ON packages (status, active, priority DESC, scan_order);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        package_id  INTEGER REFERENCES packages (id),
        at          TEXT NOT NULL,
        actor       TEXT NOT NULL,              -- command or drone that caused it
        event       TEXT NOT NULL,              -- added, requeued, retired, claimed, ...
        from_status TEXT,
        to_status   TEXT,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_package ON events (package_id, id);
    CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

    CREATE TABLE scans (
        id          INTEGER PRIMARY KEY,
        at          TEXT NOT NULL,
        source      TEXT NOT NULL,
        rows        INTEGER NOT NULL,
        summary     TEXT NOT NULL               -- JSON of the counts swarm-fresh printed
    );

    CREATE TABLE drones (
        name           TEXT PRIMARY KEY,
        last_heartbeat TEXT,
        facts          TEXT NOT NULL DEFAULT '{{}}',  -- JSON from the last heartbeat
        config_digest  TEXT
    );
    """,
    # 2: publication. Where a package is (being) published on the binhost, and
    # superseded binhost files waiting out their grace period.
    """
    ALTER TABLE packages ADD COLUMN binhost_path TEXT;
    CREATE TABLE superseded (
        path  TEXT PRIMARY KEY,                 -- relative to binhost.path
        since TEXT NOT NULL
    );
    """,
    # 3: every binhost name ever published, keyed (a build id is never
    # reused); the drone an event concerns; events found by kind and time.
    """
    CREATE TABLE publications (
        path        TEXT PRIMARY KEY,           -- relative to binhost.path
        cpv         TEXT NOT NULL,
        build_id    INTEGER NOT NULL,
        package_id  INTEGER REFERENCES packages (id),
        at          TEXT NOT NULL
    );
    CREATE INDEX publications_cpv ON publications (cpv);
    ALTER TABLE events ADD COLUMN drone TEXT;
    CREATE INDEX events_event ON events (event, at);
    -- A drone kept from one package for a while (its upload was refused).
    CREATE TABLE holds (
        package_id  INTEGER NOT NULL REFERENCES packages (id),
        drone       TEXT NOT NULL,
        until       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        PRIMARY KEY (package_id, drone)
    );
    -- What kind of failure a build-failed event is (build, stalled, ...).
    ALTER TABLE events ADD COLUMN kind TEXT;
    -- Every claim looks for expired leases and ended back-offs first, and
    -- for a lease its drone forgot; delegated rows are few (one a drone).
    CREATE INDEX packages_leases ON packages (lease_until) WHERE status = 'delegated';
    CREATE INDEX packages_delegated ON packages (drone) WHERE status = 'delegated';
    CREATE INDEX packages_backoffs ON packages (retry_after) WHERE status = 'failed';
    """,
    _backfill_publications,
    # 5: the dependency graph (swarm-resolve). Edges between queued packages,
    # what each package waits for before a drone may build it, reduced
    # dependency strings cached by identity, and per package the expected
    # build time behind its priority.
    """
    CREATE TABLE edges (
        package_id  INTEGER NOT NULL REFERENCES packages (id),  -- the dependent
        dep_id      INTEGER NOT NULL REFERENCES packages (id),  -- its dependency
        kinds       TEXT NOT NULL,              -- DEPEND BDEPEND RDEPEND PDEPEND IDEPEND
        PRIMARY KEY (package_id, dep_id)
    );
    CREATE INDEX edges_dep ON edges (dep_id);
    CREATE TABLE requires (
        package_id  INTEGER NOT NULL REFERENCES packages (id),
        dep_id      INTEGER NOT NULL REFERENCES packages (id),  -- must be synced first
        PRIMARY KEY (package_id, dep_id)
    ) WITHOUT ROWID;
    CREATE INDEX requires_dep ON requires (dep_id);
    CREATE TABLE dep_cache (
        key         TEXT PRIMARY KEY,           -- cpv, repository, USE, ebuild metadata hash
        deps        TEXT NOT NULL,              -- JSON: kind -> reduced dependency list
        names       TEXT NOT NULL,              -- the category/packages those name
        at          TEXT NOT NULL
    );
    ALTER TABLE packages ADD COLUMN resolved TEXT;           -- dep_cache key of its edges
    ALTER TABLE packages ADD COLUMN expected_seconds INTEGER;
    ALTER TABLE packages ADD COLUMN waits_for TEXT;          -- JSON: CPVs a drone found missing
    ALTER TABLE drones ADD COLUMN speed REAL;                -- learned from its builds
    CREATE INDEX packages_order ON packages (scan_order) WHERE active = 1;
    CREATE TABLE resolve_state (
        key         TEXT PRIMARY KEY,           -- what the last swarm-resolve knew
        value       TEXT NOT NULL
    );
    """,
    # 6: package control (swarm-exclude): rules, what they match, what
    # packages require of a drone, and grounded drones.
    """
    CREATE TABLE exclusions (
        id          INTEGER PRIMARY KEY,
        atom        TEXT NOT NULL,              -- Portage atom, wildcards allowed
        drone       TEXT,                       -- only for this drone (NULL: every drone)
        class       TEXT,                       -- only for this build class (CHOST|CFLAGS)
        reason      TEXT NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('manual', 'auto', 'file')),
        who         TEXT NOT NULL,
        at          TEXT NOT NULL,
        until       TEXT,                       -- it ends then (NULL: never)
        identity    TEXT,                       -- auto: the build it was made for
        log         TEXT                        -- auto: the last failure's kept log
    );
    CREATE TABLE excluded (
        package_id  INTEGER NOT NULL REFERENCES packages (id),
        rule_id     INTEGER NOT NULL REFERENCES exclusions (id),
        drone       TEXT,
        class       TEXT,
        until       TEXT,
        PRIMARY KEY (package_id, rule_id)
    ) WITHOUT ROWID;
    CREATE TABLE requirements (
        package_id  INTEGER NOT NULL REFERENCES packages (id),
        feature     TEXT NOT NULL,              -- multilib, cuda, arch:amd64, big-memory ...
        why         TEXT NOT NULL,
        PRIMARY KEY (package_id, feature)
    ) WITHOUT ROWID;
    CREATE TABLE control_state (
        key         TEXT PRIMARY KEY,           -- what the matches above were made from
        value       TEXT NOT NULL
    );
    CREATE TABLE forgiven (
        event_id    INTEGER PRIMARY KEY         -- a build failure that was its drone's
    );
    ALTER TABLE drones ADD COLUMN grounded_until TEXT;
    ALTER TABLE drones ADD COLUMN grounded_reason TEXT;
    """,
    # 7: the last run of a command that leaves no other trace when it has
    # nothing to do (swarm-sync from cron), for the status page.
    """
    CREATE TABLE runs (
        command     TEXT PRIMARY KEY,
        at          TEXT NOT NULL,
        summary     TEXT NOT NULL               -- JSON counts of what it did
    );
    """,
    # 8: releases (swarm-release): where each channel pointed, so that a
    # rollback knows the release before the current one.
    """
    CREATE TABLE channel_moves (
        id          INTEGER PRIMARY KEY,
        channel     TEXT NOT NULL,              -- stable, testing, ...
        release     TEXT NOT NULL,              -- a directory under binhost.releases_path
        action      TEXT NOT NULL CHECK (action IN ('promote', 'rollback', 'found')),
        at          TEXT NOT NULL,
        actor       TEXT NOT NULL
    );
    """,
    # 9: build profiles: per profile, the Portage configuration drones build
    # with (a bundle kept under state_dir/profiles/DIGEST.tar) and the state
    # of the repositories the last scan read; claims name both.
    """
    CREATE TABLE profiles (
        name        TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,              -- sha256 of the configuration bundle
        tree        TEXT NOT NULL,              -- JSON: repository -> state the scan saw
        chost       TEXT NOT NULL,
        arch        TEXT NOT NULL,
        inputs      TEXT NOT NULL,              -- digest of all the scan read (--if-changed)
        scanned_at  TEXT NOT NULL
    );
    """,
    # 10: several profiles, several binhosts. A package row is now one
    # build (identity) on one binhost; what each profile wants (its merge
    # list) is a row of wants, so profiles sharing a binhost share a build
    # of the same identity, and builds of one slot with other USE or
    # versions sit side by side. Publications and superseded files are per
    # binhost. Until now there was one profile and one binhost, 'default'.
    """
    ALTER TABLE packages ADD COLUMN binhost TEXT NOT NULL DEFAULT 'default';
    DROP INDEX packages_active_identity;
    CREATE UNIQUE INDEX packages_active_identity ON packages
        (binhost, cp, slot, cpv, ifnull(subslot, ''), repo, use) WHERE active = 1;
    CREATE TABLE wants (
        profile     TEXT NOT NULL,
        package_id  INTEGER NOT NULL REFERENCES packages (id),
        scan_order  INTEGER NOT NULL,           -- position in that profile's merge list
        active      INTEGER NOT NULL DEFAULT 1, -- 0: gone from its latest scan
        PRIMARY KEY (profile, package_id)
    ) WITHOUT ROWID;
    CREATE INDEX wants_package ON wants (package_id, active);
    INSERT INTO wants (profile, package_id, scan_order, active)
        SELECT 'default', id, scan_order, active FROM packages;
    ALTER TABLE scans ADD COLUMN profile TEXT NOT NULL DEFAULT 'default';
    CREATE TABLE publications_new (
        binhost     TEXT NOT NULL DEFAULT 'default',
        path        TEXT NOT NULL,              -- relative to that binhost's path
        cpv         TEXT NOT NULL,
        build_id    INTEGER NOT NULL,
        package_id  INTEGER REFERENCES packages (id),
        at          TEXT NOT NULL,
        PRIMARY KEY (binhost, path)
    );
    INSERT INTO publications_new (path, cpv, build_id, package_id, at)
        SELECT path, cpv, build_id, package_id, at FROM publications;
    DROP TABLE publications;
    ALTER TABLE publications_new RENAME TO publications;
    CREATE INDEX publications_cpv ON publications (binhost, cpv);
    CREATE TABLE superseded_new (
        binhost     TEXT NOT NULL DEFAULT 'default',
        path        TEXT NOT NULL,
        since       TEXT NOT NULL,
        PRIMARY KEY (binhost, path)
    );
    INSERT INTO superseded_new (path, since) SELECT path, since FROM superseded;
    DROP TABLE superseded;
    ALTER TABLE superseded_new RENAME TO superseded;
    """,
    # 11: exclusion rules by the ten thousand: the packages a rule matches are
    # found (counted, removed) by the rule, not by reading every match.
    """
    CREATE INDEX excluded_rule ON excluded (rule_id);
    """,
    # 12: a drone holds at most one lease a CPV (it names a build by its
    # CPV alone): a claim looks up the drone's lease on a candidate's CPV.
    """
    DROP INDEX packages_delegated;
    CREATE INDEX packages_delegated ON packages (drone, cpv) WHERE status = 'delegated';
    """,
    # 13: the compiler flags each profile's scan saw (profiles of one
    # binhost must agree on them; swarm-sync checks builds against them).
    """
    ALTER TABLE profiles ADD COLUMN flags TEXT NOT NULL DEFAULT '{}';  -- JSON; {}: not known
    """,
    # 14: each event keeps the CPV it was about (a rescan changes a row's
    # CPV in place); old events get it from their history.
    _backfill_event_cpvs,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str | Path, create: bool = False, writer: bool = True) -> sqlite3.Connection:
    """Open the database, migrate it to this code's schema, refuse a newer one.

    create: start a new database when there is none (swarm-fresh, init);
    otherwise a missing or empty file is a configuration error. writer: the
    caller changes the swarm's state, which only the owner of the database
    (or its directory) may do: files another user made (root, from a hook)
    would lock that owner out.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(
            f"database directory {path.parent} does not exist "
            "(orchestrator.database / orchestrator.state_dir in the config)")
    exists = path.exists()
    if writer:
        check_owner(path if exists else path.parent)
    if not create and not exists:
        raise ConfigError(f"no database at {path}; run 'swarm-fresh' first "
                          "(or check orchestrator.database in the config)")
    # Empty: truncated, or a mistyped path touched by hand. (A command that
    # creates may find one that another is creating at this very moment.)
    if not create and exists and path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{path} is an empty file, not a swarmtools database; "
                          "remove it to start a new queue")
    # isolation_level=None: we issue BEGIN ourselves, so BEGIN IMMEDIATE is real.
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open database {path}: {exc}") from None
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        _retry_while_locked(lambda: _set_wal(conn))
        _migrate(conn, path)
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise TryLater(f"database {path} is busy: {exc}") from None
        raise ConfigError(f"cannot open database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(f"{path} is not a swarmtools database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def check_owner(path: Path) -> None:
    """Refuse to change the swarm's state as another user than the owner of PATH."""
    owner = path.stat().st_uid
    if os.geteuid() != owner:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = f"uid {owner}"
        raise ConfigError(
            f"{path} belongs to {name}: run this command as {name} "
            f"(e.g. su -s /bin/sh {name} -c '...'); files made by another user would lock "
            f"{name} out")


@contextmanager
def run_lock(lock_file: Path, database: Path, what: str, timeout: float = 0):
    """Hold a command's lock file for one run (as the state's owner); TryLater if another holds it."""
    from filelock import FileLock, Timeout

    check_owner(database if database.exists() else database.parent)
    lock = FileLock(str(lock_file), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise TryLater(f"another {what} holds {lock_file}; try again later") from None
    try:
        yield
    finally:
        lock.release()


def _set_wal(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")


def _retry_while_locked(action, seconds: float = BUSY_TIMEOUT_MS / 1000) -> None:
    # Switching to WAL takes a lock that SQLite's busy handler does not wait
    # for, so two commands creating the database at once must retry by hand.
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"database {path} has schema version {version}, newer than this swarmtools "
            f"({SCHEMA_VERSION}); upgrade swarmtools")
    if version == SCHEMA_VERSION:
        return
    with write(conn):
        # Re-read inside the lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            migration = MIGRATIONS[number]
            if callable(migration):
                migration(conn)
            else:
                for statement in _statements(migration):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction, so split by complete statements.
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


@contextmanager
def write(conn: sqlite3.Connection):
    """A write transaction: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise TryLater(f"database is busy ({exc}); try again") from None
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (a full disk) end the transaction by themselves.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
