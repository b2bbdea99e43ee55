"""The queue's side of delegation: heartbeats, leases, claims and reports.

A claim is one ``UPDATE ... WHERE id = (best eligible) AND status = 'needed'
RETURNING`` inside ``BEGIN IMMEDIATE``, so a package is handed to exactly one
drone however many ask at once. Leases expire when a drone stops sending
heartbeats; expiry (and the end of a failed build's back-off) is applied at
the start of every claim, and by ``swarm-delegate expire`` from cron.
Events are written with the drone's name as actor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import db
from .config import Config
from .errors import ConfigError, SwarmError

# The file names Portage gives binary packages: PF-BUILD_ID.gpkg.tar with
# binpkg-multi-instance (the default), PF.gpkg.tar or PF.tbz2 without.
_BINPKG_NAME = re.compile(r"^(?P<pf>.+?)(?:-(?P<build_id>\d+))?\.(?:gpkg\.tar|xpak|tbz2)$")


def _time(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    # One fixed format, so ISO strings compare correctly in SQL.
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def check_drone(config: Config, drone: str) -> None:
    """Refuse a drone the config does not name."""
    if drone not in config.drones:
        raise ConfigError(f"unknown drone '{drone}': add a [drones.{drone}] table to {config.path}")


def heartbeat(conn: sqlite3.Connection, config: Config, drone: str, facts: dict,
              now: datetime | None = None) -> dict:
    """Record a drone's facts and extend the leases it holds."""
    check_drone(config, drone)
    moment = _time(now)
    lease_until = _iso(moment + timedelta(seconds=config["delegate"]["lease_seconds"]))
    digest = facts.get("config_digest")
    with db.write(conn):
        conn.execute(
            "INSERT INTO drones (name, last_heartbeat, facts, config_digest) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_heartbeat = excluded.last_heartbeat,"
            " facts = excluded.facts, config_digest = excluded.config_digest",
            (drone, _iso(moment), json.dumps(facts, sort_keys=True), digest))
        extended = conn.execute(
            "UPDATE packages SET lease_until = ? WHERE status = 'delegated' AND drone = ?",
            (lease_until, drone)).rowcount
    return {"drone": drone, "leases_extended": extended, "lease_until": lease_until,
            "config_matches": digest == config.digest()}


def expire(conn: sqlite3.Connection, now: datetime | None = None) -> dict:
    """Return expired leases and finished back-offs to 'needed'."""
    with db.write(conn):
        return _expire(conn, _iso(_time(now)))


def _expire(conn: sqlite3.Connection, at: str) -> dict:
    expired = conn.execute(
        "SELECT id, drone FROM packages WHERE status = 'delegated' AND lease_until < ?",
        (at,)).fetchall()
    for row in expired:
        conn.execute("UPDATE packages SET status = 'needed', drone = NULL, lease_until = NULL,"
                     " updated_at = ? WHERE id = ?", (at, row["id"]))
        db.record_event(conn, row["id"], "swarm-delegate", "expired", "delegated", "needed",
                        f"lease of {row['drone']} expired without heartbeat", at)
    retried = conn.execute(
        "UPDATE packages SET status = 'needed', updated_at = ?"
        " WHERE status = 'failed' AND active = 1 AND retry_after <= ? RETURNING id, attempts",
        (at, at)).fetchall()
    for row in retried:
        db.record_event(conn, row["id"], "swarm-delegate", "retry", "failed", "needed",
                        f"back-off over after {row['attempts']} failed attempt(s)", at)
    return {"expired": len(expired), "retried": len(retried)}


def eligibility(drone: str, at: str) -> tuple[str, tuple]:
    """The SQL condition (and its parameters) for a package this drone may take."""
    # Later: exclusions for this drone, capabilities, dependencies on the binhost.
    return ("status = 'needed' AND active = 1 AND (retry_after IS NULL OR retry_after <= ?)",
            (at,))


def claim(conn: sqlite3.Connection, config: Config, drone: str,
          now: datetime | None = None) -> dict | None:
    """Hand the best eligible package to a drone, or return None when there is none."""
    check_drone(config, drone)
    moment = _time(now)
    at = _iso(moment)
    lease_until = _iso(moment + timedelta(seconds=config["delegate"]["lease_seconds"]))
    condition, params = eligibility(drone, at)
    with db.write(conn):
        _expire(conn, at)
        row = conn.execute(
            "UPDATE packages SET status = 'delegated', drone = ?, lease_until = ?, updated_at = ?"
            f" WHERE id = (SELECT id FROM packages WHERE {condition}"
            "              ORDER BY priority DESC, scan_order, id LIMIT 1)"
            " AND status = 'needed'"
            " RETURNING id, cpv, slot, subslot, repo, use, lease_until, attempts",
            (drone, lease_until, at, *params)).fetchone()
        if row is None:
            return None
        db.record_event(conn, row["id"], drone, "claimed", "needed", "delegated",
                        f"lease until {lease_until}", at)
    claimed = dict(row)
    del claimed["id"]
    return claimed


