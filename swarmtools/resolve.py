"""The dependency graph of the queue, its cache, and the priorities it gives.

For every queued package: its dependencies that are themselves queued, each
edge with its kinds (DEPEND, BDEPEND, RDEPEND, PDEPEND, IDEPEND). They are
read with Portage's API from the ebuild metadata (``portdb.aux_get``: the
repository's md5-cache when it has one), USE conditionals evaluated with the
package's USE from the scan (``use_reduce``; flags outside IUSE, the ARCH
and the hidden USE_EXPAND ones, from the profile), ``||`` groups resolved to
the first alternative the queue holds, atoms matched against the queue with
Portage's ``match_from_list``. Reduced dependency lists are cached by
identity (cpv, repository, USE, the ebuild's metadata hash), and the edges
of a package are kept while its identity and the queued packages its atoms
name stay the same: a rescan recomputes only what changed.

What gates a claim (table ``requires``): the drone installs a package's
build-time dependencies from the binhost and then builds it with
``--buildpkgonly``, so a package needs its DEPEND and BDEPEND and their
runtime closure (RDEPEND, IDEPEND) published (``gate="full"``, the plain
``emerge =CPV``, needs its runtime closure too). PDEPEND never gates.
Cycles: the scan's merge list is an order in which Portage has broken
every cycle, so an edge whose dependency comes later in it than its
dependent is one Portage broke: it does not gate (and is logged).

Priority: the longest chain of expected build time that waits on a package,
itself included (as dpb and Hydra order their queues); expected times come
from the swarm's own builds, then emerge.log files, then a default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import clock, db, emergelog, packages, portageenv, staging
from .config import Config
from .packages import Event

log = logging.getLogger(__name__)

KINDS = ("DEPEND", "BDEPEND", "RDEPEND", "PDEPEND", "IDEPEND")
BUILD_KINDS = frozenset({"DEPEND", "BDEPEND"})
RUNTIME_KINDS = frozenset({"RDEPEND", "IDEPEND"})
GATES = ("buildtime", "full")


@dataclass
class Node:
    """A queued package as the graph sees it."""

    id: int
    cpv: str
    cp: str
    slot: str
    subslot: str
    repo: str
    use: str
    order: int
    resolved: str | None = None
    priority: int = 0
    expected: int | None = None
    binhost: str = "default"
    # The profiles that want it: a dependency is matched among the builds
    # each of them wants (else among its binhost's).
    profiles: tuple[str, ...] = ()


@dataclass
class Result:
    """What a run of swarm-resolve did (its --json answer)."""

    packages: int = 0
    recomputed: int = 0      # dependency strings read and reduced anew
    cached: int = 0          # taken from the cache
    rematched: int = 0       # edges matched anew against the queue
    edges: int = 0
    requires: int = 0
    cycles_broken: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"packages": self.packages, "recomputed": self.recomputed, "cached": self.cached,
                "rematched": self.rematched, "edges": self.edges, "requires": self.requires,
                "cycles_broken": len(self.cycles_broken), "seconds": round(self.seconds, 3)}


def run(config: Config, now: datetime, env: dict | None = None) -> Result:
    """Resolve the queue under the lock; TryLater when another run holds it."""
    from portage.versions import _pkg_str

    _pkg_str("a/b-1", slot="0")  # Portage imports lazily: the process pays, not the resolution
    with db.run_lock(staging.resolve_lock(config), config.database, "swarm-resolve"):
        conn = db.connect(config.database)
        try:
            return resolve(conn, config, now, env)
        finally:
            conn.close()


def queue_nodes(conn: sqlite3.Connection) -> list[Node]:
    """The active packages, in merge order."""
    return [Node(pid, cpv, cp, slot, subslot or "", repo, use, order, resolved, priority, expected,
                 binhost, tuple(sorted((wanted or "").split())))
            for pid, cpv, cp, slot, subslot, repo, use, order, resolved, priority, expected, binhost,
            wanted
            in _plain_rows(conn, "SELECT id, cpv, cp, slot, subslot, repo, use, scan_order,"
                                 " resolved, priority, expected_seconds, binhost, (SELECT"
                                 " group_concat(profile, ' ') FROM wants WHERE package_id ="
                                 " packages.id AND active = 1) FROM packages"
                                 " WHERE active = 1 ORDER BY scan_order, id")]


def resolve(conn: sqlite3.Connection, config: Config, now: datetime,
            env: dict | None = None) -> Result:
    """Compute edges, what gates each claim, expected times and priorities; store them.

    In phases, each ending the run when what it found changes nothing of
    what is stored: each package's key (its identity, its ebuild's
    metadata, the queued packages its atoms name), then the edges of the
    packages whose key changed, then what gates claims and the priorities.
    """
    started = time.monotonic()
    result = Result()
    nodes = queue_nodes(conn)
    result.packages = len(nodes)
    state = _State(conn)
    # The ebuilds' dependencies as the first profile's Portage reads them
    # (each package's own USE is applied to them).
    first = config.for_profile(config.profile_names()[0])
    portage = _Portage(env or portageenv.scan_environment(first), state)
    keys = _Keys.of(conn, nodes, portage, result)
    expected = expected_seconds(conn, config, nodes, state)
    graph_key = _hash(" ".join(f"{n.id}:{n.order}:{keys.new[n.id]}" for n in nodes))
    priority_key = _hash(f"{graph_key} {sorted(expected.items())}")
    if (not keys.changed and state.get("graph") == graph_key
            and state.get("priorities") == priority_key):
        result.edges, result.requires = state.counts()
    else:
        found = _resolve_changed(conn, config, now, nodes, keys, expected, state, result)
        state.set(graph=graph_key, priorities=priority_key, **found)
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Keys:
    """Each package's key, and what must be read and matched again for it."""

    new: dict[int, str]  # package id -> its key now
    changed: list[tuple[Node, str]]  # packages whose key changed, with their cache key
    cache: dict[str, tuple[dict, str]]  # new cache entries: reduced dependencies, names
    used: set[str]  # cache keys of the queued packages

    @classmethod
    def of(cls, conn: sqlite3.Connection, nodes: list[Node], portage: _Portage,
           result: Result) -> _Keys:
        """The keys of NODES: cached reductions where the identity and metadata are known."""
        fingerprints = _fingerprints(nodes)
        # Only the names each cached entry matches against: its reduced
        # dependencies are read only for a package whose edges must be matched again.
        cache = dict(_plain_rows(conn, "SELECT key, names FROM dep_cache"))
        keys = cls({}, [], {}, set())
        for node in nodes:
            key = _hash(f"{node.cpv}|{node.repo}|{node.use}|{portage.metadata_stamp(node)}")
            keys.used.add(key)
            names = cache.get(key)
            if names is None and key not in keys.cache:
                deps = portage.reduce(node)
                names = " ".join(sorted({cp for atoms in deps.values() for cp in _named_cps(atoms)}))
                keys.cache[key] = (deps, names)
                result.recomputed += 1
            elif names is None:
                names = keys.cache[key][1]
            else:
                result.cached += 1
            named = " ".join(fingerprints.get((node.binhost, cp), "-") for cp in names.split())
            named += " " + " ".join(node.profiles)
            keys.new[node.id] = f"{key}:{_hash(named)}"
            if keys.new[node.id] != node.resolved:
                keys.changed.append((node, key))
        return keys

    def deps(self, conn: sqlite3.Connection, key: str) -> dict[str, list]:
        """The reduced dependencies of cache entry KEY."""
        if key in self.cache:
            return self.cache[key][0]
        return json.loads(conn.execute("SELECT deps FROM dep_cache WHERE key = ?",
                                       (key,)).fetchone()[0])


