"""What is not built, or not where: exclusion rules, failure memory, grounded drones.

A rule is a Portage atom, wildcards allowed (``media-video/nvidia-drivers``,
``*/*-bin``, ``>=sys-devel/gcc-15``, ``dev-lang/rust:*``,
``sys-apps/*::gentoo``), matched with Portage's own ``Atom`` and
``match_from_list`` (:mod:`atoms`); it holds for every drone, one drone, or one build class
(the drones with the same CHOST and CFLAGS), with a reason, a source
(``manual``, ``auto``, or the ``file`` named by ``exclude.file``, in
package.mask syntax), who and when, and maybe an end. Which queued packages
each rule matches is kept in the table ``excluded`` (made again when rules,
the file or the queue change), so a claim tests it in SQL. Portage matches
while no transaction is open; the writes that store what it found are short
(:func:`refresh`, :func:`add`), so claims never wait for matching.

Failure memory: a package that fails ``exclude.auto_failures`` times on
drones of one build class, on two of them at least (one drone, broken or
lying about its CHOST and CFLAGS, cannot exclude a package), is excluded
for that class (``auto``), and everywhere once it failed so in every class
of the known drones (a drone counts in the class it says it is of now,
never in two); the rule ends when the package's identity changes or after
``exclude.auto_days``. Only build failures count: a drone's trouble (a
full disk, a failed fetch, a lost connection, a missing binary dependency,
a refused upload) is not the package's. A drone whose builds fail
``exclude.ground_after`` times in a row is grounded for
``exclude.ground_seconds``: those failures were its own, so they count
against no package (and the automatic rules they founded end).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import clock, db, packages, routing
from .atoms import BadAtom, Pools, Queued, identity_key, parse_atom, versioned
from .config import Config
from .errors import ExitCode, SwarmError, TryLater
from .packages import Event, FailureKind, State

log = logging.getLogger(__name__)

# Failures that say something about the package (the rest: about the drone).
PACKAGE_FAILURES = (FailureKind.BUILD, FailureKind.STALLED)


@dataclass
class Rule:
    """One exclusion rule as stored."""

    id: int
    atom: str
    drone: str | None
    build_class: str | None
    reason: str
    source: str
    who: str
    at: str
    until: str | None
    identity: str | None = None
    log: str | None = None  # auto: the last failure's kept log

    def label(self) -> str:
        """rule ID, or FILE line N for a rule of exclude.file."""
        return f"rule {self.id}" if self.source != "file" else self.reason

    def scope(self) -> str:
        if self.drone:
            return f"drone {self.drone}"
        if self.build_class:
            return f"class {self.build_class}"
        return "every drone"

    def to_dict(self) -> dict:
        return {"id": self.id, "atom": self.atom, "drone": self.drone, "class": self.build_class,
                "reason": self.reason, "source": self.source, "who": self.who, "at": self.at,
                "until": self.until, "log": self.log}


def rules(conn: sqlite3.Connection, now: datetime, auto_only: bool = False) -> list[Rule]:
    """The rules in force (an ended one is not), oldest first."""
    return [Rule(r["id"], r["atom"], r["drone"], r["class"], r["reason"], r["source"], r["who"],
                 r["at"], r["until"], r["identity"], r["log"])
            for r in conn.execute(
                "SELECT * FROM exclusions WHERE (until IS NULL OR until > ?)"
                " AND (? = 0 OR source = 'auto') ORDER BY id", (clock.iso(now), auto_only))]


# A refresh or an add that found the queue or the rules changed under it
# matches again; after this many tries the caller is told to try later.
ATTEMPTS = 3


def add(conn: sqlite3.Connection, config: Config, atoms: list[tuple[int, str]], reason: str,
        who: str, now: datetime, drone: str | None = None, until: str | None = None) -> list[dict]:
    """Add manual rules (LINE, ATOM) all or none; returns each with what it matches.

    The atoms are parsed and matched to the queue before the write, which
    only stores them: a hundred thousand rules hold the database for a
    fraction of a second.
    """
    if drone is not None and drone not in config.drones:
        raise SwarmError(f"unknown drone '{drone}': add a [drones.{drone}] table to {config.path}",
                         ExitCode.USAGE)
    parsed = []
    for line, text in atoms:
        try:
            parsed.append(parse_atom(versioned(text)))
        except BadAtom as exc:
            raise BadAtom(f"line {line}: {exc}; nothing was added") from None
    made = json.dumps([(str(atom), reason) for atom in parsed])
    for _ in range(ATTEMPTS):
        with _reading(conn):
            current = stamp(conn, config)[0]
            pools = Pools(_queued(conn))
        matched = [pools.match(atom) for atom in parsed]
        pairs = json.dumps([(item.id, i) for i, items in enumerate(matched) for item in items])
        with db.write(conn):
            if stamp(conn, config)[0] != current:
                continue  # a scan came in between: match again
            first = _insert_rules(conn, "manual", made, drone, who, clock.iso(now), until)
            _insert_matches(conn, first, drone, until, pairs)
            _rules_changed(conn)
        return [{"id": first + i, "atom": str(atom), "drone": drone, "matches": len(items)}
                for i, (atom, items) in enumerate(zip(parsed, matched))]
    raise _changing()


def remove(conn: sqlite3.Connection, config: Config, selectors: list[str], now: datetime) -> int:
    """Remove rules by id or atom (file rules live in their file); how many."""
    removed = 0
    with db.write(conn):
        for selector in selectors:
            column = "id" if selector.isdigit() else "atom"
            value = int(selector) if column == "id" else selector
            conn.execute(f"DELETE FROM excluded WHERE rule_id IN (SELECT id FROM exclusions"
                         f" WHERE {column} = ? AND source != 'file')", (value,))
            removed += conn.execute(
                f"DELETE FROM exclusions WHERE {column} = ? AND source != 'file'",
                (value,)).rowcount
        _rules_changed(conn)
    return removed


def matching(conn: sqlite3.Connection, config: Config, cpv: str, drone: str | None,
             now: datetime) -> list[Rule]:
    """The rules that keep CPV (a queued package or any CATEGORY/PF) from DRONE (or anyone)."""
    from portage.dep import match_from_list
    from portage.versions import _pkg_str, catpkgsplit

    if "/" not in cpv or catpkgsplit(cpv) is None:
        raise BadAtom(f"'{cpv}' is not CATEGORY/PF (a package name and version, e.g. "
                      "app-misc/foo-1.0)")
    row = conn.execute("SELECT cpv, slot, subslot, repo, use FROM packages WHERE cpv = ?"
                       " AND active = 1", (cpv,)).fetchone()
    slot = (f"{row['slot']}/{row['subslot']}" if row and row["subslot"] else
            row["slot"] if row else "0")
    package = _pkg_str(cpv, slot=slot, repo=(row["repo"] or None) if row else None)
    facts = _facts(conn, drone) if drone else {}
    found = []
    # The file as it is now, not as last matched.
    in_force = [r for r in rules(conn, now) if r.source != "file"] + file_rules(config)
    for rule in in_force:
        if drone and rule.drone not in (None, drone):
            continue
        if drone and rule.build_class not in (None, routing.build_class(facts)):
            continue
        if match_from_list(parse_atom(rule.atom), [package]) and (
                rule.identity is None or row is None or rule.identity == identity_key(row)):
            found.append(rule)
    return found


def listing(conn: sqlite3.Connection, config: Config, now: datetime,
            auto_only: bool = False) -> list[dict]:
    """The rules in force with how many queued packages each matches (for swarm-exclude list)."""
    file_rules(config)  # a bad line is an error here, not a log entry
    refresh(conn, config, now, only_if_stale=True)
    matches = dict(conn.execute("SELECT rule_id, count(*) FROM excluded GROUP BY rule_id"))
    return [{**rule.to_dict(), "scope": rule.scope(), "matches": matches.get(rule.id, 0)}
            for rule in rules(conn, now, auto_only)]


def file_rules(config: Config) -> list[Rule]:
    """The rules of exclude.file: one atom a line, # comments (package.mask syntax)."""
    path = config.exclude.file
    if not path:
        return []
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SwarmError(f"exclude.file {path}: {exc.strerror}") from None
    found = []
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode().split("#", 1)[0].strip()
        except UnicodeDecodeError:
            raise BadAtom(f"{path} line {number}: not UTF-8 text (save the file as UTF-8)") \
                from None
        if line:
            try:
                atom = str(parse_atom(line))
            except BadAtom as exc:
                raise BadAtom(f"{path} line {number}: {exc}") from None
            found.append(Rule(-number, atom, None, None, f"{Path(path).name} line {number}",
                              "file", "file", "", None))
    return found