def _held(conn: sqlite3.Connection, drone: str, cpv: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT id, attempts FROM packages WHERE cpv = ? AND drone = ? AND status = 'delegated'"
        " AND active = 1", (cpv, drone)).fetchone()
    if row is None:
        raise SwarmError(f"drone '{drone}' holds no lease on {cpv}")
    return row


def staged_path(config: Config, drone: str, relative: str) -> Path:
    """The absolute path of a file in a drone's staging area; refuse anything outside it."""
    if not relative or os.path.isabs(relative) or ".." in Path(relative).parts:
        raise SwarmError(f"'{relative}' must be a path inside staging/{drone}/ without '..'")
    area = (config.staging_dir / drone).resolve()
    path = (area / relative).resolve()  # resolves symlinks: a link out of the area is caught
    if area not in path.parents:
        raise SwarmError(f"'{relative}' leads outside staging/{drone}/")
    return path


def report_built(conn: sqlite3.Connection, config: Config, drone: str, cpv: str, file: str,
                 size: int | None = None, sha256: str | None = None,
                 now: datetime | None = None) -> dict:
    """Record a successful build whose binary package is in the drone's staging area."""
    check_drone(config, drone)
    path = staged_path(config, drone, file)
    match = _BINPKG_NAME.match(path.name)
    pf = cpv.split("/", 1)[-1]
    if not match or match.group("pf") != pf:
        raise SwarmError(f"'{path.name}' is not a binary package of {cpv}")
    if not path.is_file():
        raise SwarmError(f"no uploaded file at staging/{drone}/{file}")
    actual_size, digest = file_digest(path)
    if size is not None and size != actual_size:
        raise SwarmError(f"staging/{drone}/{file} has {actual_size} bytes, not {size}: upload incomplete")
    if sha256 is not None and sha256 != digest:
        raise SwarmError(f"staging/{drone}/{file} does not match its sha256: upload corrupt")
    at = _iso(_time(now))
    stored = str(path.relative_to(config.staging_dir.resolve()))
    build_id = int(match.group("build_id")) if match.group("build_id") else None
    with db.write(conn):
        held = _held(conn, drone, cpv)
        conn.execute(
            "UPDATE packages SET status = 'received', lease_until = NULL, file = ?, size = ?,"
            " digest = ?, build_id = ?, binhost_path = NULL, updated_at = ? WHERE id = ?",
            (stored, actual_size, digest, build_id, at, held["id"]))
        db.record_event(conn, held["id"], drone, "built", "delegated", "received",
                        f"{stored} ({actual_size} bytes, sha256 {digest})", at)
    return {"cpv": cpv, "status": "received", "file": stored, "size": actual_size,
            "sha256": digest}


def report_failed(conn: sqlite3.Connection, config: Config, drone: str, cpv: str,
                  log: str | None = None, now: datetime | None = None) -> dict:
    """Record a failed build: keep its log, count the attempt, set the back-off."""
    check_drone(config, drone)
    moment = _time(now)
    at = _iso(moment)
    kept = None
    if log:
        if not log.startswith("logs/"):
            raise SwarmError(f"build logs go under staging/{drone}/logs/, not {log!r}")
        source = staged_path(config, drone, log)
        if not source.is_file():
            raise SwarmError(f"no uploaded log at staging/{drone}/{log}")
    with db.write(conn):
        held = _held(conn, drone, cpv)
        attempts = held["attempts"] + 1
        delegate = config["delegate"]
        backoff = min(delegate["retry_seconds"] * 2 ** (attempts - 1), delegate["retry_max_seconds"])
        retry_after = _iso(moment + timedelta(seconds=backoff))
        if log:
            kept = _keep_log(config, source, cpv, drone, moment)
        conn.execute(
            "UPDATE packages SET status = 'failed', lease_until = NULL, attempts = ?,"
            " retry_after = ?, updated_at = ? WHERE id = ?",
            (attempts, retry_after, at, held["id"]))
        db.record_event(conn, held["id"], drone, "build-failed", "delegated", "failed",
                        f"attempt {attempts}; retry after {retry_after}"
                        + (f"; log {kept}" if kept else ""), at)
    return {"cpv": cpv, "status": "failed", "attempts": attempts, "retry_after": retry_after,
            "log": str(kept) if kept else None}


def _keep_log(config: Config, source: Path, cpv: str, drone: str, moment: datetime) -> Path:
    # Out of staging (which swarm-sync empties) into state_dir/logs/CAT/PF/.
    target_dir = Path(config["orchestrator"]["state_dir"]) / "logs" / cpv
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{drone}.log"
    shutil.move(source, target)
    return target


def release(conn: sqlite3.Connection, config: Config, drone: str, cpv: str,
            now: datetime | None = None) -> dict:
    """Give a lease back: the package is 'needed' again at once."""
    check_drone(config, drone)
    at = _iso(_time(now))
    with db.write(conn):
        held = _held(conn, drone, cpv)
        conn.execute("UPDATE packages SET status = 'needed', drone = NULL, lease_until = NULL,"
                     " updated_at = ? WHERE id = ?", (at, held["id"]))
        db.record_event(conn, held["id"], drone, "released", "delegated", "needed", "", at)
    return {"cpv": cpv, "status": "needed"}


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