def _resolve_changed(conn: sqlite3.Connection, config: Config, now: datetime, nodes: list[Node],
                     keys: _Keys, expected: dict[int, int], state: _State,
                     result: Result) -> dict[str, object]:
    """Match the changed packages' edges again; store what gates and the priorities if the
    edges, the cycles the merge order breaks or the expected times changed. Returns what
    the state must remember of them (stored with the run's keys, last)."""
    stored = _stored_edges(conn)
    edges, edges_changed = _rematched(conn, nodes, keys, stored, result)
    order = {node.id: node.order for node in nodes}
    # What gates depends on the edges and on which of them the merge order breaks.
    broken_key = _hash(" ".join(f"{a}>{b}" for a, b in sorted(
        e for e in edges if order[e[1]] >= order[e[0]])))
    expected_key = _hash(str(sorted(expected.items())))
    if (not edges_changed and len(edges) == int(state.get("edges") or -1)
            and state.get("broken") == broken_key and state.get("expected") == expected_key):
        # A bump that changed no dependency: what gates and priorities stand.
        with db.write(conn):
            for node, _ in keys.changed:
                packages.update(conn, node.id, guard={"cpv": node.cpv}, resolved=keys.new[node.id])
        _store_cache(conn, keys.cache, keys.used, now)
        result.edges, result.requires = state.counts()
        return {}
    requires, broken = gating(order, edges)
    names = {node.id: node.cpv for node in nodes}
    result.cycles_broken = [f"{names[a]} -> {names[b]}" for a, b in broken]
    for edge in result.cycles_broken:
        log.info("cycle broken as Portage's merge order breaks it: %s", edge)
    priority = priorities(order, requires, expected)
    store_graph(conn, nodes, edges, requires, expected, priority, keys.new)
    _store_cache(conn, keys.cache, keys.used, now)
    _store_speeds(conn, drone_speeds(conn, config))
    result.edges = len(edges)
    result.requires = sum(len(v) for v in requires.values())
    return {"edges": result.edges, "requires": result.requires, "broken": broken_key,
            "expected": expected_key}


