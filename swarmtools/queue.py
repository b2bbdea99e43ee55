"""The queue: fill it from a scan, incrementally, with every change in the history.

A package's place in the queue is its (category/package, SLOT): one row for
each slot the world needs. Its build identity is CPV, sub-slot, repository
and enabled USE; a rescan that changes the identity re-queues the row, one
that finds it gone retires it (kept, with its history), and anything else
leaves it and its state alone.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from . import db
from .emerge import MergeList, Row
from .errors import SwarmError

ACTOR = "swarm-fresh"
# A scan that would retire more than half of the queue, and more than this
# many packages, is refused without --force: a broken world file makes emerge
# list nothing and exit 0.
MASS_RETIRE_MIN = 5


@dataclass
class Change:
    """One change a scan made to the queue."""

    event: str  # added, requeued, retired, binary
    cpv: str
    detail: str = ""


@dataclass
class ScanResult:
    """What a scan changed, as counts and as a list."""

    added: int = 0
    requeued: int = 0
    retired: int = 0
    unchanged: int = 0
    binary: int = 0
    total: int = 0
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The summary swarm-fresh prints (--json keys)."""
        return {k: getattr(self, k) for k in
                ("added", "requeued", "retired", "unchanged", "binary", "total")}


class _DryRun(Exception):
    """Raised inside the write transaction to roll a dry run back."""


def identity(row: Row) -> tuple[str, str, str, str, str]:
    """The build identity of a scan row: what, when changed, needs a new build."""
    return (row.cpv, row.slot, row.subslot, row.repo, row.enabled_use())


def _stored_identity(pkg: sqlite3.Row) -> tuple[str, str, str, str, str]:
    return (pkg["cpv"], pkg["slot"], pkg["subslot"] or "", pkg["repo"], pkg["use"])


def apply_scan(conn: sqlite3.Connection, merge_list: MergeList, source: str,
               dry_run: bool = False, force: bool = False) -> ScanResult:
    """Bring the queue in line with a scan in one transaction; return what changed."""
    rows = merge_list.packages()
    seen: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row.cp, row.slot)
        if key in seen:
            raise SwarmError(
                f"{row.cp}:{row.slot} is in the merge list twice (lines {seen[key].line_no} "
                f"and {row.line_no}); run emerge with --verbose so slots are shown"
            )
        seen[key] = row
    result = ScanResult(total=len(rows))
    try:
        with db.write(conn):
            active = _apply(conn, rows, result, db.now())
            if result.retired > MASS_RETIRE_MIN and result.retired * 2 > active and not force:
                raise SwarmError(
                    f"this scan would retire {result.retired} of {active} queued packages; "
                    "check the scan (emerge's warnings, the world file) or use --force")
            if dry_run:
                raise _DryRun
            conn.execute(
                "INSERT INTO scans (at, source, rows, summary) VALUES (?, ?, ?, ?)",
                (db.now(), source, len(rows), _json(result.counts())),
            )
    except _DryRun:
        pass
    return result


def _apply(conn: sqlite3.Connection, rows: list[Row], result: ScanResult, at: str) -> int:
    """Apply the scan's rows; return how many packages were active before."""
    active = {(p["cp"], p["slot"]): p for p in conn.execute("SELECT * FROM packages WHERE active = 1")}
    active_before = len(active)
    unmatched_rows = []
    for order, row in enumerate(rows):
        pkg = active.pop((row.cp, row.slot), None)
        if pkg is None:
            unmatched_rows.append((order, row))
        else:
            _update(conn, pkg, row, order, result, at)
    # A slot change keeps the package's row: pair what is left by category/package.
    leftover_by_cp: dict[str, list[sqlite3.Row]] = {}
    for pkg in active.values():
        leftover_by_cp.setdefault(pkg["cp"], []).append(pkg)
    for order, row in unmatched_rows:
        candidates = leftover_by_cp.get(row.cp)
        if candidates:
            pkg = candidates.pop(0)
            del active[(pkg["cp"], pkg["slot"])]
            _update(conn, pkg, row, order, result, at)
        else:
            _add(conn, row, order, result, at)
    for pkg in active.values():
        conn.execute("UPDATE packages SET active = 0, updated_at = ? WHERE id = ?", (at, pkg["id"]))
        db.record_event(conn, pkg["id"], ACTOR, "retired", pkg["status"], pkg["status"],
                        "no longer in the merge list", at)
        result.retired += 1
        result.changes.append(Change("retired", pkg["cpv"]))
    return active_before


