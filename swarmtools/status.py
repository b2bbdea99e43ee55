"""Figures for swarm-status, all derived from facts in the database."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from datetime import datetime

from . import clock, drift, eligibility, exclude, profile, release, staging
from .config import Config
from .errors import SwarmError
from .packages import STATES, Event, FailureKind, State


def summary(conn: sqlite3.Connection, config: Config, now: datetime,
            drones: list[dict] | None = None, kept: dict[str, set[int]] | None = None) -> dict:
    """Drones online, success rate, counts per state, one entry a drone.

    DRONES and KEPT: drone_table's and kept_back's answers, when the caller has them.
    """
    drones = drone_table(conn, config, now) if drones is None else drones
    kept = kept_back(conn, config, now, drones) if kept is None else kept
    states = dict.fromkeys(STATES, 0)
    for status, count in conn.execute(
            "SELECT status, count(*) FROM packages WHERE active = 1 GROUP BY status"):
        states[status] = count
    retired = conn.execute("SELECT count(*) FROM packages WHERE active = 0").fetchone()[0]
    built = sum(d["built"] for d in drones)
    failed = sum(d["failed"] for d in drones)
    kinds = {kind: sum(d["failures_by_kind"][kind] for d in drones) for kind in FAILURE_KINDS}
    scan = conn.execute("SELECT at, source, rows, summary, profile FROM scans ORDER BY id DESC"
                        " LIMIT 1").fetchone()
    return {
        "drones_online": sum(d["online"] for d in drones),
        "drones_known": len(drones),
        "builds_ok": built,
        "builds_failed": failed,
        "success_rate": _rate(built, failed),
        "builds_dependency_waits": sum(d["dependency_waits"] for d in drones),
        "builds_drone_trouble": sum(d["drone_trouble"] for d in drones),
        "failures_by_kind": kinds,
        "states": states,
        "packages": sum(states.values()),
        "retired": retired,
        "last_scan": {"at": scan["at"], "source": scan["source"], "rows": scan["rows"],
                      "profile": scan["profile"], **json.loads(scan["summary"])} if scan else None,
        # What drones build with: the scan's Portage configuration and tree
        # (of the first profile; each one's is under "profiles").
        "profile": profile.recorded(conn, config.profile_names()[0]),
        "profiles": by_profile(conn, config, kept),
        "last_sync": last_run(conn, "swarm-sync"),
        "channels": release.channels(config, now),
        "waiting": waiting(conn),
        "blocked": {rule: len(ids) for rule, ids in kept.items()},
        **staging_backlog(config, conn, now),
        "drones": drones,
    }


def by_profile(conn: sqlite3.Connection, config: Config,
               kept: dict[str, set[int]]) -> dict[str, dict]:
    """Each profile's share: its binhost, what it wants by state, what it no longer wants,
    what waits and what rules keep back (KEPT: kept_back's answer)."""
    answer = {}
    for name in config.profile_names():
        states = dict.fromkeys(STATES, 0)
        members = set()
        for package_id, status in conn.execute(
                "SELECT p.id, p.status FROM wants w JOIN packages p ON p.id = w.package_id"
                " WHERE w.profile = ? AND w.active = 1", (name,)):
            states[status] += 1
            members.add(package_id)
        retired = conn.execute("SELECT count(*) FROM wants WHERE profile = ? AND active = 0",
                               (name,)).fetchone()[0]
        answer[name] = {"binhost": config.binhost_of(name), "states": states,
                        "packages": len(members), "retired": retired,
                        "waiting": waiting(conn, members),
                        "blocked": {rule: len(ids & members) for rule, ids in kept.items()},
                        "profile": profile.recorded(conn, name)}
    return answer


def waiting(conn: sqlite3.Connection, only: set[int] | None = None) -> dict:
    """Needed packages that wait for dependencies to be published; of them, those a failure blocks.

    ONLY: count these packages only (one profile's).
    """
    needs = defaultdict(set)
    for pkg, dep in conn.execute(
            "SELECT r.package_id, r.dep_id FROM requires r JOIN packages d ON d.id = r.dep_id"
            " WHERE d.active = 1 AND d.status != ?", (State.SYNCED,)):
        needs[pkg].add(dep)
    status = dict(conn.execute("SELECT id, status FROM packages WHERE active = 1"))
    blocked: dict[int, bool] = {}

    def on_failure(pkg: int, seen: frozenset = frozenset()) -> bool:
        # Waits, directly or through what it waits for, on a failed build.
        if pkg not in blocked:
            blocked[pkg] = any(status.get(dep) == State.FAILED or
                               (dep not in seen and on_failure(dep, seen | {pkg}))
                               for dep in needs.get(pkg, ()))
        return blocked[pkg]

    waiting_ids = [p for p in needs if status.get(p) == State.NEEDED
                   and (only is None or p in only)]
    return {"on_dependencies": len(waiting_ids),
            "on_failure": sum(on_failure(p) for p in waiting_ids)}


def blocked(conn: sqlite3.Connection, config: Config, now: datetime,
            drones: list[dict] | None = None) -> dict:
    """How many needed packages each eligibility rule keeps from being built now."""
    return {rule: len(ids) for rule, ids in kept_back(conn, config, now, drones).items()}


def kept_back(conn: sqlite3.Connection, config: Config, now: datetime,
              drones: list[dict] | None = None) -> dict[str, set[int]]:
    """The needed packages each eligibility rule keeps from being built now, by rule name.

    A drone rule (held, excluded, capability) keeps a package when it keeps
    it from every online drone that is not grounded; "no drone" holds the
    needed packages while no drone may claim at all. A package kept by
    several rules is under each. DRONES: drone_table's answer, if at hand.
    """
    anyone = eligibility.Claimant(None, now, clock.iso(now))
    claimants = [eligibility.claimant_for(conn, config, d["drone"], now)
                 for d in drones or drone_table(conn, config, now)
                 if d["online"] and not d["grounded_until"]]
    kept = {}
    for rule in eligibility.RULES[1:]:  # the first, Wanted, is what "needed" means
        if rule.name in eligibility.DRONE_RULES:
            common = None
            for claimant in claimants:
                ids = _kept_by(conn, rule, claimant)
                common = ids if common is None else common & ids
            kept[rule.name] = common or set()
        else:
            kept[rule.name] = _kept_by(conn, rule, anyone)
    kept["no drone"] = set() if claimants else {r[0] for r in conn.execute(
        "SELECT id FROM packages WHERE status = 'needed' AND active = 1")}
    return kept


def _kept_by(conn: sqlite3.Connection, rule: eligibility.Rule, claimant) -> set[int]:
    clause, params = rule.where(claimant)
    return {r[0] for r in conn.execute(
        f"SELECT id FROM packages WHERE status = 'needed' AND active = 1 AND NOT ({clause})",
        params)}


def why(conn: sqlite3.Connection, config: Config, package: str, now: datetime,
        drone: str | None = None) -> list[dict]:
    """Why PACKAGE (CATEGORY/PF, or CATEGORY/PN: each queued slot) is not being built.

    Asks the rules the claims use, so the answer is what a claim would do:
    the reasons for every drone (back-off, dependencies, an exclusion for
    every drone), then each drone's own (offline, grounded, held, excluded
    for it, lacking a feature), and the drones that would take it now.
    """
    rows = conn.execute("SELECT * FROM packages WHERE (cpv = ? OR cp = ?) ORDER BY active DESC,"
                        " slot, id", (package, package)).fetchall()
    if not rows:
        raise SwarmError(f"no package {package} in the queue (swarm-fresh adds what the scan "
                         "wants)")
    if drone is not None and drone not in config.drones:
        raise SwarmError(f"unknown drone '{drone}'")
    anyone = eligibility.Claimant(None, now, clock.iso(now))
    table = {d["drone"]: d for d in drone_table(conn, config, now)}
    answers = []
    for pkg in rows if not rows[0]["active"] else [r for r in rows if r["active"]]:
        general = [{"rule": rule.name, "why": why} for rule in eligibility.RULES
                   if rule.name not in eligibility.DRONE_RULES
                   and (why := rule.explain(conn, pkg, anyone)) is not None]
        drones = [{"drone": name, "reasons": _drone_reasons(conn, config, pkg, name,
                                                            table.get(name, {}), now),
                   "isolation": table.get(name, {}).get("isolation")}
                  for name in ([drone] if drone else sorted(config.drones))]
        online = [d for d in drones if not any(r["rule"] == "offline" for r in d["reasons"])]
        if pkg["status"] == State.NEEDED and pkg["active"] and online and all(
                any(r["rule"] == "capability" for r in d["reasons"]) for d in online):
            needs = ", ".join(f"{r['feature']} ({r['why']})" for r in conn.execute(
                "SELECT feature, why FROM requirements WHERE package_id = ? ORDER BY feature",
                (pkg["id"],)))
            general.append({"rule": "capability",
                            "why": f"needs {needs}: no online drone can build it"})
        if pkg["status"] == State.NEEDED and pkg["active"] and not online:
            general.append({"rule": "no drone", "why": "no drone is online"})
        takers = [d["drone"] for d in drones if not d["reasons"]] if not general else []
        wanted_by = [name for (name,) in conn.execute(
            "SELECT profile FROM wants WHERE package_id = ? AND active = 1 ORDER BY profile",
            (pkg["id"],))]
        answers.append({"cpv": pkg["cpv"], "status": pkg["status"], "active": bool(pkg["active"]),
                        "drone": pkg["drone"], "binhost": pkg["binhost"], "use": pkg["use"],
                        "profiles": wanted_by, "reasons": general, "drones": drones,
                        "eligible_for": takers})
    return answers


def _drone_reasons(conn: sqlite3.Connection, config: Config, pkg: sqlite3.Row, name: str,
                   entry: dict, now: datetime) -> list[dict]:
    """Why drone NAME (ENTRY: its drone_table entry) does not take PKG: its own reasons."""
    claimant = eligibility.claimant_for(conn, config, name, now)
    # A drone that never sent its facts: what it can build is not known yet.
    own = [{"rule": rule.name, "why": why} for rule in eligibility.RULES
           if rule.name in eligibility.DRONE_RULES
           and (entry.get("last_heartbeat") or rule.name != "capability")
           and (why := rule.explain(conn, pkg, claimant)) is not None]
    if entry.get("grounded_until"):
        own.insert(0, {"rule": "grounded", "why": f"grounded until "
                       f"{entry['grounded_until']}: {entry['grounded_reason']}"})
    if not entry.get("online"):
        own.insert(0, {"rule": "offline", "why": "no heartbeat since "
                       f"{entry['last_heartbeat']}" if entry.get("last_heartbeat")
                       else "never sent a heartbeat"})
    return own


# Failed reports by what they say of the package. Only its own failures
# count against the success rate; a dependency not published yet and a
# drone's trouble (a full disk, a failed fetch) are counted apart.
FAILURE_KINDS = tuple(str(kind) for kind in FailureKind)
DEPENDENCY_WAIT = (str(FailureKind.MISSING_DEPENDENCY),)
DRONE_TROUBLE = (str(FailureKind.ENVIRONMENT), str(FailureKind.FETCH))


def _outcomes(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per drone: builds reported built, and failed ones by kind."""
    found: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("built", *FAILURE_KINDS), 0))
    for drone, event, kind, count in conn.execute(
            "SELECT actor, event, kind, count(*) FROM events WHERE event IN (?, ?)"
            " GROUP BY actor, event, kind", (Event.BUILT, Event.BUILD_FAILED)):
        # (A failure from before kinds were recorded was the build's own.)
        key = "built" if event == Event.BUILT else kind if kind in FAILURE_KINDS else "build"
        found[drone][key] += count
    return found


def drone_table(conn: sqlite3.Connection, config: Config, now: datetime) -> list[dict]:
    """One entry a drone: configured or seen, online, building, built, failed, facts."""
    outcomes = _outcomes(conn)
    building = defaultdict(list)
    for drone, cpv, since in conn.execute(
            "SELECT p.drone, p.cpv, (SELECT max(e.at) FROM events e WHERE e.package_id = p.id"
            " AND e.event = ?) FROM packages p WHERE p.status = ? AND p.active = 1 ORDER BY p.id",
            (Event.CLAIMED, State.DELEGATED)):
        building[drone].append({"cpv": cpv, "since": since})
    online = eligibility.online_drones(conn, config.delegate.online_seconds, now)
    heartbeats = {r["name"]: r for r in conn.execute("SELECT * FROM drones")}
    expected = drift.expected_of_drones(config, profile.recorded(conn, config.profile_names()[0]))
    names = sorted(set(config.drones) | set(heartbeats) | set(outcomes))
    drones = []
    for name in names:
        beat = heartbeats.get(name)
        last = clock.parse(beat["last_heartbeat"]) if beat else None
        facts = json.loads(beat["facts"]) if beat else {}
        counts = outcomes[name]
        kinds = {kind: counts[kind] for kind in FAILURE_KINDS}
        ok = counts["built"]
        failed = sum(n for kind, n in kinds.items() if kind in exclude.PACKAGE_FAILURES)
        drones.append({
            "drone": name,
            "configured": name in config.drones,
            "online": name in online,
            "last_heartbeat": last.isoformat() if last else None,
            "building": len(building.get(name, ())),
            "building_packages": building.get(name, []),
            "speed": beat["speed"] if beat else None,
            "built": ok,
            "failed": failed,  # the package's own failures: build, stalled
            "success_rate": _rate(ok, failed),
            "dependency_waits": sum(kinds[kind] for kind in DEPENDENCY_WAIT),
            "drone_trouble": sum(kinds[kind] for kind in DRONE_TROUBLE),
            "failures_by_kind": kinds,
            "grounded_until": beat["grounded_until"] if beat and beat["grounded_until"]
            and beat["grounded_until"] > clock.iso(now) else None,
            "grounded_reason": beat["grounded_reason"] if beat else None,
            "facts": facts,
            # How it builds, by its own word: "overlay" (a throw-away root),
            # "none" (in its live system); None before its first heartbeat.
            "isolation": facts.get("isolation"),
            # Its last heartbeat against the config and the profile: a drone
            # left on an old version or config shows here.
            "drift": drift.heartbeat_drift(facts, expected),
        })
    return drones


def last_run(conn: sqlite3.Connection, command: str) -> dict | None:
    """When COMMAND last ran to its end, and what it counted then."""
    row = conn.execute("SELECT at, summary FROM runs WHERE command = ?", (command,)).fetchone()
    return {"at": row["at"], **json.loads(row["summary"])} if row else None


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


def staging_backlog(config: Config, conn: sqlite3.Connection, now: datetime) -> dict:
    """Bytes waiting in staging and the age of the oldest received package, flagged when old."""
    oldest = conn.execute("SELECT min(updated_at) FROM packages WHERE status = ?",
                          (State.RECEIVED,)).fetchone()[0]
    age = clock.age(oldest, now)
    limit = 3 * config.binhost.sync_interval_seconds
    return {"staging_bytes": staging.waiting_bytes(config), "oldest_received_seconds": age,
            "backlog": age is not None and age > limit}


def history(conn: sqlite3.Connection, package: str | None = None, limit: int = 50) -> list[dict]:
    """The last LIMIT events, of one package (CATEGORY/PF or CATEGORY/PN) or of all, oldest first.

    Each names the CPV it was about (a rescan moves a package to another
    version); an old event whose version its history does not tell (see
    db.py, migration 11) names the package, CATEGORY/PN.
    """
    rows = conn.execute(
        "SELECT e.at, coalesce(e.cpv, p.cp) AS cpv, e.event, e.from_status, e.to_status, e.actor,"
        " e.drone, e.kind, e.detail FROM events e LEFT JOIN packages p ON p.id = e.package_id"
        " WHERE ? IS NULL OR e.cpv = ? OR p.cp = ? ORDER BY e.id DESC LIMIT ?",
        (package, package, package, limit)).fetchall()
    return [dict(row) for row in reversed(rows)]