def _rematched(conn: sqlite3.Connection, nodes: list[Node], keys: _Keys,
               stored: dict[int, dict[int, set[str]]],
               result: Result) -> tuple[dict[tuple[int, int], set[str]], bool]:
    """Every edge between active packages, the changed packages' matched again; and whether
    any of those differ from the stored ones."""
    edges = {(pkg, dep): kinds for pkg, deps in stored.items() for dep, kinds in deps.items()}
    pools = _Pools(nodes)  # Portage package strings, made only if something must be matched
    changed = False
    for node, key in keys.changed:
        deps = keys.deps(conn, key)
        for dep in stored.get(node.id, {}):
            edges.pop((node.id, dep), None)
        mine: dict[int, set[str]] = {}
        for by_cp in pools.of(node):
            for dep_id, kinds in match_edges(node, deps, by_cp).items():
                mine.setdefault(dep_id, set()).update(kinds)
        changed |= mine != stored.get(node.id, {})
        for dep_id, kinds in mine.items():
            edges[(node.id, dep_id)] = kinds
        result.rematched += 1
    active = {n.id for n in nodes}
    return {e: k for e, k in edges.items() if e[0] in active and e[1] in active}, changed


class _State:
    """What the last run knew (table resolve_state): to tell that nothing changed."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.values = dict(conn.execute("SELECT key, value FROM resolve_state"))

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def counts(self) -> tuple[int, int]:
        return int(self.values.get("edges", 0)), int(self.values.get("requires", 0))

    def set(self, **values) -> None:
        self.values.update({k: str(v) for k, v in values.items()})
        with db.write(self.conn):
            self.conn.executemany("INSERT OR REPLACE INTO resolve_state (key, value) VALUES (?, ?)",
                                  [(k, str(v)) for k, v in values.items()])


class _Portage:
    """Portage's view of the ebuilds, opened only when it is needed."""

    def __init__(self, env: dict, state: _State):
        self.env = env
        self.state = state
        self._portdb = None
        self._global_use = frozenset()
        # Where each repository is, as the last run learned it from Portage.
        self.locations = json.loads(state.get("repositories") or "{}")

    @property
    def portdb(self):
        if self._portdb is None:
            settings, self._portdb = portageenv.ebuild_db(self.env)
            self._global_use = frozenset(settings.get("USE", "").split())
            self.locations = {name: self._portdb.getRepositoryPath(name)
                              for name in self._portdb.getRepositories()}
            self.state.set(repositories=json.dumps(self.locations, sort_keys=True),
                           global_use=" ".join(sorted(self._global_use)), profile=self.profile,
                           arch=settings.get("ARCH", ""))
        return self._portdb

    def metadata_stamp(self, node: Node) -> str:
        """Changes when the ebuild or its md5-cache entry does (stat only, no Portage)."""
        if node.repo and node.repo not in self.locations and self._portdb is None:
            _ = self.portdb  # a repository the last run did not know: ask Portage where
        location = self.locations.get(node.repo) if node.repo else None
        if location:
            pf = node.cpv.split("/", 1)[1]
            stamps = []
            for path in (f"{location}/metadata/md5-cache/{node.cpv}",
                         f"{location}/{node.cp}/{pf}.ebuild"):
                try:
                    st = os.stat(path)
                    stamps.append(f"{st.st_mtime_ns}:{st.st_size}")
                except FileNotFoundError:
                    stamps.append("-")
            if stamps[1] != "-":
                return " ".join(stamps)
        # No known location (or no ebuild there): Portage's own metadata hash.
        values = self.portdb.aux_get(node.cpv, ["_md5_", "_eclasses_"], myrepo=node.repo or None)
        return _hash("|".join(str(v) for v in values))

    def reduce(self, node: Node) -> dict[str, list]:
        """NODE's dependencies with its USE applied; from its md5-cache entry when it is current."""
        values = self._md5_cache(node)
        if values is None:
            portdb = self.portdb
            values = dict(zip((*KINDS, "IUSE", "EAPI"), portdb.aux_get(
                node.cpv, [*KINDS, "IUSE", "EAPI"], myrepo=node.repo or None)))
            global_use = self._global_use
        else:
            global_use = frozenset(self.state.get("global_use").split())
        return reduce_deps(values, node, global_use)

    def _md5_cache(self, node: Node) -> dict[str, str] | None:
        # Portage's own reader costs a Portage start-up; a single changed
        # package is read here, if its entry matches its ebuild and the
        # profile's USE (implicit flags) is the one the last run saw.
        location = self.locations.get(node.repo)
        if not location or self._portdb is not None or self.state.get("profile") != self.profile:
            return None
        try:
            entry = dict(line.split("=", 1) for line in Path(
                f"{location}/metadata/md5-cache/{node.cpv}").read_text().splitlines() if "=" in line)
            ebuild = Path(f"{location}/{node.cp}/{node.cpv.split('/', 1)[1]}.ebuild").read_bytes()
        except (OSError, ValueError):
            return None
        if entry.get("_md5_") != hashlib.md5(ebuild).hexdigest():
            return None
        return {key: entry.get(key, "") for key in (*KINDS, "IUSE", "EAPI")} | {
            "EAPI": entry.get("EAPI", "0")}

    @property
    def profile(self) -> str:
        """Changes with the files the profile's USE comes from."""
        root = self.env.get("PORTAGE_CONFIGROOT") or self.env.get("PORTAGE_OVERRIDE_EPREFIX") or "/"
        stamps = []
        for path in (f"{root}/etc/portage/make.conf", f"{root}/etc/portage/make.profile"):
            try:
                st = os.stat(path)
                stamps.append(f"{os.path.realpath(path)}:{st.st_mtime_ns}")
            except FileNotFoundError:
                stamps.append("-")
        return _hash(" ".join(stamps))