def _update(conn, pkg: sqlite3.Row, row: Row, order: int, result: ScanResult, at: str) -> None:
    old, new = _stored_identity(pkg), identity(row)
    if order != pkg["scan_order"]:
        conn.execute("UPDATE packages SET scan_order = ? WHERE id = ?", (order, pkg["id"]))
    if old == new:
        if row.kind == "binary" and pkg["status"] in ("needed", "failed"):
            _set_status(conn, pkg, row, "synced", "binary", _on_binhost(row), result, at)
        else:
            result.unchanged += 1
        return
    detail = "; ".join(
        f"{name} {a or '-'} -> {b or '-'}"
        for name, a, b in zip(("cpv", "slot", "subslot", "repo", "use"), old, new) if a != b
    )
    if row.kind == "binary":
        _set_status(conn, pkg, row, "synced", "binary", f"{detail}; {_on_binhost(row)}", result, at)
    else:
        _set_status(conn, pkg, row, "needed", "requeued", detail, result, at)


def _set_status(conn, pkg, row: Row, status: str, event: str, detail: str,
                result: ScanResult, at: str) -> None:
    conn.execute(
        "UPDATE packages SET cpv = ?, slot = ?, subslot = ?, repo = ?, use = ?, status = ?,"
        " drone = NULL, lease_until = NULL, attempts = 0, retry_after = NULL,"
        " build_id = ?, file = NULL, size = NULL, digest = NULL, binhost_path = NULL,"
        " updated_at = ? WHERE id = ?",
        (row.cpv, row.slot, row.subslot or None, row.repo, row.enabled_use(), status,
         row.build_id, at, pkg["id"]),
    )
    db.record_event(conn, pkg["id"], ACTOR, event, pkg["status"], status, detail, at)
    setattr(result, event, getattr(result, event) + 1)
    result.changes.append(Change(event, row.cpv, detail))


def _add(conn, row: Row, order: int, result: ScanResult, at: str) -> None:
    status, event = ("synced", "binary") if row.kind == "binary" else ("needed", "added")
    retired = conn.execute(
        "SELECT * FROM packages WHERE active = 0 AND cp = ? AND slot = ?"
        " ORDER BY id DESC LIMIT 1", (row.cp, row.slot)).fetchone()
    values = (row.cpv, row.subslot or None, row.repo, row.enabled_use(), status, order,
              row.build_id, at)
    if retired and _stored_identity(retired) == identity(row) and row.kind == "ebuild":
        # Back unchanged (after a bad scan, say): it keeps its state too.
        conn.execute("UPDATE packages SET active = 1, scan_order = ?, updated_at = ? WHERE id = ?",
                     (order, at, retired["id"]))
        db.record_event(conn, retired["id"], ACTOR, "added", retired["status"], retired["status"],
                        "back in the merge list, unchanged", at)
        result.added += 1
        result.changes.append(Change("added", row.cpv, "back, unchanged"))
        return
    if retired:
        # Back in the world: the same row, so its history stays in one place.
        conn.execute(
            "UPDATE packages SET cpv = ?, subslot = ?, repo = ?, use = ?, status = ?,"
            " scan_order = ?, build_id = ?, updated_at = ?, active = 1, drone = NULL,"
            " lease_until = NULL, attempts = 0, retry_after = NULL, file = NULL, size = NULL,"
            " digest = NULL, binhost_path = NULL WHERE id = ?", values + (retired["id"],))
        package_id, from_status, detail = retired["id"], retired["status"], "back in the merge list"
    else:
        package_id = conn.execute(
            "INSERT INTO packages (cpv, subslot, repo, use, status, scan_order, build_id,"
            " updated_at, cp, slot, first_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values + (row.cp, row.slot, at)).lastrowid
        from_status, detail = None, ""
    if row.kind == "binary":
        detail = _on_binhost(row)
    db.record_event(conn, package_id, ACTOR, event, from_status, status, detail, at)
    setattr(result, event, getattr(result, event) + 1)
    result.changes.append(Change(event, row.cpv, detail))


def _on_binhost(row: Row) -> str:
    build = f" (build id {row.build_id})" if row.build_id is not None else ""
    return f"already on the binhost{build}"


def _json(data) -> str:
    import json

    return json.dumps(data, sort_keys=True)
