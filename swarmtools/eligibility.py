"""Which packages a drone may take, as named rules that both filter and explain.

A claim asks every rule for an SQL condition (and, where SQL cannot say
it, a Python test), walks the candidates in queue order (priority, then
merge order) and lets a policy pick one. ``swarm-status --why`` asks the
same rules to explain, so what filters and what is said never disagree.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import clock, routing
from .config import Config
from .packages import State


@dataclass(frozen=True)
class Claimant:
    """A drone asking for work (name None: any drone), the moment, what it is and can do."""

    name: str | None
    now: datetime
    at: str  # clock.iso(now)
    build_class: str | None = None
    features: frozenset = frozenset()
    mandatory: frozenset = frozenset()


def claimant_for(conn: sqlite3.Connection, config: Config, drone: str,
                 now: datetime) -> Claimant:
    """DRONE as the rules see it: its build class and features, from its facts and its config."""
    row = conn.execute("SELECT facts FROM drones WHERE name = ?", (drone,)).fetchone()
    facts = json.loads(row["facts"]) if row else {}
    settings = config.drones.get(drone)
    return Claimant(
        drone, now, clock.iso(now), build_class=routing.build_class(facts),
        features=frozenset(routing.features(facts, settings.features, settings.mandatory_features)
                           if settings else routing.features(facts)),
        mandatory=frozenset(settings.mandatory_features if settings else ()))


class Rule:
    """A condition a package must meet to be handed to a drone."""

    name = "rule"

    def where(self, claimant: Claimant) -> tuple[str, tuple] | None:
        """An SQL condition on ``packages`` (and its parameters), or None."""
        return None

    def allows(self, package: sqlite3.Row, claimant: Claimant) -> bool:
        """A test SQL cannot express; True by default."""
        return True

    def explain(self, conn: sqlite3.Connection, package: sqlite3.Row,
                claimant: Claimant) -> str | None:
        """Why PACKAGE is not handed out to CLAIMANT (None: this rule allows it)."""
        return None


class Wanted(Rule):
    """Only what the latest scan wants and nobody builds yet."""

    name = "wanted"

    def where(self, claimant):
        # The state written out, not bound: SQLite prepares a statement again
        # at every run when a bound value decides whether a partial index
        # (packages_delegated, ...) applies, which cost a claim more than the rest.
        return "status = 'needed' AND active = 1", ()

    def explain(self, conn, package, claimant):
        if not package["active"]:
            return "retired: not in the latest scan"
        if package["status"] != State.NEEDED:
            holder = f" by {package['drone']}" if package["status"] == State.DELEGATED else ""
            return f"{package['status']}{holder}, not needed"
        return None


class BackOff(Rule):
    """A failed build waits for its back-off to end."""

    name = "back-off"

    def where(self, claimant):
        return "(retry_after IS NULL OR retry_after <= ?)", (claimant.at,)

    def explain(self, conn, package, claimant):
        if package["retry_after"] and package["retry_after"] > claimant.at:
            return (f"in back-off until {package['retry_after']} after "
                    f"{package['attempts']} failed attempt(s)")
        return None


class Held(Rule):
    """A drone whose upload of a package was refused waits before taking it again."""

    name = "held"

    def where(self, claimant):
        return ("NOT EXISTS (SELECT 1 FROM holds h WHERE h.package_id = packages.id"
                " AND h.drone = ? AND h.until > ?)"), (claimant.name, claimant.at)

    def explain(self, conn, package, claimant):
        rows = conn.execute(
            "SELECT drone, until, reason FROM holds WHERE package_id = ? AND until > ?"
            " AND (? IS NULL OR drone = ?) ORDER BY drone",
            (package["id"], claimant.at, claimant.name, claimant.name)).fetchall()
        if not rows:
            return None
        return "; ".join(f"not for {r['drone']} until {r['until']} ({r['reason']})" for r in rows)


class DependenciesPublished(Rule):
    """A package waits until what its build installs is on the binhost (swarm-resolve).

    Until swarm-resolve has seen a package, it goes in merge order unguarded:
    its drone checks before building, reports a missing binary dependency
    instead of compiling it, and the package waits for what it named.
    """

    name = "dependencies"

    def where(self, claimant):
        return ("NOT EXISTS (SELECT 1 FROM requires r JOIN packages d ON d.id = r.dep_id"
                " WHERE r.package_id = packages.id AND d.active = 1 AND d.status != 'synced')"
                " AND (waits_for IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(waits_for) w"
                " JOIN packages m ON m.cpv = w.value WHERE m.active = 1"
                " AND m.binhost = packages.binhost AND m.status != 'synced'))"), ()

    def explain(self, conn, package, claimant):
        waiting = conn.execute(
            "SELECT d.cpv, d.status FROM requires r JOIN packages d ON d.id = r.dep_id"
            " WHERE r.package_id = ? AND d.active = 1 AND d.status != 'synced'"
            " UNION SELECT m.cpv, m.status FROM packages p, json_each(p.waits_for) w"
            " JOIN packages m ON m.cpv = w.value WHERE p.id = ? AND m.active = 1"
            " AND m.binhost = p.binhost AND m.status != 'synced' ORDER BY 1",
            (package["id"], package["id"])).fetchall()
        if not waiting:
            return None
        failed = [cpv for cpv, status in waiting if status == State.FAILED]
        shown = ", ".join(f"{cpv} ({status})" for cpv, status in waiting[:10])
        more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
        return (f"waits for {len(waiting)} dependencies to be published: {shown}{more}"
                + (f"; waits on a failure: {', '.join(failed)}" if failed else ""))


class NotExcluded(Rule):
    """No exclusion rule covers the package for this drone (swarm-exclude)."""

    name = "excluded"

    def where(self, claimant):
        return (("NOT EXISTS (SELECT 1 FROM excluded x WHERE x.package_id = packages.id"
                 " AND (x.drone IS NULL OR x.drone = ?) AND (x.class IS NULL OR x.class IS ?)"
                 " AND (x.until IS NULL OR x.until > ?))"),
                (claimant.name, claimant.build_class, claimant.at))

    def explain(self, conn, package, claimant):
        rows = conn.execute(
            "SELECT e.id, e.atom, e.drone, e.class, e.reason, e.source, e.until FROM excluded x"
            " JOIN exclusions e ON e.id = x.rule_id WHERE x.package_id = ?"
            " AND (x.until IS NULL OR x.until > ?) AND (? IS NULL OR ((x.drone IS NULL OR"
            " x.drone = ?) AND (x.class IS NULL OR x.class IS ?))) ORDER BY e.id",
            (package["id"], claimant.at, claimant.name, claimant.name,
             claimant.build_class)).fetchall()
        if not rows:
            return None
        return "; ".join(
            f"excluded by rule {r['id']} ({r['source']}) {r['atom']} for "
            f"{_scope(r['drone'], r['class'])}: {r['reason']}"
            + (f" (until {r['until']})" if r["until"] else "") for r in rows)


def _scope(drone: str | None, build_class: str | None) -> str:
    return f"drone {drone}" if drone else f"class {build_class}" if build_class else "every drone"


class Capable(Rule):
    """The drone has every feature the package requires; a drone with mandatory
    features takes only packages that require them all."""

    name = "capability"

    def where(self, claimant):
        have = sorted(claimant.features)
        # (x NOT IN (NULL) is NULL in SQL, never true: a drone without features
        # needs its own clause.)
        lacking = f" AND q.feature NOT IN ({', '.join('?' * len(have))})" if have else ""
        clause = ("NOT EXISTS (SELECT 1 FROM requirements q WHERE q.package_id = packages.id"
                  f"{lacking})")
        params = list(have)
        for feature in sorted(claimant.mandatory):
            clause += (" AND EXISTS (SELECT 1 FROM requirements q WHERE"
                       " q.package_id = packages.id AND q.feature = ?)")
            params.append(feature)
        return clause, tuple(params)

    def explain(self, conn, package, claimant):
        needs = conn.execute("SELECT feature, why FROM requirements WHERE package_id = ?"
                             " ORDER BY feature", (package["id"],)).fetchall()
        if claimant.name is not None:
            missing = [f"{r['feature']} ({r['why']})" for r in needs
                       if r["feature"] not in claimant.features]
            if missing:
                return f"{claimant.name} lacks {', '.join(missing)}"
            extra = sorted(claimant.mandatory - {r["feature"] for r in needs})
            return (f"{claimant.name} takes only packages that require {', '.join(extra)}"
                    if extra else None)
        return None


RULES: tuple[Rule, ...] = (Wanted(), BackOff(), Held(), DependenciesPublished(), NotExcluded(),
                           Capable())
# The rules that depend on which drone asks; the others hold for every drone.
DRONE_RULES = ("held", "excluded", "capability")

_CANDIDATE_COLUMNS = ("id, cpv, cp, slot, subslot, repo, use, status, active, drone, attempts,"
                      " retry_after, priority, scan_order, expected_seconds")


def candidates(conn: sqlite3.Connection, claimant: Claimant,
               rules: Iterable[Rule] = RULES) -> Iterator[sqlite3.Row]:
    """Eligible packages for CLAIMANT, best first, read lazily."""
    yield from _eligible(conn, claimant, tuple(rules), "1", [],
                         " ORDER BY priority DESC, scan_order, id")


def admits(conn: sqlite3.Connection, package_id: int, claimant: Claimant,
           rules: Iterable[Rule] = RULES) -> bool:
    """Whether RULES let CLAIMANT have package PACKAGE_ID (candidates()' test, for one package)."""
    return next(_eligible(conn, claimant, tuple(rules), "id = ?", [package_id]), None) is not None


def _eligible(conn: sqlite3.Connection, claimant: Claimant, rules: tuple[Rule, ...],
              condition: str, params: list, order: str = "") -> Iterator[sqlite3.Row]:
    """Rows matching CONDITION that RULES let CLAIMANT have: their SQL, then their tests."""
    conditions, params = [condition], list(params)
    for rule in rules:
        if (clause := rule.where(claimant)) is not None:
            conditions.append(clause[0])
            params.extend(clause[1])
    testers = [r for r in rules if type(r).allows is not Rule.allows]
    for row in conn.execute(f"SELECT {_CANDIDATE_COLUMNS} FROM packages WHERE "
                            + " AND ".join(conditions) + order, params):
        if all(rule.allows(row, claimant) for rule in testers):
            yield row


def reasons(conn: sqlite3.Connection, package: sqlite3.Row, claimant: Claimant,
            rules: Iterable[Rule] = RULES) -> list[tuple[str, str]]:
    """(rule, why) for every rule that keeps PACKAGE from CLAIMANT."""
    found = []
    for rule in rules:
        if (why := rule.explain(conn, package, claimant)) is not None:
            found.append((rule.name, why))
    return found


class FirstEligible:
    """Take the best candidate in queue order: priority, then merge order."""

    name = "first"

    def pick(self, candidates: Iterable[sqlite3.Row], claimant: Claimant) -> sqlite3.Row | None:
        """The package to hand to CLAIMANT, or None."""
        return next(iter(candidates), None)


def online_drones(conn: sqlite3.Connection, online_seconds: int, now: datetime) -> set[str]:
    """Drones heard from within ONLINE_SECONDS, or holding a live lease.

    A building drone beats only every third of its lease, so its last
    heartbeat may be older than the window while it works.
    """
    at = clock.iso(now)
    # The lease holders are found by stepping from one drone to the next in
    # the index, not by reading every lease: asked at every claim.
    return {row[0] for row in conn.execute(
        "WITH RECURSIVE holder (name) AS (SELECT min(drone) FROM packages INDEXED BY"
        " packages_delegated WHERE status = 'delegated' UNION ALL SELECT (SELECT min(drone)"
        " FROM packages INDEXED BY packages_delegated WHERE status = 'delegated'"
        " AND drone > holder.name) FROM holder WHERE name IS NOT NULL)"
        " SELECT name FROM holder WHERE EXISTS (SELECT 1 FROM packages INDEXED BY"
        " packages_delegated WHERE status = 'delegated' AND drone = holder.name"
        " AND lease_until > ?) UNION SELECT name FROM drones WHERE last_heartbeat >= ?",
        (at, clock.iso(now - timedelta(seconds=online_seconds))))}