def _fingerprints(nodes: list[Node]) -> dict[tuple[str, str], str]:
    by_cp = defaultdict(list)
    for node in nodes:
        by_cp[(node.binhost, node.cp)].append(
            f"{node.cpv}:{node.slot}/{node.subslot}::{node.repo}@{','.join(node.profiles)}")
    return {cp: _hash(" ".join(sorted(group))) for cp, group in by_cp.items()}


class _Pools:
    """Where a package's dependencies are matched: among the builds each profile
    that wants it wants (profiles of one binhost may want other builds of a
    slot), else among its binhost's."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.indexes: dict[tuple[str, str], _LazyIndex] = {}

    def of(self, node: Node) -> list[_LazyIndex]:
        keys = [("profile", name) for name in node.profiles] or [("binhost", node.binhost)]
        for key in keys:
            if key not in self.indexes:
                kind, name = key
                self.indexes[key] = _LazyIndex([
                    n for n in self.nodes
                    if (name in n.profiles if kind == "profile" else n.binhost == name)])
        return [self.indexes[key] for key in keys]


class _LazyIndex(dict):
    """index_by_cp, made one category/package at a time, as atoms ask for them."""

    def __init__(self, nodes: list[Node]):
        super().__init__()
        self.nodes = defaultdict(list)
        for node in nodes:
            self.nodes[node.cp].append(node)

    def get(self, cp, default=None):
        if cp not in self:
            if cp not in self.nodes:
                return default
            self[cp] = index_by_cp(self.nodes[cp])[cp]
        return self[cp]


def index_by_cp(nodes: list[Node]) -> dict[str, list[tuple[object, Node]]]:
    """Queued packages by category/package, as Portage package strings (for matching)."""
    from portage.versions import _pkg_str

    by_cp: dict[str, list] = defaultdict(list)
    for node in nodes:
        slot = f"{node.slot}/{node.subslot}" if node.subslot else node.slot
        by_cp[node.cp].append((_pkg_str(node.cpv, slot=slot, repo=node.repo or None), node))
    return by_cp


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _store_cache(conn: sqlite3.Connection, new: dict[str, tuple[dict, str]], used: set[str],
                 now: datetime) -> None:
    """Add the new entries; drop those no queued package has any more."""
    with db.write(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO dep_cache (key, deps, names, at) VALUES (?, ?, ?, ?)",
            [(k, json.dumps(d, sort_keys=True), names, clock.iso(now))
             for k, (d, names) in new.items()])
        stale = [(k,) for (k,) in conn.execute("SELECT key FROM dep_cache") if k not in used]
        conn.executemany("DELETE FROM dep_cache WHERE key = ?", stale)


def _store_speeds(conn: sqlite3.Connection, speeds: dict[str, float]) -> None:
    """Learned (or configured) speeds where claims read them."""
    with db.write(conn):
        conn.executemany("UPDATE drones SET speed = ? WHERE name = ?",
                         [(speed, name) for name, speed in speeds.items()])


def reduce_deps(values: dict[str, str], node: Node, global_use: frozenset[str]) -> dict[str, list]:
    """The package's dependency strings (VALUES: its metadata) with its USE applied."""
    from portage.dep import Atom, use_reduce

    iuse = {flag.lstrip("+-") for flag in values["IUSE"].split()}
    # Flags in IUSE as the scan saw them; the others (ARCH, ELIBC, KERNEL...)
    # from the profile, as Portage evaluates implicit IUSE.
    uselist = (global_use - iuse) | set(node.use.split())
    reduced = {}
    for kind in KINDS:
        if values[kind].strip():
            tree = use_reduce(values[kind], uselist=uselist, token_class=Atom, eapi=values["EAPI"])
            reduced[kind] = _plain(tree)
    return reduced