def _file_signature(config: Config) -> str:
    """The exclusion file as stat() sees it: a change of it changes this."""
    path = config.exclude.file
    if not path:
        return ""
    try:
        st = Path(path).stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def stamp(conn: sqlite3.Connection, config: Config) -> tuple[str, str | None]:
    """(What the matches depend on now, what they were made from).

    They depend on the latest scan, the scan's ARCH and the build profile's,
    the exclusion file and the routes. Asked at every claim: one query and one stat().
    """
    scan, arch, built_for, made = conn.execute(
        "SELECT (SELECT max(id) FROM scans), (SELECT value FROM resolve_state WHERE key = 'arch'),"
        f" ({routing.FINGERPRINT}), (SELECT value FROM control_state WHERE key = 'stamp')"
    ).fetchone()
    parts = [f"scan {scan}", f"arch {arch or None}", f"profiles {built_for}",
             json.dumps([[r.match, r.requires] for r in config.route]), _file_signature(config)]
    return hashlib.sha1(" ".join(parts).encode()).hexdigest()[:16], made


def up_to_date(conn: sqlite3.Connection, config: Config) -> bool:
    """Whether the stored matches were made from the scan, file and routes of now."""
    current, made = stamp(conn, config)
    return current == made


@dataclass
class _Seen:
    """What matching reads, in one read transaction."""

    stamp: str
    made: str | None
    rules_version: str | None
    file_signature: str
    file_read: str | None  # the file's signature when it was last read
    queued: list[Queued]
    rules: list[Rule]
    built_for: dict
    fallback: str | None


