"""Atoms of rules and routes, and the queued packages they match.

A rule (swarm-exclude, ``exclude.file``) or a route (``[[route]]``) names
packages with a Portage atom, wildcards and a repository allowed
(``*/*-bin``, ``>=sys-devel/gcc-15``, ``sys-apps/*::gentoo``). It is parsed
with Portage's own ``Atom`` and matched with ``match_from_list``, never by
hand. Portage is imported only when an atom is parsed or matched.
"""

from __future__ import annotations

import bisect

from .errors import ExitCode, SwarmError


class BadAtom(SwarmError):
    """Not an atom Portage would accept in package.mask."""

    exit_code = ExitCode.USAGE


def parse_atom(text: str):
    """A Portage atom with wildcards and repository allowed, or BadAtom."""
    from portage.dep import Atom
    from portage.exception import InvalidAtom

    try:
        atom = Atom(text.strip(), allow_wildcard=True, allow_repo=True)
    except InvalidAtom:
        raise BadAtom(f"'{text.strip()}' is not a Portage atom (wildcards: */*-bin, "
                      "sys-apps/*::gentoo; operators: >=sys-devel/gcc-15)") from None
    if atom.blocker or atom.use:
        raise BadAtom(f"'{text.strip()}': no blockers or USE dependencies in a rule")
    return atom


def versioned(text: str) -> str:
    """A bare CATEGORY/PF (as swarm-status --packages prints) means that version: =CPV."""
    from portage.versions import catpkgsplit

    text = text.strip()
    if text[:1].isalnum() and "/" in text and ":" not in text and catpkgsplit(text) is not None:
        return f"={text}"
    return text


def identity_key(row) -> str:
    """A queued build's identity (CPV, slot, repository, USE) as one string: what an
    automatic exclusion is made for."""
    return f"{row['cpv']}|{row['slot']}/{row['subslot'] or ''}|{row['repo']}|{row['use']}"


class Queued:
    """An active package as rules see it (its Portage form made only when a rule asks)."""

    __slots__ = ("_pkg", "_row", "category", "cp", "cpv", "id", "identity", "use")

    def __init__(self, row):
        self.id, self.cpv, self.cp, self.use = row["id"], row["cpv"], row["cp"], row["use"]
        self.category = self.cpv.split("/", 1)[0]
        self.identity = identity_key(row)
        self._row, self._pkg = row, None

    @property
    def pkg(self):
        if self._pkg is None:
            from portage.versions import _pkg_str

            row = self._row
            self._pkg = _pkg_str(self.cpv, slot=f"{row['slot']}/{row['subslot']}"
                                 if row["subslot"] else row["slot"], repo=row["repo"] or None)
        return self._pkg


class Pools:
    """The queued packages, by name, for matching atoms against them."""

    def __init__(self, queued: list[Queued]):
        self.all = queued
        self.by_cp: dict[str, list[Queued]] = {}
        self.by_name: dict[str, list[Queued]] = {}
        for item in queued:
            self.by_cp.setdefault(item.cp, []).append(item)
            self.by_name.setdefault(item.cp.partition("/")[2], []).append(item)
        self.cps = sorted(self.by_cp)

    def match(self, atom) -> list[Queued]:
        """The queued packages ATOM matches (Portage's match_from_list)."""
        from portage.dep import match_from_list

        pool = self._pool(atom)
        by_pkg = {id(item.pkg): item for item in pool}
        return [by_pkg[id(pkg)] for pkg in match_from_list(atom, [item.pkg for item in pool])]

    def _pool(self, atom) -> list[Queued]:
        """Only those the atom can match; Portage decides which of them it does.

        A wildcard stands for part of a name, so a match starts with what
        comes before the first one (``app-test/*``, ``sys-*/foo``), and
        ``*/foo`` matches only packages named foo: thousands of wildcard rules
        are matched in seconds, not minutes.
        """
        if "*" not in atom.cp:
            return self.by_cp.get(atom.cp, [])
        category, _, name = atom.cp.partition("/")
        if category == "*" and "*" not in name:
            return self.by_name.get(name, [])
        prefix = atom.cp.split("*", 1)[0]
        found = []
        for cp in self.cps[bisect.bisect_left(self.cps, prefix):]:
            if not cp.startswith(prefix):
                break
            found.extend(self.by_cp[cp])
        return found