def _plain(tree) -> list:
    """use_reduce's nested lists as JSON: atoms as strings, {"any": [...]} for || groups."""
    out, items = [], iter(tree)
    for item in items:
        if item == "||":
            group = next(items)
            out.append({"any": [_plain(a) if isinstance(a, list) else str(a) for a in group]})
        elif isinstance(item, list):
            out.append(_plain(item))
        else:
            out.append(str(item))
    return out


def _named_cps(atoms: list) -> set[str]:
    from portage.dep import Atom

    found = set()
    for item in atoms:
        if isinstance(item, dict):
            for alternative in item["any"]:
                found |= _named_cps(alternative if isinstance(alternative, list) else [alternative])
        elif isinstance(item, list):
            found |= _named_cps(item)
        elif not item.startswith("!"):
            found.add(Atom(item).cp)
    return found


def match_edges(node: Node, deps: dict[str, list], by_cp) -> dict[int, set[str]]:
    """The queued packages NODE depends on, with the kinds of each edge."""
    found: dict[int, set[str]] = defaultdict(set)
    for kind, atoms in deps.items():
        for dep in _matches(atoms, by_cp):
            if dep.id != node.id:
                found[dep.id].add(kind)
    return dict(found)


def _matches(atoms: list, by_cp) -> list[Node]:
    matched = []
    for item in atoms:
        if isinstance(item, dict):  # || ( ... ): the first alternative the queue holds
            for alternative in item["any"]:
                group = _matches(alternative if isinstance(alternative, list) else [alternative],
                                 by_cp)
                wanted = len(alternative) if isinstance(alternative, list) else 1
                if len(group) >= wanted:
                    matched.extend(group)
                    break
        elif isinstance(item, list):
            matched.extend(_matches(item, by_cp))
        elif not item.startswith("!") and (node := _match(item, by_cp)) is not None:
            matched.append(node)
    return matched


