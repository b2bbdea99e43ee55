"""Which eligible package a drone gets: the longest chain first, where it finishes soonest.

Candidates come in priority order (the longest chain of expected build time
waiting on each, from swarm-resolve). Drones differ in speed, so the asking
drone does not simply take the first. In priority order, each package goes
to the drone that would finish it earliest, counting the work each drone
already holds (earliest finish time, as in HEFT list scheduling). Packages
that are not eligible yet but will be as soon as builds running now end
take part too, from the moment they will be ready, so a fast drone is kept
for a long critical package about to be ready instead of starting
something long and unimportant. The asking drone gets the first ready
package it wins that it can start now (or finish before the package it is
kept for); a slow drone thus leaves a long critical package to a faster
one that is free soon, and never idles while there is work it is the best
place for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from . import clock, eligibility
from .config import Config
from .eligibility import Claimant

# Packages about to be ready that take part in a placement: the longest chains.
LOOKAHEAD = 12


class CriticalPath:
    """The longest chain first, each package to the drone that finishes it first."""

    name = "critical"

    def __init__(self, conn: sqlite3.Connection, config: Config):
        self.conn = conn
        self.config = config
        self.default = config.resolve.default_seconds
        self.drone_rules = [r for r in eligibility.RULES if r.name in eligibility.DRONE_RULES]

    def pick(self, candidates: Iterable[sqlite3.Row], claimant: Claimant) -> sqlite3.Row | None:
        """The package to hand to CLAIMANT, or None (faster drones should take what is left)."""
        speed = self.speeds(claimant)
        me = claimant.name
        if len(speed) == 1:  # nobody to leave anything to
            return next(iter(candidates), None)
        busy = self.busy(claimant, speed)
        upcoming = self.upcoming(claimant, speed)
        claimants = {me: claimant}
        kept_until = None  # the claimant is kept for a package ready then
        for package in _merged(candidates, upcoming):
            upcoming_one = isinstance(package, dict)  # not eligible yet: never handed out
            ready = package["ready_in"] if upcoming_one else 0.0
            work = package["expected_seconds"] or self.default
            # Ties: a ready package goes to the asking drone; for one not ready
            # yet, the asking drone is kept only when it is strictly the best.
            order = sorted(speed, key=lambda d: (max(busy[d], ready) + work / speed[d],
                                                 (d == me) if upcoming_one else (d != me), d))
            # Only a drone its own rules let build the package may be kept for
            # it: one it is held from, excluded from or cannot build never claims it.
            best = next((d for d in order if (d == me and not upcoming_one)
                         or self._may_take(d, package["id"], claimants)), None)
            if best is None:
                continue
            if best != me:
                busy[best] = max(busy[best], ready) + work / speed[best]
                continue
            if not upcoming_one and (kept_until is None or work / speed[me] <= kept_until):
                return package  # eligible, and it starts now (or fits before what it is kept for)
            if upcoming_one and kept_until is None:
                kept_until = ready
            busy[me] = max(busy[me], ready) + work / speed[me]
        return None

    def _may_take(self, drone: str, package_id: int, claimants: dict) -> bool:
        """Whether DRONE's own rules (held, excluded, capability) let it build the package."""
        if drone not in claimants:
            now = next(iter(claimants.values())).now
            claimants[drone] = eligibility.claimant_for(self.conn, self.config, drone, now)
        return eligibility.admits(self.conn, package_id, claimants[drone], self.drone_rules)

    def speeds(self, claimant: Claimant) -> dict[str, float]:
        """Speed of each online drone that is not grounded (the asking one included)."""
        online = eligibility.online_drones(self.conn, self.config.delegate.online_seconds,
                                           claimant.now)
        speed = {row["name"]: self._speed(row["name"], row["speed"]) for row in self.conn.execute(
            "SELECT name, speed FROM drones WHERE grounded_until IS NULL OR grounded_until <= ?"
            " OR name = ?", (claimant.at, claimant.name))
            if row["name"] in online or row["name"] == claimant.name}
        speed.setdefault(claimant.name, self._speed(claimant.name, None))
        return speed

    def busy(self, claimant: Claimant, speed: dict[str, float]) -> dict[str, float]:
        """Seconds until each drone is free: the expected end of the builds it holds."""
        busy = dict.fromkeys(speed, 0.0)
        for row in self.conn.execute(
                "SELECT drone, updated_at, expected_seconds FROM packages INDEXED BY"
                " packages_delegated WHERE status = 'delegated'"):
            if row["drone"] in speed and row["drone"] != claimant.name:
                busy[row["drone"]] += max(self._left(row, speed[row["drone"]], claimant), 0.0)
        return busy

    def upcoming(self, claimant: Claimant, speed: dict[str, float]) -> list[dict]:
        """Packages that will be eligible once the builds running now end: when, in seconds."""
        found = []
        for row in self.conn.execute(
                "SELECT p.id, p.cpv, p.priority, p.expected_seconds FROM packages p"
                " WHERE p.status = 'needed' AND p.active = 1 AND p.resolved IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM requires r JOIN packages d ON d.id = r.dep_id"
                "   WHERE r.package_id = p.id AND d.active = 1 AND d.status != 'synced')"
                " AND NOT EXISTS (SELECT 1 FROM requires r JOIN packages d ON d.id = r.dep_id"
                "   WHERE r.package_id = p.id AND d.active = 1"
                "   AND d.status IN ('needed', 'failed'))"
                " ORDER BY p.priority DESC LIMIT ?", (LOOKAHEAD,)):
            ready = 1.0  # not eligible now: at best once what was built is published
            for dep in self.conn.execute(
                    "SELECT d.drone, d.updated_at, d.expected_seconds, d.status FROM requires r"
                    " JOIN packages d ON d.id = r.dep_id WHERE r.package_id = ?"
                    " AND d.active = 1 AND d.status = 'delegated'", (row["id"],)):
                left = self._left(dep, speed.get(dep["drone"], 1.0), claimant)
                ready = max(ready, left)
            found.append({**dict(row), "ready_in": ready})
        return found

    def _speed(self, name: str, learned: float | None) -> float:
        configured = self.config.drones.get(name)
        return configured.speed if configured and configured.speed else learned or 1.0

    def _left(self, row, speed: float, claimant: Claimant) -> float:
        started = clock.parse(row["updated_at"])
        return ((row["expected_seconds"] or self.default) / speed
                - (claimant.now - started).total_seconds())


def _merged(candidates: Iterable[sqlite3.Row], upcoming: list[dict]):
    """Ready candidates and upcoming packages, together in priority order."""
    upcoming = sorted(upcoming, key=lambda p: -p["priority"])
    for package in candidates:
        while upcoming and upcoming[0]["priority"] > package["priority"]:
            yield upcoming.pop(0)
        yield package
    yield from upcoming