@dataclass
class _Matches:
    """What a refresh writes, worked out (as JSON arrays of rows) before the write."""

    seen: _Seen
    file: str | None      # (atom, reason) of the file's rules, read now; None: the stored stay
    file_matches: str     # (package id, index of the file's rule)
    ended: list[int]      # automatic rules whose package changed identity
    excluded: str         # (package id, rule id, drone, class, until) of the other rules
    requirements: str     # (package id, feature, why)


def refresh(conn: sqlite3.Connection, config: Config, now: datetime,
            only_if_stale: bool = False) -> bool:
    """Which queued packages each rule matches, and what each requires of a drone.

    Called with no transaction open (after a scan, by a claim that found the
    matches stale, by swarm-exclude list). The queue and the rules are read,
    Portage matches them while the database is free, and one short write
    stores the result if nothing changed meanwhile (else it matches again).
    An automatic rule whose package changed identity (a new version, other
    USE) ends here: it was made for a build that is not wanted any more.
    ONLY_IF_STALE: only if a scan, the exclusion file or the routes changed
    since the last time. Returns whether it matched.
    """
    for _ in range(ATTEMPTS):
        if only_if_stale and up_to_date(conn, config):
            return False  # (before reading the whole queue)
        seen = _read(conn, config, now)
        found = _match(config, seen)
        with db.write(conn):
            if (stamp(conn, config)[0], _rules_version(conn)) != (seen.stamp, seen.rules_version):
                continue  # a scan, an edit or a rule came in between: match again
            _store(conn, config, found, now)
        return True
    raise _changing()


@contextlib.contextmanager
def _reading(conn: sqlite3.Connection):
    """One read transaction: what is read together was true together."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _queued(conn: sqlite3.Connection) -> list[Queued]:
    return [Queued(r) for r in conn.execute(
        "SELECT id, cpv, cp, slot, subslot, repo, use FROM packages WHERE active = 1")]


def _read(conn: sqlite3.Connection, config: Config, now: datetime) -> _Seen:
    with _reading(conn):
        current, made = stamp(conn, config)
        return _Seen(current, made, _rules_version(conn), _file_signature(config),
                     _state(conn, "file"), _queued(conn), rules(conn, now),
                     routing.targets(conn), routing.fallback_arch(conn))


def _match(config: Config, seen: _Seen) -> _Matches:
    """Portage's part of a refresh: no database."""
    file = None
    if seen.file_signature != seen.file_read:
        # A bad line (or no UTF-8 text) must not stop every drone: the
        # previous rules stay until it is fixed (swarm-exclude list says what
        # is wrong), and it is read again when it changes.
        try:
            file = file_rules(config)
        except SwarmError as exc:
            log.error("the exclusion file was not read again, its previous rules stay: %s", exc)
    identities = {q.identity for q in seen.queued}
    ended = {r.id for r in seen.rules
             if r.source == "auto" and r.identity is not None and r.identity not in identities}
    kept = [r for r in seen.rules
            if r.id not in ended and not (file is not None and r.source == "file")]
    pools = Pools(seen.queued)
    excluded = [(item.id, rule.id, rule.drone, rule.build_class, rule.until) for rule in kept
                for item in pools.match(parse_atom(rule.atom))
                if rule.identity is None or rule.identity == item.identity]
    file_matches = [(item.id, i) for i, rule in enumerate(file or [])
                    for item in pools.match(parse_atom(rule.atom))]
    requirements = routing.requirements(config, pools, seen.built_for, seen.fallback)
    return _Matches(seen, None if file is None else json.dumps([(r.atom, r.reason) for r in file]),
                    json.dumps(file_matches), sorted(ended), json.dumps(excluded),
                    json.dumps(requirements))


