"""Which drones can build a package: features they have, requirements packages have.

A drone's features come from its heartbeat facts (``multilib`` when ABI_X86
has 32, ``arch:ARCH``, ``chost:CHOST``, ``cuda`` when it has a CUDA toolkit
or device) and
from its ``[drones.NAME]`` table (``features``, and ``mandatory_features``:
a drone with those takes only packages that require all of them, as Nix
builders do). A package's requirements come from its USE (``abi_x86_32``
needs ``multilib``, ``cuda`` needs ``cuda``), the build profile's ARCH and
CHOST (a drone of another builds nothing of it), and the
``[[route]]`` tables of the config (``match`` an atom, ``requires`` a list).
They are kept in the table ``requirements`` (made again with the exclusion
matches, :func:`exclude.refresh`), so a claim tests them in SQL. A drone's build class (its CHOST and
CFLAGS) is read from its facts here too: exclusions and failure memory hold
for a class.
"""

from __future__ import annotations

import sqlite3

from .atoms import Pools, parse_atom
from .config import Config

# USE flags that need a drone feature.
USE_FEATURES = {"abi_x86_32": "multilib", "cuda": "cuda"}


def features(facts: dict, configured: list[str] = (), mandatory: list[str] = ()) -> set[str]:
    """A drone's features: from its facts, then its config."""
    found = set(configured) | set(mandatory)
    if "32" in str(facts.get("abi_x86", "")).split():
        found.add("multilib")
    if facts.get("arch"):
        found.add(f"arch:{facts['arch']}")
    if facts.get("chost"):
        found.add(f"chost:{facts['chost']}")
    if facts.get("cuda"):
        found.add("cuda")
    return found


def build_class(facts: dict) -> str | None:
    """A drone's build class: its CHOST and CFLAGS (None until it sent them)."""
    chost, cflags = facts.get("chost"), facts.get("cflags")
    if not chost:
        return None
    return f"{chost}|{' '.join(str(cflags or '').split())}"


def targets(conn: sqlite3.Connection) -> dict[int, set[tuple[str, str]]]:
    """Per active package, the (ARCH, CHOST) of each build profile that wants it
    (swarm-fresh records them)."""
    found: dict[int, set[tuple[str, str]]] = {}
    for package_id, arch, chost in conn.execute(
            "SELECT w.package_id, p.arch, p.chost FROM wants w JOIN profiles p ON p.name = w.profile"
            " WHERE w.active = 1"):
        found.setdefault(package_id, set()).add((arch, chost))
    return found


def fallback_arch(conn: sqlite3.Connection) -> str | None:
    """The ARCH swarm-resolve learnt from the scan's Portage (a scan --from records no profile)."""
    row = conn.execute("SELECT value FROM resolve_state WHERE key = 'arch'").fetchone()
    return row[0] if row and row[0] else None


# What the profiles are built for, as one value (exclude's staleness key).
FINGERPRINT = ("SELECT group_concat(name || ':' || arch || ':' || chost, ' ')"
               " FROM (SELECT * FROM profiles ORDER BY name)")


def requirements(config: Config, queued: Pools, built_for: dict[int, set[tuple[str, str]]],
                 fallback: str | None) -> list[tuple[int, str, str]]:
    """(package id, feature, why): what every queued package (QUEUED: the active ones)
    requires of a drone, from its USE, the ARCH and CHOST its profiles are built for
    (BUILT_FOR: :func:`targets`; FALLBACK: :func:`fallback_arch`) and the routes.

    Reads no database: exclude.refresh stores the rows in ``requirements``.
    """
    rows = []
    for item in queued.all:
        flags = set(item.use.split())
        for flag, feature in USE_FEATURES.items():
            if flag in flags:
                rows.append((item.id, feature, f"USE {flag}"))
        for arch, chost in built_for.get(item.id, {(fallback, None)}):
            if arch:
                rows.append((item.id, f"arch:{arch}", "the profile's ARCH"))
            if chost:
                rows.append((item.id, f"chost:{chost}", "the profile's CHOST"))
    for route in config.route:
        for item in queued.match(parse_atom(route.match)):
            rows.extend((item.id, feature, f"[[route]] {route.match}") for feature in route.requires)
    return rows
