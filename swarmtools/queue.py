"""The queue: fill it from a scan, incrementally, with every change in the history.

A package's place in the queue is its (category/package, SLOT): one row for
each slot the world needs. Its build identity is CPV, sub-slot, repository
and enabled USE; a rescan that changes the identity re-queues the row, one
that finds it gone retires it (kept, with its history), and anything else
leaves it and its state alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from . import clock, db, packages
from .binhost import Index
from .emerge import MergeList, Row
from .errors import SwarmError
from .identity import differences
from .packages import NO_BUILD, Event, State

ACTOR = "swarm-fresh"
# A scan that would retire more than half of the queue, and more than this
# many packages, is refused without --force: a broken world file makes emerge
# list nothing and exit 0.
MASS_RETIRE_MIN = 5
# What swarm-fresh counts, by the event that records it.
_COUNTED = {Event.ADDED: "added", Event.REQUEUED: "requeued", Event.RETIRED: "retired",
            Event.ON_BINHOST: "binary"}


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
                "binary": counted["binary"], "total": self.total}


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
               verdict: Verdict = NO_VERDICT) -> ScanResult:
    """Bring the queue in line with a scan in one transaction; return what changed."""
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
            synced = conn.execute("SELECT count(*) FROM packages WHERE active = 1 AND status = ?",
                                  (State.SYNCED,)).fetchone()[0]
            active = _reconcile(conn, rows, result, at, verdict)
            if result.retired > MASS_RETIRE_MIN and result.retired * 2 > active and not force:
                raise SwarmError(
                    f"this scan would retire {result.retired} of {active} queued packages; "
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
                "INSERT INTO scans (at, source, rows, summary) VALUES (?, ?, ?, ?)",
                (at, source, len(rows), json.dumps(result.counts(), sort_keys=True)))
    except _DryRun:
        pass
    return result


def _reconcile(conn: sqlite3.Connection, rows: list[Row], result: ScanResult, at: str,
               verdict: Verdict) -> int:
    """Apply the scan's rows; return how many packages were active before."""
    active = {(p["cp"], p["slot"]): p for p in conn.execute("SELECT * FROM packages WHERE active = 1")}
    active_before = len(active)
    # The newest retired row of each (cp, slot): one read, not one a row.
    retired = {(p["cp"], p["slot"]): p for p in conn.execute(
        "SELECT * FROM packages WHERE active = 0 ORDER BY id")}
    unmatched_rows = []
    for order, row in enumerate(rows):
        pkg = active.pop((row.cp, row.slot), None)
        if pkg is None:
            unmatched_rows.append((order, row))
        else:
            _update(conn, pkg, row, order, result, at, verdict)
    # A slot change keeps the package's row: pair what is left by category/package.
    leftover_by_cp: dict[str, list[sqlite3.Row]] = {}
    for pkg in active.values():
        leftover_by_cp.setdefault(pkg["cp"], []).append(pkg)
    for order, row in unmatched_rows:
        candidates = leftover_by_cp.get(row.cp)
        if candidates:
            pkg = candidates.pop(0)
            del active[(pkg["cp"], pkg["slot"])]
            _update(conn, pkg, row, order, result, at, verdict)
        else:
            _add(conn, row, order, retired.get((row.cp, row.slot)), result, at, verdict)
    for pkg in active.values():
        _retire(conn, pkg, result, at)
    return active_before


def _retire(conn: sqlite3.Connection, pkg: sqlite3.Row, result: ScanResult, at: str) -> None:
    # A lease on a package nobody wants any more ends here: its drone's
    # report is refused, and no heartbeat keeps it alive.
    if pkg["status"] == State.DELEGATED:
        packages.move(conn, pkg["id"], expect=State.DELEGATED, to=State.NEEDED,
                      event=Event.RETIRED, actor=ACTOR, at=at, active=0,
                      detail=f"no longer in the merge list; lease of {pkg['drone']} ended",
                      event_drone=pkg["drone"], **packages.NO_LEASE)
    else:
        packages.update(conn, pkg["id"], active=0, updated_at=at)
        packages.record(conn, pkg["id"], Event.RETIRED, ACTOR, at, pkg["status"], pkg["status"],
                        "no longer in the merge list")
    result.note(Event.RETIRED, pkg["cpv"])


def _update(conn, pkg: sqlite3.Row, row: Row, order: int, result: ScanResult, at: str,
            verdict: Verdict) -> None:
    old, new = _stored_identity(pkg), identity(row)
    if order != pkg["scan_order"]:
        packages.update(conn, pkg["id"], scan_order=order)
    published = verdict.lists(row)
    if old == new:
        if published and pkg["status"] in (State.NEEDED, State.FAILED):
            _rebuild(conn, pkg, row, State.SYNCED, Event.ON_BINHOST, _on_binhost(row), result, at)
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
         at: str, verdict: Verdict) -> None:
    published = verdict.lists(row)
    if retired and _stored_identity(retired) == identity(row) and not published:
        # Back unchanged (after a bad scan, say): it keeps its state too.
        packages.update(conn, retired["id"], active=1, scan_order=order, updated_at=at)
        packages.record(conn, retired["id"], Event.ADDED, ACTOR, at, retired["status"],
                        retired["status"], "back in the merge list, unchanged")
        result.note(Event.ADDED, row.cpv, "back, unchanged")
        return
    status, event = ((State.SYNCED, Event.ON_BINHOST) if published
                     else (State.NEEDED, Event.ADDED))
    detail = (_on_binhost(row) if published else
              "a binary elsewhere, not on the swarm's binhost" if row.kind == "binary" else "")
    if retired:
        # Back in the world: the same row, so its history stays in one place.
        _rebuild(conn, retired, row, status, event, detail or "back in the merge list", result,
                 at, active=1, scan_order=order)
        return
    package_id = packages.insert(conn, at=at, cp=row.cp, status=status, scan_order=order,
                                 build_id=row.build_id, **_identity_columns(row))
    packages.record(conn, package_id, event, ACTOR, at, None, status, detail)
    result.note(event, row.cpv, detail)


def _on_binhost(row: Row) -> str:
    build = f" (build id {row.build_id})" if row.build_id is not None else ""
    return f"already on the binhost{build}"
