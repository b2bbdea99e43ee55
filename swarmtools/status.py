"""Figures for swarm-status, all derived from facts in the database."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

from .config import Config
from .db import STATES

# History events that end a build attempt (written by swarm-delegate report).
BUILT, BUILD_FAILED = "built", "build-failed"


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def summary(conn: sqlite3.Connection, config: Config, now: datetime | None = None) -> dict:
    """Drones online, success rate, counts per state, one entry a drone."""
    now = now or datetime.now(timezone.utc)
    window = timedelta(seconds=config["delegate"]["online_seconds"])
    states = dict.fromkeys(STATES, 0)
    for status, count in conn.execute(
            "SELECT status, count(*) FROM packages WHERE active = 1 GROUP BY status"):
        states[status] = count
    retired = conn.execute("SELECT count(*) FROM packages WHERE active = 0").fetchone()[0]
    outcomes = {
        (drone, event): count for drone, event, count in conn.execute(
            "SELECT actor, event, count(*) FROM events WHERE event IN (?, ?) GROUP BY actor, event",
            (BUILT, BUILD_FAILED))
    }
    holding = dict(conn.execute(
        "SELECT drone, count(*) FROM packages WHERE status = 'delegated' AND active = 1"
        " GROUP BY drone").fetchall())
    heartbeats = {r["name"]: r for r in conn.execute("SELECT * FROM drones")}
    names = sorted(set(config.drones) | set(heartbeats) | {d for d, _ in outcomes})
    drones = []
    for name in names:
        beat = heartbeats.get(name)
        last = _parse_time(beat["last_heartbeat"]) if beat else None
        ok, failed = outcomes.get((name, BUILT), 0), outcomes.get((name, BUILD_FAILED), 0)
        drones.append({
            "drone": name,
            "configured": name in config.drones,
            "online": bool(last and now - last <= window),
            "last_heartbeat": last.isoformat() if last else None,
            "building": holding.get(name, 0),
            "built": ok,
            "failed": failed,
            "success_rate": _rate(ok, failed),
            "facts": json.loads(beat["facts"]) if beat else {},
        })
    built = sum(d["built"] for d in drones)
    failed = sum(d["failed"] for d in drones)
    backlog = staging_backlog(config, conn, now)
    scan = conn.execute("SELECT at, source, rows, summary FROM scans ORDER BY id DESC LIMIT 1"
                        ).fetchone()
    return {
        "drones_online": sum(d["online"] for d in drones),
        "drones_known": len(drones),
        "builds_ok": built,
        "builds_failed": failed,
        "success_rate": _rate(built, failed),
        "states": states,
        "packages": sum(states.values()),
        "retired": retired,
        "last_scan": {"at": scan["at"], "source": scan["source"], "rows": scan["rows"],
                      **json.loads(scan["summary"])} if scan else None,
        **backlog,
        "drones": drones,
    }


def _rate(ok: int, failed: int) -> float | None:
    return round(ok / (ok + failed), 4) if ok + failed else None


def packages(conn: sqlite3.Connection, state: str | None = None, retired: bool = False):
    """Every package of the queue as a dict, in queue order."""
    query = ("SELECT cpv, cp, slot, subslot, repo, use, status, active, drone, lease_until,"
             " attempts, retry_after, priority, first_seen, updated_at FROM packages"
             " WHERE (? IS NULL OR status = ?) AND (? OR active = 1)"
             " ORDER BY active DESC, priority DESC, scan_order, id")
    for row in conn.execute(query, (state, state, retired)):
        item = dict(row)
        item["active"] = bool(item["active"])
        yield item


def staging_backlog(config: Config, conn: sqlite3.Connection, now: datetime | None = None) -> dict:
    """Bytes waiting in staging and the age of the oldest received package, flagged when old."""
    now = now or datetime.now(timezone.utc)
    waiting = 0
    if config.staging_dir.is_dir():
        waiting = sum(p.stat().st_size for p in config.staging_dir.rglob("*")
                      if p.is_file() and not str(p.relative_to(config.staging_dir)).startswith("quarantine/"))
    oldest = conn.execute("SELECT min(updated_at) FROM packages WHERE status = 'received'").fetchone()[0]
    age = int((now - datetime.fromisoformat(oldest)).total_seconds()) if oldest else None
    limit = 3 * config["binhost"]["sync_interval_seconds"]
    return {"staging_bytes": waiting, "oldest_received_seconds": age,
            "backlog": age is not None and age > limit}