def _store(conn: sqlite3.Connection, config: Config, found: _Matches, now: datetime) -> None:
    """A refresh's write: the matches found replace the stored ones."""
    at = clock.iso(now)
    conn.executemany("UPDATE exclusions SET until = ?, reason = reason || ? WHERE id = ?",
                     [(at, "; ended: the package changed", rule_id) for rule_id in found.ended])
    conn.execute("DELETE FROM excluded")
    conn.execute("INSERT OR IGNORE INTO excluded (package_id, rule_id, drone, class, until) SELECT"
                 f" {_column(0)}, {_column(1)}, {_column(2)}, {_column(3)}, {_column(4)}"
                 " FROM json_each(?)", (found.excluded,))
    if found.file is not None:
        # The file's atoms become rows (source 'file') so excluded can point at them.
        conn.execute("DELETE FROM exclusions WHERE source = 'file'")
        first = _insert_rules(conn, "file", found.file, None, config.exclude.file, at, None)
        _insert_matches(conn, first, None, None, found.file_matches)
    conn.execute("DELETE FROM requirements")
    conn.execute("INSERT OR IGNORE INTO requirements (package_id, feature, why)"
                 f" SELECT {_column(0)}, {_column(1)}, {_column(2)} FROM json_each(?)",
                 (found.requirements,))
    _set_state(conn, "stamp", found.seen.stamp)
    _set_state(conn, "file", found.seen.file_signature)
    _rules_changed(conn)


# Rows by the ten thousand go in as one JSON array, in one statement: SQLite
# loops over it in C, several times faster than executemany, and the array
# is made before the write (which is that much shorter).
def _column(index: int) -> str:
    return f"json_extract(value, '$[{index}]')"


def _insert_rules(conn: sqlite3.Connection, source: str, rules_: str, drone: str | None,
                  who: str, at: str, until: str | None) -> int:
    """Store RULES_ ((atom, reason) rows, a JSON array); the id of the first (the others follow)."""
    first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM exclusions").fetchone()[0]
    conn.execute("INSERT INTO exclusions (id, atom, drone, reason, source, who, at, until)"
                 f" SELECT ? + key, {_column(0)}, ?, {_column(1)}, ?, ?, ?, ? FROM json_each(?)",
                 (first, drone, source, who, at, until, rules_))
    return first


def _insert_matches(conn: sqlite3.Connection, first: int, drone: str | None,
                    until: str | None, pairs: str) -> None:
    """Store PAIRS (package id, index of the rule from FIRST on; a JSON array) in excluded."""
    conn.execute("INSERT OR IGNORE INTO excluded (package_id, rule_id, drone, class, until)"
                 f" SELECT {_column(0)}, ? + {_column(1)}, ?, NULL, ? FROM json_each(?)",
                 (first, drone, until, pairs))