_ATOMS: dict[str, object] = {}


def _match(text: str, by_cp) -> Node | None:
    from portage.dep import Atom, match_from_list

    atom = _ATOMS.get(text)
    if atom is None:
        atom = _ATOMS[text] = Atom(text).without_use
    candidates = by_cp.get(atom.cp)
    if not candidates:
        return None
    hits = match_from_list(atom, [pkg for pkg, _ in candidates])
    if not hits:
        return None
    best = max(hits)  # the newest of several slots satisfies an unslotted atom
    return next(node for pkg, node in candidates if pkg is best)


def gating(order: dict[int, int], edges: dict[tuple[int, int], set[str]],
           gate: str = "buildtime") -> tuple[dict[int, set[int]], list[tuple[int, int]]]:
    """What must be published before each package is built; and the edges cycles broke.

    ORDER is each package's place in the merge list; EDGES (dependent,
    dependency) -> kinds.
    """
    build, runtime = defaultdict(set), defaultdict(set)
    broken = []
    for (pkg, dep), kinds in edges.items():
        if kinds <= {"PDEPEND"}:
            continue
        if order[dep] >= order[pkg]:  # Portage merges the dependent first: a broken cycle
            broken.append((pkg, dep))
            continue
        if kinds & BUILD_KINDS:
            build[pkg].add(dep)
        if kinds & RUNTIME_KINDS:
            runtime[pkg].add(dep)
    closure: dict[int, frozenset[int]] = {}

    def runtime_closure(pkg: int) -> frozenset[int]:
        # Edges point to earlier packages only, so this terminates; memoised.
        if pkg not in closure:
            found = set(runtime[pkg])
            for dep in runtime[pkg]:
                found |= runtime_closure(dep)
            closure[pkg] = frozenset(found)
        return closure[pkg]

    requires = {}
    for pkg in sorted(order, key=order.get):
        direct = build[pkg] | (runtime[pkg] if gate == "full" else set())
        needed = set(direct)
        for dep in direct:
            needed |= runtime_closure(dep)
        needed.discard(pkg)
        if needed:
            requires[pkg] = needed
    return requires, broken


def priorities(order: dict[int, int], requires: dict[int, set[int]],
               expected: dict[int, int]) -> dict[int, int]:
    """Seconds of the longest chain of expected build time waiting on each package."""
    waiting = defaultdict(set)
    for pkg, deps in requires.items():
        for dep in deps:
            waiting[dep].add(pkg)
    priority: dict[int, int] = {}
    for pkg in sorted(order, key=order.get, reverse=True):  # dependents before dependencies
        after = max((priority[d] for d in waiting[pkg]), default=0)
        priority[pkg] = expected.get(pkg, 0) + after
    return priority


def expected_seconds(conn: sqlite3.Connection, config: Config, nodes: list[Node],
                     state: _State | None = None) -> dict[int, int]:
    """Each package's expected build time at speed 1: the swarm's builds, emerge.log, a default."""
    own = build_times(conn, config)
    logged = _logged_seconds(config, state)
    default = config.resolve.default_seconds
    return {n.id: int(own.get(n.cp) or logged.get(n.cp) or default) for n in nodes}


def _logged_seconds(config: Config, state: _State | None) -> dict[str, int]:
    """Median times from resolve.emerge_logs, read again only when a log changed."""
    paths = [Path(p) for p in config.resolve.emerge_logs]
    stamp = _hash(" ".join(f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.exists() else str(p)
                           for p in paths))
    if state is not None and state.get("logs") == stamp:
        return json.loads(state.get("logged") or "{}")
    logged = emergelog.median_seconds([p for p in paths if p.exists()])
    if state is not None:
        state.set(logs=stamp, logged=json.dumps(logged))
    return logged


