"""The queue's side of delegation: heartbeats, leases, claims and reports.

A claim runs inside one ``BEGIN IMMEDIATE``: it walks the eligible
candidates in queue order (:mod:`eligibility`), lets a policy pick one and
takes it with ``UPDATE ... WHERE id = ? AND status = 'needed' RETURNING``,
so a package is handed to exactly one drone however many ask at once.
Leases expire when a drone stops sending heartbeats; expiry (and the end of
a failed build's back-off) is applied at the start of every claim, and by
``swarm-delegate expire`` from cron. A claim that finds the exclusion
matches older than the latest scan, the exclusion file or the routes has
them matched again (:func:`exclude.refresh`) outside its transaction, then
claims. Events are written with the drone's
name as actor. Every function takes "now" from its caller.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from . import clock, db, eligibility, exclude, gpkg, packages, profile, staging
from .config import DEFAULT, Config
from .errors import ExitCode, SwarmError, TryLater
from .packages import Event, FailureKind, State
from .placement import CriticalPath

ACTOR = "swarm-delegate"


# What each fact a drone sends must be (swarm-drone's Drone.facts). Facts
# are stored and shown as JSON, and read by routing and swarm-status: a
# value of another type is refused, not stored. A fact not named here (a
# newer drone's) is kept and shown, never used.
_KINDS = {
    "a string": lambda v: isinstance(v, str),
    "a string or null": lambda v: v is None or isinstance(v, str),
    "true or false": lambda v: isinstance(v, bool),
    "a whole number or null": lambda v: v is None or (isinstance(v, int)
                                                       and not isinstance(v, bool)),
    "a number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
FACT_KINDS = {
    "arch": "a string", "machine": "a string", "chost": "a string", "cflags": "a string",
    "abi_x86": "a string", "binhost": "a string", "version": "a string",
    "isolation": "a string or null", "build_root": "a string or null",
    "config_digest": "a string or null", "profile_digest": "a string or null",
    "cuda": "true or false", "jobs": "a whole number or null",
    "free_disk": "a whole number or null", "load": "a number",
    "binrepos": "a list of strings", "building": "a list of strings",
}


def check_facts(facts: dict) -> str:
    """FACTS as JSON to store, or SwarmError naming the first fact of the wrong type."""
    for key, kind in FACT_KINDS.items():
        if key in facts and not _KINDS[kind](facts[key]):
            raise SwarmError(f"heartbeat facts: {key} must be {kind}, not "
                             f"{json.dumps(facts[key])[:80]}", ExitCode.USAGE)
    try:
        # NaN and Infinity are not JSON: stored, they would make swarm-status
        # --json and the page's index.json unreadable.
        return json.dumps(facts, sort_keys=True, allow_nan=False)
    except ValueError:
        raise SwarmError("heartbeat facts: a number is NaN or Infinity, which JSON does not "
                         "have", ExitCode.USAGE) from None


def heartbeat(conn: sqlite3.Connection, config: Config, drone: str, facts: dict,
              now: datetime) -> dict:
    """Record a drone's facts; extend the leases of what it says it is building.

    A lease lives only while its drone says it works on it: a lease the drone
    does not list (a claim whose answer was lost, say) is not extended and
    runs out, unless the drone's next claim takes it up.
    """
    config.drone(drone)  # a drone taken out of the config is refused
    stored = check_facts(facts)
    working = facts.get("building", [])
    lease_until = clock.later(now, config.delegate.lease_seconds)
    digest = facts.get("config_digest")
    with db.write(conn):
        conn.execute(
            "INSERT INTO drones (name, last_heartbeat, facts, config_digest) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_heartbeat = excluded.last_heartbeat,"
            " facts = excluded.facts, config_digest = excluded.config_digest",
            (drone, clock.iso(now), stored, digest))
        extended = 0
        for row in conn.execute(
                "SELECT id, cpv FROM packages INDEXED BY packages_delegated"
                " WHERE status = 'delegated' AND drone = ? AND active = 1", (drone,)).fetchall():
            if row["cpv"] in working:
                extended += packages.update(conn, row["id"], guard={"status": State.DELEGATED},
                                            lease_until=lease_until)
    return {"drone": drone, "leases_extended": extended, "lease_until": lease_until,
            "config_matches": digest == config.digest()}


def expire(conn: sqlite3.Connection, now: datetime) -> dict:
    """Return expired leases and finished back-offs to 'needed'."""
    with db.write(conn):
        return _expire(conn, clock.iso(now))


def _expire(conn: sqlite3.Connection, at: str) -> dict:
    # The states are written out in the SQL so SQLite can use the partial
    # indexes on leases and back-offs (it cannot match a bound parameter
    # to an index's WHERE); delegated rows are few, one a drone.
    expired = conn.execute(
        "SELECT id, drone FROM packages INDEXED BY packages_leases"
        " WHERE status = 'delegated' AND lease_until < ?",
        (at,)).fetchall()
    for row in expired:
        packages.move(conn, row["id"], expect=State.DELEGATED, to=State.NEEDED,
                      event=Event.EXPIRED, actor=ACTOR, at=at, event_drone=row["drone"],
                      detail=f"lease of {row['drone']} expired without heartbeat",
                      **packages.NO_LEASE)
    retried = conn.execute(
        "SELECT id, attempts FROM packages INDEXED BY packages_backoffs"
        " WHERE status = 'failed' AND active = 1"
        " AND retry_after <= ?", (at,)).fetchall()
    for row in retried:
        packages.move(conn, row["id"], expect=State.FAILED, to=State.NEEDED, event=Event.RETRY,
                      actor=ACTOR, at=at,
                      detail=f"back-off over after {row['attempts']} failed attempt(s)")
    return {"expired": len(expired), "retried": len(retried)}


_CLAIM_KEYS = ("cpv", "slot", "subslot", "repo", "use", "attempts")


def _forgotten_lease(conn: sqlite3.Connection, drone: str) -> sqlite3.Row | None:
    """A lease the drone holds but did not say it works on (its claim's answer was lost)."""
    facts = conn.execute("SELECT facts FROM drones WHERE name = ?", (drone,)).fetchone()
    working = json.loads(facts["facts"]).get("building", []) if facts else []
    for row in conn.execute(
            "SELECT id, cpv, slot, subslot, repo, use, attempts FROM packages"
            " INDEXED BY packages_delegated WHERE status = 'delegated' AND drone = ?"
            " AND active = 1 ORDER BY updated_at, id", (drone,)):
        if row["cpv"] not in working:
            return row
    return None


def claim(conn: sqlite3.Connection, config: Config, drone: str, now: datetime,
          policy=None, rules=eligibility.RULES, renew: bool = True,
          idle: bool = False) -> dict | None:
    """Hand the best eligible package to a drone, or return None when there is none
    (IDLE: the idle answer instead, of the same moment).

    A drone that holds a lease it did not list as building in its last
    heartbeat gets that lease again first (renew), so a claim whose answer
    was lost on the way costs nothing.
    """
    config.drone(drone)
    if policy is None:
        policy = (CriticalPath(conn, config) if config.delegate.policy == "critical"
                  else eligibility.FirstEligible())
    for _ in range(exclude.ATTEMPTS):
        with db.write(conn):
            _expire(conn, clock.iso(now))
            _refuse_grounded(conn, drone, clock.iso(now))
            if exclude.up_to_date(conn, config):
                return _hand_out(conn, config, drone, now, policy, rules, renew, idle)
        # A scan, the exclusion file or the routes changed: the rules are
        # matched again first, while the database is free (Portage is
        # imported only then).
        exclude.refresh(conn, config, now, only_if_stale=True)
    raise TryLater(f"the queue or the exclusion rules changed while {drone} claimed, "
                   f"{exclude.ATTEMPTS} times; try again")


def _hand_out(conn: sqlite3.Connection, config: Config, drone: str, now: datetime,
              policy, rules, renew: bool, idle: bool) -> dict | None:
    """The claim itself, inside its transaction, with the exclusions matched."""
    at = clock.iso(now)
    lease_until = clock.later(now, config.delegate.lease_seconds)
    claimant = eligibility.claimant_for(conn, config, drone, now)
    if renew and (held := _forgotten_lease(conn, drone)) is not None:
        packages.update(conn, held["id"], guard={"status": State.DELEGATED},
                        lease_until=lease_until)
        return {**{k: held[k] for k in _CLAIM_KEYS}, "lease_until": lease_until,
                **built_with(conn, config, *_wanted(conn, held["id"]))}
    while True:
        choice = policy.pick(_not_held(conn, drone, eligibility.candidates(
            conn, claimant, rules)), claimant)
        if choice is None:
            # Read in the claim's transaction: a publication that ends just
            # after it is still in progress in the answer, so a draining
            # drone asks again rather than stop before what it frees.
            return idle_answer(conn, config, now) if idle else None
        binhost, wanted_by = _wanted(conn, choice["id"])
        # A build only removed profiles (or a removed binhost) want, before
        # swarm-fresh retires it: retired here instead of built.
        why = packages.unwanted(binhost, wanted_by, config.profile_names(),
                                config.binhost_names())
        if why is None:
            break
        packages.retire(conn, choice, actor=ACTOR, at=at, why=why)
    row = packages.take(conn, choice["id"], drone=drone, lease_until=lease_until,
                        actor=drone, at=at, detail=f"lease until {lease_until}")
    if row is None:  # cannot happen inside the transaction; a policy bug otherwise
        raise SwarmError(f"{choice['cpv']} was not needed when claimed")
    claimed = dict(row)
    del claimed["id"]
    return {**claimed, **built_with(conn, config, binhost, wanted_by)}


def _not_held(conn: sqlite3.Connection, drone: str, candidates):
    """CANDIDATES, but builds of a CPV DRONE holds a lease on (another binhost's build).

    A drone names a build by its CPV alone (heartbeat, report, release,
    upload path): with one lease a CPV, each names exactly one build. That
    is simpler than naming the binhost in every message, and changes no
    drone; the other build goes to another drone, or to this one next.
    """
    for row in candidates:
        if conn.execute("SELECT 1 FROM packages INDEXED BY packages_delegated WHERE"
                        " status = 'delegated' AND drone = ? AND cpv = ?",
                        (drone, row["cpv"])).fetchone() is None:
            yield row


def _wanted(conn: sqlite3.Connection, package_id: int) -> tuple[str, list[str]]:
    """A build's binhost, and the profiles that want it (sorted)."""
    binhost, wanted_by = conn.execute(
        "SELECT binhost, (SELECT group_concat(profile, ' ') FROM wants WHERE package_id = ?"
        " AND active = 1) FROM packages WHERE id = ?", (package_id, package_id)).fetchone()
    return binhost, sorted((wanted_by or "").split())


def built_with(conn: sqlite3.Connection, config: Config, binhost: str,
               wanted_by: list[str]) -> dict:
    """What a claim says to build a package with: the profile (configuration and
    repositories its scan saw) and the binhost its build is for."""
    # Profiles sharing a build want the same identity: any of them will do.
    ours = [name for name in wanted_by if name in config.profile_names()]
    return {"profile": profile.recorded(conn, ours[0] if ours else DEFAULT),
            "binhost": {"name": binhost, "url": config.binhost_named(binhost).url}}


def _refuse_grounded(conn: sqlite3.Connection, drone: str, at: str) -> None:
    row = conn.execute("SELECT grounded_until, grounded_reason FROM drones WHERE name = ?"
                       " AND grounded_until > ?", (drone, at)).fetchone()
    if row is not None:
        raise SwarmError(f"drone '{drone}' is grounded until {row['grounded_until']}: "
                         f"{row['grounded_reason']} (lift it: swarm-delegate unground "
                         f"--drone {drone})", ExitCode.FAILED)


# Idle claims the orchestrator invites per second, fleet-wide, when it says
# "ask again sooner": while work is in progress, new work is picked up
# within about a second however many drones wait, and they cost it about
# one ssh session a second together.
IDLE_CLAIMS_PER_SECOND = 1.0


def idle_answer(conn: sqlite3.Connection, config: Config, now: datetime) -> dict:
    """What a drone that got nothing hears: work in progress, back-offs about to end, and
    when to ask again.

    in_progress: packages being built or published (their dependents may
    become eligible); retry_soon: packages whose back-off ends within
    idle_max_seconds (a missing dependency's short wait, say). While either
    is not 0, something may become eligible without a new scan: a draining
    drone goes on asking. ask_again_seconds is set when work may become
    eligible before the drone's own back-off would end: a build or a
    publication in progress, or a back-off that ends. It is never shorter
    than the fleet's idle drones can afford (IDLE_CLAIMS_PER_SECOND), nor
    than poll_seconds. None: the drone waits its own back-off (nothing
    changes until a scan).
    """
    d = config.delegate
    busy = in_progress(conn)
    at = clock.iso(now)
    due, retry_soon = conn.execute(
        "SELECT min(retry_after), count(*) FILTER (WHERE retry_after <= ?) FROM packages"
        " WHERE active = 1 AND status IN (?, ?) AND retry_after > ?",
        (clock.later(now, d.idle_max_seconds), State.NEEDED, State.FAILED, at)).fetchone()
    soon = [(clock.parse(due) - now).total_seconds()] if due else []
    if busy:
        soon.append(idle_drones(conn, config, now) / IDLE_CLAIMS_PER_SECOND)
    ask_again = round(min(max(min(soon), d.poll_seconds), d.idle_max_seconds)) if soon else None
    return {"cpv": None, "in_progress": busy, "retry_soon": retry_soon,
            "ask_again_seconds": ask_again}


def idle_drones(conn: sqlite3.Connection, config: Config, now: datetime) -> int:
    """Online drones that hold no lease."""
    holders = {row[0] for row in conn.execute(
        "SELECT drone FROM packages INDEXED BY packages_delegated WHERE status = 'delegated'")}
    return len(eligibility.online_drones(conn, config.delegate.online_seconds, now) - holders)


def in_progress(conn: sqlite3.Connection) -> int:
    """Packages being built or waiting for publication: work that may make more eligible."""
    return conn.execute("SELECT count(*) FROM packages WHERE active = 1 AND status IN (?, ?)",
                        (State.DELEGATED, State.RECEIVED)).fetchone()[0]


def _held_lease(conn: sqlite3.Connection, drone: str, cpv: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT id, attempts FROM packages WHERE cpv = ? AND drone = ? AND status = ?"
        " AND active = 1", (cpv, drone, State.DELEGATED)).fetchone()
    if row is None:
        raise SwarmError(f"drone '{drone}' holds no lease on {cpv}")
    return row


def _last_word(conn: sqlite3.Connection, drone: str, cpv: str) -> sqlite3.Row | None:
    """The package row, with its latest event, if that event was DRONE's (a report repeated).

    None while DRONE holds a lease on CPV: the report is for that build (the
    same CPV may have been built by DRONE for another binhost before).
    """
    return conn.execute(
        "SELECT p.*, e.event AS last_event, e.kind AS last_kind FROM packages p"
        " JOIN events e ON e.id = (SELECT max(id) FROM events WHERE package_id = p.id)"
        " WHERE p.cpv = ? AND p.active = 1 AND e.drone = ? AND NOT EXISTS (SELECT 1 FROM"
        " packages h INDEXED BY packages_delegated WHERE h.status = 'delegated' AND h.drone = ?"
        " AND h.cpv = p.cpv AND h.active = 1) ORDER BY e.id DESC LIMIT 1",
        (cpv, drone, drone)).fetchone()


def report_built(conn: sqlite3.Connection, config: Config, drone: str, cpv: str, file: str,
                 now: datetime, size: int | None = None, sha256: str | None = None) -> dict:
    """Record a successful build whose binary package is in the drone's staging area.

    Repeating a report (its answer was lost) is answered as the first was.
    """
    config.drone(drone)
    with db.write(conn):
        done = _last_word(conn, drone, cpv)
        if (done is not None and sha256 and done["last_event"] in (Event.BUILT, Event.SYNCED)
                and done["digest"] == sha256):
            return {"cpv": cpv, "status": done["status"], "file": done["file"],
                    "size": done["size"], "sha256": done["digest"]}
    path = staging.staged_path(config, drone, file)
    name = gpkg.parse_name(path.name)
    if name is None or name.pf != cpv.split("/", 1)[-1]:
        raise SwarmError(f"'{path.name}' is not a binary package of {cpv}")
    if not path.is_file():
        raise SwarmError(f"no uploaded file at staging/{drone}/{file}")
    actual_size, digest = gpkg.file_digest(path)
    if size is not None and size != actual_size:
        raise SwarmError(f"staging/{drone}/{file} has {actual_size} bytes, not {size}: upload incomplete")
    if sha256 is not None and sha256 != digest:
        raise SwarmError(f"staging/{drone}/{file} does not match its sha256: upload corrupt")
    staged_relative = str(path.relative_to(config.staging_dir.resolve()))
    return record_built(conn, drone, cpv, staged_relative, actual_size, digest, name.build_id, now)


def record_built(conn: sqlite3.Connection, drone: str, cpv: str, staged_relative: str,
                 size: int, digest: str, build_id: int | None, now: datetime) -> dict:
    """The queue's half of a successful report (the upload already checked): received."""
    with db.write(conn):
        held = _held_lease(conn, drone, cpv)
        packages.move(conn, held["id"], expect=State.DELEGATED, to=State.RECEIVED,
                      event=Event.BUILT, actor=drone, at=clock.iso(now), event_drone=drone,
                      detail=f"{staged_relative} ({size} bytes, sha256 {digest})",
                      lease_until=None, file=staged_relative, size=size, digest=digest,
                      build_id=build_id, binhost_path=None)
    return {"cpv": cpv, "status": "received", "file": staged_relative, "size": size,
            "sha256": digest}


def report_failed(conn: sqlite3.Connection, config: Config, drone: str, cpv: str,
                  now: datetime, log: str | None = None,
                  kind: FailureKind = FailureKind.BUILD, missing: list[str] | None = None) -> dict:
    """Record a failed build: keep its log, count the attempt, set the back-off.

    A missing binary dependency (MISSING lists them) is not the package's
    failure: it goes back to needed, gated on those, with no attempt counted.
    """
    config.drone(drone)
    kind = FailureKind(kind)
    with db.write(conn):
        done = _last_word(conn, drone, cpv)
        if done is not None and done["last_event"] == Event.BUILD_FAILED:
            return {"cpv": cpv, "status": done["status"], "attempts": done["attempts"],
                    "retry_after": done["retry_after"], "log": None, "kind": done["last_kind"]}
    at = clock.iso(now)
    kept = None
    if log:
        if not log.startswith("logs/"):
            raise SwarmError(f"build logs go under staging/{drone}/logs/, not {log!r}")
        source = staging.staged_path(config, drone, log)
        if not source.is_file():
            raise SwarmError(f"no uploaded log at staging/{drone}/{log}")
    with db.write(conn):
        held = _held_lease(conn, drone, cpv)
        if log:
            kept = staging.keep_log(config, source, cpv, drone, now)
        if kind == FailureKind.MISSING_DEPENDENCY:
            return _wait_for_dependencies(conn, config, held, drone, cpv, missing or [], kept, now)
        if kind in (FailureKind.ENVIRONMENT, FailureKind.FETCH):
            return _drones_trouble(conn, config, held, drone, cpv, kind, kept, now)
        attempts = held["attempts"] + 1
        backoff = min(config.delegate.retry_seconds * 2 ** (attempts - 1),
                      config.delegate.retry_max_seconds)
        retry_after = clock.later(now, backoff)
        packages.move(conn, held["id"], expect=State.DELEGATED, to=State.FAILED,
                      event=Event.BUILD_FAILED, actor=drone, at=at, event_drone=drone,
                      kind=kind, detail=f"{kind}: attempt {attempts}; retry after {retry_after}"
                                        + (f"; log {kept}" if kept else ""),
                      lease_until=None, attempts=attempts, retry_after=retry_after)
        control = exclude.after_failure(conn, config, drone, held["id"], kind, now,
                                        str(kept) if kept else None)
        # (A grounding gives the package its attempt back.)
        now_row = conn.execute("SELECT status, attempts, retry_after FROM packages WHERE id = ?",
                               (held["id"],)).fetchone()
    return {"cpv": cpv, **dict(now_row), "log": str(kept) if kept else None, "kind": str(kind),
            **control}


def _drones_trouble(conn, config: Config, held, drone: str, cpv: str, kind: FailureKind,
                    kept, now: datetime) -> dict:
    """A full disk or a failed fetch: not the package's failure.

    The package is needed again at once, for other drones (no attempt
    counted); this drone is held from it for a back-off, and a drone that
    fails one build after another is grounded all the same.
    """
    until = clock.later(now, config.delegate.retry_seconds)
    packages.move(conn, held["id"], expect=State.DELEGATED, to=State.NEEDED,
                  event=Event.BUILD_FAILED, actor=drone, at=clock.iso(now), event_drone=drone,
                  kind=kind, detail=f"{kind}: {drone}'s trouble, not the package's; not for "
                                    f"{drone} until {until}" + (f"; log {kept}" if kept else ""),
                  **packages.NO_LEASE)
    packages.hold(conn, held["id"], drone, until, f"{kind} failure on {drone}")
    control = exclude.after_failure(conn, config, drone, held["id"], kind, now,
                                    str(kept) if kept else None)
    return {"cpv": cpv, "status": "needed", "attempts": held["attempts"], "retry_after": None,
            "log": str(kept) if kept else None, "kind": str(kind), **control}


def _wait_for_dependencies(conn, config: Config, held, drone: str, cpv: str,
                           missing: list[str], kept, now: datetime) -> dict:
    """Not the package's failure: it waits (no attempt counted) for what the drone missed."""
    # Named dependencies gate it until published; a short pause covers one
    # the queue does not hold (the drone asks again soon, not in a loop).
    retry_after = clock.later(now, 2 * config.delegate.poll_seconds)
    packages.move(conn, held["id"], expect=State.DELEGATED, to=State.NEEDED,
                  event=Event.BUILD_FAILED, actor=drone, at=clock.iso(now), event_drone=drone,
                  kind=FailureKind.MISSING_DEPENDENCY,
                  detail=f"no binary on the binhost of: {' '.join(missing) or 'unknown'}; "
                         "waits for them" + (f"; log {kept}" if kept else ""),
                  lease_until=None, retry_after=retry_after,
                  waits_for=json.dumps(missing) if missing else None)
    return {"cpv": cpv, "status": "needed", "attempts": held["attempts"],
            "retry_after": retry_after, "log": str(kept) if kept else None,
            "kind": str(FailureKind.MISSING_DEPENDENCY), "waits_for": missing}


# Why a drone gives a package back unbuilt (release --because): its own
# state, never the package's. The drone is held from the package a while.
GIVE_BACK = {
    "tree": "its ebuild repositories are not the scan's",
    "settings": "its CHOST or ARCH is not the profile's",
    "profile": "it could not set up the profile's Portage configuration",
    "isolation": "it could not set up the build's throw-away root",
}


def release(conn: sqlite3.Connection, config: Config, drone: str, cpv: str,
            now: datetime, because: str | None = None, found: str | None = None) -> dict:
    """Give a lease back: the package is 'needed' again at once (again: a no-op).

    BECAUSE (a GIVE_BACK key) says the drone cannot build it as the scan
    asked; FOUND what it found. No attempt is counted, and the drone is held
    from the package for delegate.idle_max_seconds (others may take it).
    """
    config.drone(drone)
    if because is not None and because not in GIVE_BACK:
        raise SwarmError(f"--because is one of {', '.join(GIVE_BACK)}, not {because!r}",
                         ExitCode.USAGE)
    at = clock.iso(now)
    detail = ""
    with db.write(conn):
        done = _last_word(conn, drone, cpv)
        if done is not None and done["last_event"] == Event.RELEASED:
            return {"cpv": cpv, "status": done["status"]}
        held = _held_lease(conn, drone, cpv)
        if because:
            until = clock.later(now, config.delegate.idle_max_seconds)
            detail = (f"given back: {drone}: {GIVE_BACK[because]}"
                      + (f" ({found})" if found else "") + f"; not for {drone} until {until}")
            packages.hold(conn, held["id"], drone, until, f"{drone}: {GIVE_BACK[because]}")
        packages.move(conn, held["id"], expect=State.DELEGATED, to=State.NEEDED,
                      event=Event.RELEASED, actor=drone, at=at, event_drone=drone,
                      detail=detail, **packages.NO_LEASE)
    return {"cpv": cpv, "status": "needed", **({"because": because} if because else {})}