def _state(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM control_state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set_state(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO control_state (key, value) VALUES (?, ?)", (key, value))


def _rules_version(conn: sqlite3.Connection) -> str | None:
    """Changes whenever a rule is added, removed or ended (a refresh then matches again)."""
    return _state(conn, "rules")


def _rules_changed(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO control_state (key, value) VALUES ('rules', '1') ON CONFLICT (key)"
                 " DO UPDATE SET value = CAST(value AS INTEGER) + 1")


def _changing() -> TryLater:
    return TryLater(f"the queue or the exclusion rules changed while they were matched, "
                    f"{ATTEMPTS} times; try again")


def _facts(conn: sqlite3.Connection, drone: str) -> dict:
    row = conn.execute("SELECT facts FROM drones WHERE name = ?", (drone,)).fetchone()
    return json.loads(row[0]) if row else {}


def after_failure(conn: sqlite3.Connection, config: Config, drone: str, package_id: int,
                  kind: FailureKind, now: datetime, log_path: str | None = None) -> dict:
    """Failure memory and drone health after a failed build (in the report's transaction).

    Returns what it did: {"excluded": class or "everywhere" or None, "grounded": until or None}.
    """
    done = {"excluded": None, "grounded": None}
    streak = _failures_in_a_row(conn, drone)
    if len(streak) >= config.exclude.ground_after:
        done["grounded"] = _ground(conn, config, drone, streak, now)
        return done
    if kind not in PACKAGE_FAILURES:
        return done
    my_class = routing.build_class(_facts(conn, drone))
    if my_class is None:
        return done
    pkg = conn.execute("SELECT * FROM packages WHERE id = ?", (package_id,)).fetchone()
    tally = _tally(conn, pkg)
    if not _condemned(config, tally.get(my_class, {})):
        return done
    everywhere = _everywhere(conn, config, tally)
    failing = tally[my_class]
    reason = (f"failed {sum(failing.values())} times on {len(failing)} drones of class "
              f"{my_class} ({', '.join(sorted(failing))})"
              + ("; it has now failed so in every class of the known drones" if everywhere
                 else ""))
    until = clock.later(now, config.exclude.auto_days * 86400)
    rule_id = conn.execute(
        "INSERT INTO exclusions (atom, drone, class, reason, source, who, at, until, identity, log)"
        " VALUES (?, NULL, ?, ?, 'auto', ?, ?, ?, ?, ?)",
        (f"={pkg['cpv']}", None if everywhere else my_class, reason, drone, clock.iso(now),
         until, identity_key(pkg), log_path)).lastrowid
    conn.execute("INSERT OR IGNORE INTO excluded (package_id, rule_id, drone, class, until)"
                 " VALUES (?, ?, NULL, ?, ?)",
                 (package_id, rule_id, None if everywhere else my_class, until))
    _rules_changed(conn)
    packages.note(conn, package_id, Event.EXCLUDED, actor="swarm-exclude", at=clock.iso(now),
                  detail=reason, drone=drone)
    done["excluded"] = "everywhere" if everywhere else my_class
    return done


# A class is excluded only on failures of this many of its drones: one drone
# (broken, or lying about its CHOST and CFLAGS) cannot exclude a package.
MIN_DRONES = 2


def _condemned(config: Config, failing: dict[str, int]) -> bool:
    """Whether FAILING ({drone: build failures}, drones of one class) excludes for the class."""
    return sum(failing.values()) >= config.exclude.auto_failures and len(failing) >= MIN_DRONES


def _everywhere(conn: sqlite3.Connection, config: Config, tally: dict[str, dict[str, int]]) -> bool:
    """Whether every class of the known drones is condemned (each drone counted in one)."""
    return all(_condemned(config, tally.get(c, {})) for c in known_classes(conn, config))


def known_classes(conn: sqlite3.Connection, config: Config) -> set[str]:
    """The build classes of the configured drones that sent their facts."""
    return {c for name, facts in conn.execute("SELECT name, facts FROM drones")
            if name in config.drones and (c := routing.build_class(json.loads(facts))) is not None}


def _tally(conn: sqlite3.Connection, pkg) -> dict[str, dict[str, int]]:
    """Build failures of PKG's current identity (grounded drones' not), by class and drone.

    A drone counts in the class its facts say now, so one that changes its
    CHOST or CFLAGS between failures never counts in two classes.
    """
    since = conn.execute(
        "SELECT max(id) FROM events WHERE package_id = ? AND event IN (?, ?, ?)",
        (pkg["id"], Event.ADDED, Event.REQUEUED, Event.ON_BINHOST)).fetchone()[0] or 0
    tally: dict[str, dict[str, int]] = {}
    for drone, facts, failures in conn.execute(
            "SELECT e.drone, d.facts, count(*) FROM events e JOIN drones d ON d.name = e.drone"
            " WHERE e.package_id = ? AND e.event = ? AND e.id > ? AND e.kind IN (?, ?)"
            " AND e.id NOT IN (SELECT event_id FROM forgiven) GROUP BY e.drone",
            (pkg["id"], Event.BUILD_FAILED, since, *PACKAGE_FAILURES)):
        if (build_class := routing.build_class(json.loads(facts))) is not None:
            tally.setdefault(build_class, {})[drone] = failures
    return tally


def _lift_unfounded(conn: sqlite3.Connection, config: Config, package_ids: set[int],
                    now: datetime) -> None:
    """End the automatic rules of these packages that their failures no longer found."""
    lifted = []
    for package_id in package_ids:
        pkg = conn.execute("SELECT * FROM packages WHERE id = ?", (package_id,)).fetchone()
        tally = _tally(conn, pkg)
        for rule_id, build_class in conn.execute(
                "SELECT id, class FROM exclusions WHERE source = 'auto' AND identity = ?"
                " AND (until IS NULL OR until > ?)", (identity_key(pkg), clock.iso(now))):
            if not (_condemned(config, tally.get(build_class, {})) if build_class
                    else _everywhere(conn, config, tally)):
                lifted.append((rule_id,))
    if lifted:  # (a new rules version makes a running refresh match again)
        conn.executemany("DELETE FROM excluded WHERE rule_id = ?", lifted)
        conn.executemany("DELETE FROM exclusions WHERE id = ?", lifted)
        _rules_changed(conn)


def _failures_in_a_row(conn: sqlite3.Connection, drone: str) -> list[tuple]:
    """This drone's latest outcomes that were failures, newest first, until a success."""
    streak = []
    for event in conn.execute(
            "SELECT package_id, event, kind, at, id FROM events WHERE drone = ?"
            " AND event IN (?, ?, ?, ?, ?) ORDER BY id DESC",
            (drone, Event.BUILT, Event.BUILD_FAILED, Event.QUARANTINED, Event.GROUNDED,
             Event.UNGROUNDED)):
        if event["event"] in (Event.BUILT, Event.GROUNDED, Event.UNGROUNDED):
            break
        if event["kind"] == FailureKind.MISSING_DEPENDENCY:
            continue  # waiting is not failing
        streak.append(tuple(event))
    return streak


def _ground(conn, config: Config, drone: str, streak: list[tuple], now: datetime) -> str:
    """Ground DRONE; its failures were its own: their packages get their attempt back."""
    until = clock.later(now, config.exclude.ground_seconds)
    reason = f"{len(streak)} failures in a row (the last: {streak[0][3]})"
    conn.execute("UPDATE drones SET grounded_until = ?, grounded_reason = ? WHERE name = ?",
                 (until, reason, drone))
    at = clock.iso(now)
    conn.executemany("INSERT OR IGNORE INTO forgiven (event_id) VALUES (?)",
                     [(event_id,) for *_, event_id in streak])
    # And what those failures excluded automatically on the way is lifted.
    _lift_unfounded(conn, config, {p for p, *_ in streak if p is not None}, now)
    counted: dict[int, int] = {}  # attempts those failures counted, a package
    for package_id, _, kind, _, _ in streak:
        if kind in PACKAGE_FAILURES:
            counted[package_id] = counted.get(package_id, 0) + 1
    for package_id, failures in counted.items():
        pkg = conn.execute("SELECT status, attempts FROM packages WHERE id = ?",
                           (package_id,)).fetchone()
        attempts = max(pkg["attempts"] - failures, 0)
        detail = f"{failures} failure(s) were {drone}'s (grounded): not counted"
        if pkg["status"] == State.FAILED:
            packages.move(conn, package_id, expect=State.FAILED, to=State.NEEDED,
                          event=Event.RETRY, actor="swarm-exclude", at=at, event_drone=drone,
                          detail=detail, attempts=attempts, retry_after=None)
        elif pkg["status"] == State.NEEDED:
            packages.update(conn, package_id, attempts=attempts, retry_after=None)
    packages.note(conn, None, Event.GROUNDED, actor="swarm-exclude", at=at,
                  detail=f"{drone} grounded until {until}: {reason}", drone=drone)
    log.warning("drone %s grounded until %s: %s", drone, until, reason)
    return until


def unground(conn: sqlite3.Connection, config: Config, drone: str, now: datetime) -> dict:
    """Lift a drone's grounding by hand."""
    if drone not in config.drones:
        raise SwarmError(f"unknown drone '{drone}'", ExitCode.USAGE)
    with db.write(conn):
        conn.execute("UPDATE drones SET grounded_until = NULL, grounded_reason = NULL WHERE name = ?",
                     (drone,))
        packages.note(conn, None, Event.UNGROUNDED, actor="swarm-delegate", at=clock.iso(now),
                      detail=f"{drone}: grounding lifted by hand", drone=drone)
    return {"drone": drone, "grounded_until": None}