def build_times(conn: sqlite3.Connection, config: Config) -> dict[str, float]:
    """Median build time by category/package from the history, at speed 1."""
    speeds = drone_speeds(conn, config)
    return {cp: statistics.median(s * speeds.get(d, 1.0) for d, s in runs)
            for cp, runs in _builds(conn).items()}


def _builds(conn: sqlite3.Connection) -> dict[str, list[tuple[str, float]]]:
    """(drone, seconds) of every claim that ended in a build, by category/package."""
    claimed: dict[tuple[int, str], datetime] = {}
    found = defaultdict(list)
    for event in conn.execute(
            "SELECT e.package_id, e.event, e.drone, e.at, p.cp FROM events e"
            " JOIN packages p ON p.id = e.package_id WHERE e.event IN (?, ?) ORDER BY e.id",
            (Event.CLAIMED, Event.BUILT)):
        key = (event["package_id"], event["drone"])
        if event["event"] == Event.CLAIMED:
            claimed[key] = clock.parse(event["at"])
        elif key in claimed:
            seconds = (clock.parse(event["at"]) - claimed.pop(key)).total_seconds()
            found[event["cp"]].append((event["drone"], max(seconds, 1.0)))
    return found


def drone_speeds(conn: sqlite3.Connection, config: Config) -> dict[str, float]:
    """Each drone's speed: configured, else learned (others' time for the same packages / its own)."""
    runs = _builds(conn)
    ratios = defaultdict(list)
    for builds in runs.values():
        for drone, seconds in builds:
            others = [s for d, s in builds if d != drone]
            if others:
                ratios[drone].append(statistics.median(others) / seconds)
    speeds = {drone: statistics.median(values) for drone, values in ratios.items()}
    for name, drone in config.drones.items():
        if drone.speed:
            speeds[name] = drone.speed
    return speeds


def _stored_edges(conn: sqlite3.Connection) -> dict[int, dict[int, set[str]]]:
    stored: dict[int, dict[int, set[str]]] = defaultdict(dict)
    for pkg, dep, kinds in _plain_rows(conn, "SELECT package_id, dep_id, kinds FROM edges"):
        stored[pkg][dep] = set(kinds.split())
    return stored


def _plain_rows(conn: sqlite3.Connection, sql: str, params=()) -> list[tuple]:
    """Rows as tuples: thousands of sqlite3.Row objects cost more than the query."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, params).fetchall()


def store_graph(conn, nodes, edges, requires, expected, priority, keys) -> None:
    """Write what changed of the graph in one short transaction (claims wait that long)."""
    old_edges = {(p, d): kinds for p, d, kinds in conn.execute(
        "SELECT package_id, dep_id, kinds FROM edges")}
    new_edges = {edge: " ".join(sorted(kinds)) for edge, kinds in edges.items()}
    old_requires = defaultdict(set)
    for pkg, dep in conn.execute("SELECT package_id, dep_id FROM requires"):
        old_requires[pkg].add(dep)
    with db.write(conn):
        conn.executemany("DELETE FROM edges WHERE package_id = ? AND dep_id = ?",
                         [e for e in old_edges if e not in new_edges])
        conn.executemany("INSERT OR REPLACE INTO edges (package_id, dep_id, kinds) VALUES (?, ?, ?)",
                         [(*e, k) for e, k in new_edges.items() if old_edges.get(e) != k])
        for pkg in set(old_requires) | set(requires):
            if old_requires.get(pkg, set()) != requires.get(pkg, set()):
                conn.execute("DELETE FROM requires WHERE package_id = ?", (pkg,))
                conn.executemany("INSERT INTO requires (package_id, dep_id) VALUES (?, ?)",
                                 [(pkg, dep) for dep in requires.get(pkg, ())])
        for node in nodes:
            values = {"priority": priority[node.id], "expected_seconds": expected[node.id],
                      "resolved": keys[node.id]}
            if values != {"priority": node.priority, "expected_seconds": node.expected,
                          "resolved": node.resolved}:
                packages.update(conn, node.id, guard={"cpv": node.cpv}, **values)
