"""The queue: fill it from a scan, incrementally, with every change in the history.

A package's place in the queue is its (category/package, SLOT): one row for
each slot the world needs. Its build identity is CPV, sub-slot, repository
and enabled USE; a rescan that changes the identity re-queues the row, one
that finds it gone retires it (kept, with its history), and anything else
leaves it and its state alone.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from . import clock, db, packages
from .binhost import Index
from .config import DEFAULT
from .emerge import MergeList, Row
from .errors import SwarmError
from .identity import differences
from .packages import NO_BUILD, Event, State

log = logging.getLogger(__name__)

ACTOR = "swarm-fresh"
# A scan that would retire more than half of the queue, and more than this
# many packages, is refused without --force: a broken world file makes emerge
# list nothing and exit 0.
MASS_RETIRE_MIN = 5
# What swarm-fresh counts, by the event that records it.
_COUNTED = {Event.ADDED: "added", Event.REQUEUED: "requeued", Event.RETIRED: "retired",
            Event.ON_BINHOST: "binary", Event.WANTED: "shared"}


@dataclass
class Change:
    """One change a scan made to the queue."""

    event: str  # added, requeued, retired, binary
    cpv: str
    detail: str = ""


@dataclass
class ScanResult:
    """What a scan changed, as counts and as a list."""

    total: int = 0
    unchanged: int = 0
    rejected: int = 0  # published builds Portage would not use
    events: Counter = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)

    def note(self, event: Event, cpv: str, detail: str = "") -> None:
        """Count one change and keep it for the listing."""
        self.events[event] += 1
        self.changes.append(Change(str(event), cpv, detail))

    @property
    def retired(self) -> int:
        return self.events[Event.RETIRED]

    def counts(self) -> dict[str, int]:
        """The summary swarm-fresh prints (--json keys)."""
        counted = {name: self.events[event] for event, name in _COUNTED.items()}
        return {"added": counted["added"], "requeued": counted["requeued"],
                "retired": counted["retired"], "unchanged": self.unchanged,
                "binary": counted["binary"], "shared": counted["shared"],
                "total": self.total}


class _DryRun(Exception):
    """Raised inside the write transaction to roll a dry run back."""


Identity = tuple[str, str, str, str, str]


def identity(row: Row) -> Identity:
    """The build identity of a scan row: what, when changed, needs a new build."""
    return (row.cpv, row.slot, row.subslot, row.repo, row.enabled_use())


def _stored_identity(pkg: sqlite3.Row) -> Identity:
    return (pkg["cpv"], pkg["slot"], pkg["subslot"] or "", pkg["repo"], pkg["use"])


class Verdict:
    """What the swarm's own binhost has, to weigh a scan's rows against.

    A ``[binary`` row counts as published only if the swarm's index lists
    that CPV (and build id) with the row's identity: Portage also prints it
    for binaries of the local PKGDIR or of another binhost. When the scan
    asked the binhost (``consulted``), an ``[ebuild`` row for a package the
    queue believes synced is Portage saying it would not use that binary:
    the package is built again.
    """

    def __init__(self, index: Index | None, consulted: bool):
        self.index = index
        self.consulted = consulted and index is not None

    def lists(self, row: Row) -> bool:
        """Whether the swarm's binhost has a build of this [binary row's identity."""
        if row.kind != "binary" or self.index is None:
            return False
        return any(not self.differences(row, entry) for entry in self.index.by_cpv(row.cpv))

    def differences(self, queued, entry: dict) -> list[str]:
        """How an index entry differs from a queued (or scanned) identity."""
        if isinstance(queued, Row):
            queued = dict(zip(("cpv", "slot", "subslot", "repo", "use"), identity(queued)))
        return differences(queued, entry, self.index.header.get("CHOST"), self.index.hidden())

    def why_not_usable(self, pkg: sqlite3.Row) -> str:
        """Why Portage would not take the published build of PKG (for the history)."""
        entries = self.index.by_cpv(pkg["cpv"]) if self.index else []
        listed = [e for e in entries if pkg["binhost_path"] in (None, e.get("PATH"))]
        if not listed:
            return "Portage would build it from source: the binhost's index does not list it"
        found = self.differences(dict(pkg), listed[0])
        return ("Portage would build it from source rather than use "
                f"{listed[0].get('PATH')}" + (f": {'; '.join(found)}" if found else
                                             " (its dependencies or CHOST differ)"))


NO_VERDICT = Verdict(None, False)


def apply_scan(conn: sqlite3.Connection, merge_list: MergeList, source: str, now: datetime,
               dry_run: bool = False, force: bool = False,
               verdict: Verdict = NO_VERDICT, profile: str = DEFAULT,
               binhost: str = DEFAULT) -> ScanResult:
    """Bring what PROFILE wants in line with its scan in one transaction; return what changed.

    Its builds are on BINHOST. What profiles gone from the config wanted is
    forgotten first (forget()).
    """
    rows = merge_list.packages()
    seen: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row.cp, row.slot)
        if key in seen:
            raise SwarmError(
                f"{row.cp}:{row.slot} is in the merge list twice (lines {seen[key].line_no} "
                f"and {row.line_no}); run emerge with --verbose so slots are shown")
        seen[key] = row
    result = ScanResult(total=len(rows))
    at = clock.iso(now)
    try:
        with db.write(conn):
            synced = conn.execute(
                "SELECT count(*) FROM packages p JOIN wants w ON w.package_id = p.id"
                " WHERE w.profile = ? AND w.active = 1 AND p.status = ?",
                (profile, State.SYNCED)).fetchone()[0]
            wants = _Wants(conn, profile, binhost)
            active = _reconcile(conn, rows, result, at, verdict, wants)
            # Builds left on another binhost (the profile moved) are not a broken scan.
            retired = result.retired - wants.moved
            if retired > MASS_RETIRE_MIN and retired * 2 > active and not force:
                raise SwarmError(
                    f"this scan would retire {retired} of {active} queued packages; "
                    "check the scan (emerge's warnings, the world file) or use --force")
            rejected = result.rejected
            if rejected > MASS_RETIRE_MIN and rejected * 2 > synced and not force:
                raise SwarmError(
                    f"Portage would rebuild {rejected} of {synced} published packages; check that "
                    "the scan uses the profile's settings and the binhost is the right one, "
                    "or use --force")
            if dry_run:
                raise _DryRun
            conn.execute(
                "INSERT INTO scans (at, source, rows, summary, profile) VALUES (?, ?, ?, ?, ?)",
                (at, source, len(rows), json.dumps(result.counts(), sort_keys=True), profile))
    except _DryRun:
        pass
    return result


class _Wants:
    """One profile's wants while its scan is applied (inside the write).

    A package row is one build (identity) on one binhost. Profiles that
    publish to one binhost share a build they want with the same identity;
    with another USE or version they get builds of their own there, side by
    side (Portage's multi-instance binhost: a client takes the one that
    matches its settings). A build changes only when no other profile wants
    it; it stays active while any profile wants it.
    """

    def __init__(self, conn: sqlite3.Connection, profile: str, binhost: str):
        self.conn, self.profile, self.binhost = conn, profile, binhost
        self.before = dict(conn.execute(  # package id -> its place in the last scan
            "SELECT package_id, scan_order FROM wants WHERE profile = ? AND active = 1",
            (profile,)).fetchall())
        # Builds other profiles want, with who wants them.
        self.others: dict[int, list[str]] = {}
        for pid, name in conn.execute(
                "SELECT package_id, profile FROM wants WHERE active = 1 AND profile != ?",
                (profile,)):
            self.others.setdefault(pid, []).append(name)
        self.kept: set[int] = set()  # builds this scan wants
        self.moved = 0  # builds retired on another binhost than the profile's

    def shared_with(self, package_id: int) -> list[str]:
        return self.others.get(package_id, [])

    def want(self, package_id: int, order: int, current: int | None = None) -> None:
        """This profile wants the build at place ORDER (CURRENT: the build's place now)."""
        self.kept.add(package_id)
        # A rescan changes few places: what did not change is not written.
        if self.before.get(package_id) != order:
            packages.want(self.conn, self.profile, package_id, order)
        if package_id in self.others or current != order:
            packages.place(self.conn, package_id)

    def drop(self, package_id: int) -> None:
        """This profile no longer wants the build."""
        packages.unwant(self.conn, package_id, self.profile)
        if package_id in self.others:
            packages.place(self.conn, package_id)


def forget(conn: sqlite3.Connection, profiles: list[str], binhosts: list[str], now: datetime,
           dry_run: bool = False) -> ScanResult:
    """Retire the builds no profile of the config wants (packages.unwanted): on a binhost
    gone from the config, or wanted only by profiles gone from it, whose
    wants end too. A profile of the config that wants the same build again
    brings it back, state and history kept.
    """
    result, at = ScanResult(), clock.iso(now)
    try:
        with db.write(conn):
            gone = [(package_id, why) for package_id, binhost, wanted_by in conn.execute(
                "SELECT id, binhost, (SELECT group_concat(profile, ' ') FROM wants"
                " WHERE package_id = packages.id AND active = 1) FROM packages WHERE active = 1")
                if (why := packages.unwanted(binhost, (wanted_by or "").split(), profiles,
                                             binhosts))]
            packages.unwant_all_but(conn, profiles)
            for package_id, why in gone:
                packages.unwant(conn, package_id)
                pkg = conn.execute("SELECT * FROM packages WHERE id = ?", (package_id,)).fetchone()
                _retire(conn, pkg, result, at, why)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return result


def _reconcile(conn: sqlite3.Connection, rows: list[Row], result: ScanResult, at: str,
               verdict: Verdict, wants: _Wants) -> int:
    """Apply the scan's rows; return how many packages the profile wanted before."""
    builds, retired = _builds(conn, wants.binhost)
    # What the profile wanted, by (cp, slot): one each (its merge list has one a slot).
    mine = {key: pkg for key, group in builds.items() for pkg in group
            if pkg["id"] in wants.before}
    for match in _matched(rows, builds, mine, retired, wants):
        _apply(conn, match, result, at, verdict, wants)
    _drop_unwanted(conn, result, at, wants)
    return len(mine)


Builds = dict[tuple[str, str], list[sqlite3.Row]]


def _builds(conn: sqlite3.Connection, binhost: str) -> tuple[Builds, Builds]:
    """The active and the retired builds on BINHOST by (cp, slot), oldest first: one read
    each, not one a row."""
    found: tuple[Builds, Builds] = ({}, {})
    for pkg in conn.execute("SELECT * FROM packages WHERE binhost = ? ORDER BY id", (binhost,)):
        found[0 if pkg["active"] else 1].setdefault((pkg["cp"], pkg["slot"]), []).append(pkg)
    return found


@dataclass
class _Match:
    """What one scan row is: HOW it matched the build PKG (for a new one: the retired row
    it comes back as, or None)."""

    order: int
    row: Row
    how: str  # same, shared, adopted, changed, slot, added
    pkg: sqlite3.Row | None


def _matched(rows: list[Row], builds: Builds, mine: dict, retired: Builds,
             wants: _Wants) -> list[_Match]:
    """Each scan row's build, in the order they are applied (reads and writes nothing)."""
    matched, unmatched = [], []
    for order, row in enumerate(rows):
        key = (row.cp, row.slot)
        same = next((p for p in builds.get(key, ()) if _stored_identity(p) == identity(row)), None)
        own = mine.get(key)
        if same is not None and own is not None and same["id"] == own["id"]:
            matched.append(_Match(order, row, "same", own))
        elif same is not None and wants.shared_with(same["id"]):
            # Another profile wants this very build: one build serves both.
            matched.append(_Match(order, row, "shared", same))
        elif same is not None:  # a build nobody wants any more (its profile left): adopted
            matched.append(_Match(order, row, "adopted", same))
        elif own is not None and not wants.shared_with(own["id"]):
            matched.append(_Match(order, row, "changed", own))  # its identity changed
        else:
            unmatched.append((order, row))
    # A slot change keeps the package's row: pair what is left by category/package.
    keys = {(row.cp, row.slot) for row in rows}
    leftover_by_cp: dict[str, list[sqlite3.Row]] = {}
    for key, pkg in mine.items():
        if key not in keys and not wants.shared_with(pkg["id"]):
            leftover_by_cp.setdefault(pkg["cp"], []).append(pkg)
    for order, row in unmatched:
        if candidates := leftover_by_cp.get(row.cp):
            matched.append(_Match(order, row, "slot", candidates.pop(0)))
            continue
        # Back in the world: the retired row of the same identity, else the latest.
        gone = retired.get((row.cp, row.slot), [])
        back = next((p for p in gone if _stored_identity(p) == identity(row)),
                    gone[-1] if gone else None)
        matched.append(_Match(order, row, "added", back))
    return matched


def _apply(conn: sqlite3.Connection, match: _Match, result: ScanResult, at: str,
           verdict: Verdict, wants: _Wants) -> None:
    """Bring one build in line with its scan row; this profile wants it."""
    order, row, pkg = match.order, match.row, match.pkg
    if match.how == "shared":
        packages.note(conn, pkg["id"], Event.WANTED, actor=ACTOR, at=at,
                      detail=f"wanted by profile {wants.profile} too")
        wants.want(pkg["id"], order, pkg["scan_order"])
        result.note(Event.WANTED, row.cpv,
                    "shared with profile " + ", ".join(wants.shared_with(pkg["id"])))
    elif match.how == "added":
        package_id = _add(conn, row, order, pkg, result, at, verdict, wants.binhost)
        wants.want(package_id, order, order)
    else:
        shared = match.how == "same" and bool(wants.shared_with(pkg["id"]))
        _update(conn, pkg, row, order, result, at, verdict, shared=shared)
        wants.want(pkg["id"], order, pkg["scan_order"])


def _drop_unwanted(conn: sqlite3.Connection, result: ScanResult, at: str,
                   wants: _Wants) -> None:
    """What the profile wanted and its scan does not: retired, unless others want it."""
    # All it wanted, on any binhost: a profile moved to another binhost
    # leaves its builds on the old one to the profiles still there.
    for pkg in conn.execute("SELECT p.* FROM packages p JOIN wants w ON w.package_id = p.id"
                            " WHERE w.profile = ? AND w.active = 1 ORDER BY p.id",
                            (wants.profile,)).fetchall():
        if pkg["id"] in wants.kept:
            continue
        wants.drop(pkg["id"])
        if others := wants.shared_with(pkg["id"]):
            packages.note(conn, pkg["id"], Event.UNWANTED, actor=ACTOR, at=at,
                          detail=f"profile {wants.profile} no longer wants it; "
                                 f"{', '.join(others)} still do")
        else:
            _retire(conn, pkg, result, at)
            wants.moved += pkg["binhost"] != wants.binhost


def _retire(conn: sqlite3.Connection, pkg: sqlite3.Row, result: ScanResult, at: str,
            why: str = "no longer in the merge list") -> None:
    packages.retire(conn, pkg, actor=ACTOR, at=at, why=why)
    result.note(Event.RETIRED, pkg["cpv"])


def _update(conn, pkg: sqlite3.Row, row: Row, order: int, result: ScanResult, at: str,
            verdict: Verdict, shared: bool = False) -> None:
    old, new = _stored_identity(pkg), identity(row)
    published = verdict.lists(row)
    if old == new:
        if published and pkg["status"] in (State.NEEDED, State.FAILED):
            _rebuild(conn, pkg, row, State.SYNCED, Event.ON_BINHOST, _on_binhost(row), result, at)
        elif verdict.consulted and not published and pkg["status"] == State.SYNCED and shared:
            # Another profile wants this build as it is: one profile's scan
            # does not take it from the other (each scan would rebuild it).
            log.warning("%s: %s (for this profile; another profile shares the build, so it "
                        "is not rebuilt)", row.cpv, verdict.why_not_usable(pkg))
            result.unchanged += 1
        elif verdict.consulted and not published and pkg["status"] == State.SYNCED:
            # Portage's verdict wins over the queue's word "synced".
            _rebuild(conn, pkg, row, State.NEEDED, Event.REQUEUED, verdict.why_not_usable(pkg),
                     result, at)
            result.rejected += 1
        else:
            result.unchanged += 1
        return
    detail = "; ".join(
        f"{name} {a or '-'} -> {b or '-'}"
        for name, a, b in zip(("cpv", "slot", "subslot", "repo", "use"), old, new) if a != b)
    if published:
        _rebuild(conn, pkg, row, State.SYNCED, Event.ON_BINHOST, f"{detail}; {_on_binhost(row)}",
                 result, at)
    else:
        _rebuild(conn, pkg, row, State.NEEDED, Event.REQUEUED, detail, result, at)


def _identity_columns(row: Row) -> dict:
    return {"cpv": row.cpv, "slot": row.slot, "subslot": row.subslot or None, "repo": row.repo,
            "use": row.enabled_use()}


def _rebuild(conn, pkg, row: Row, to: State, event: Event, detail: str, result: ScanResult,
             at: str, **columns) -> None:
    # The identity changed (or the binhost has it): whatever build the row
    # had is not this one; with another identity its dependencies may differ too.
    if identity(row) != _stored_identity(pkg):
        columns["resolved"] = None
    packages.move(conn, pkg["id"], expect=pkg["status"], to=to, event=event, actor=ACTOR,
                  at=at, detail=detail, **{**NO_BUILD, "build_id": row.build_id,
                                           **_identity_columns(row), **columns})
    result.note(event, row.cpv, detail)


def _add(conn, row: Row, order: int, retired: sqlite3.Row | None, result: ScanResult,
         at: str, verdict: Verdict, binhost: str) -> int:
    """Queue a package no build on the binhost is for; its row's id."""
    published = verdict.lists(row)
    if retired and _stored_identity(retired) == identity(row) and not published:
        # Back unchanged (after a bad scan, say): it keeps its state too.
        packages.note(conn, retired["id"], Event.ADDED, actor=ACTOR, at=at,
                      detail="back in the merge list, unchanged", active=1, scan_order=order,
                      updated_at=at)
        result.note(Event.ADDED, row.cpv, "back, unchanged")
        return retired["id"]
    status, event = ((State.SYNCED, Event.ON_BINHOST) if published
                     else (State.NEEDED, Event.ADDED))
    detail = (_on_binhost(row) if published else
              "a binary elsewhere, not on the swarm's binhost" if row.kind == "binary" else "")
    if retired:
        # Back in the world: the same row, so its history stays in one place.
        _rebuild(conn, retired, row, status, event, detail or "back in the merge list", result,
                 at, active=1, scan_order=order)
        return retired["id"]
    package_id = packages.insert(conn, at=at, event=event, actor=ACTOR, detail=detail, cp=row.cp,
                                 status=status, scan_order=order, build_id=row.build_id,
                                 binhost=binhost, **_identity_columns(row))
    result.note(event, row.cpv, detail)
    return package_id


def _on_binhost(row: Row) -> str:
    build = f" (build id {row.build_id})" if row.build_id is not None else ""
    return f"already on the binhost{build}"
