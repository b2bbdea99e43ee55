"""Run ``emerge --pretend`` and parse its merge list into typed rows.

The row format is Portage's (``_emerge/resolver/output.py``); every form it
prints with ``--color=n`` is understood: ebuild, binary, uninstall, nomerge
and blocks rows; the seven flag columns; ``--tree`` indentation;
``--columns``; ``--quiet``; slots, sub-slots, repositories, old versions,
USE and USE_EXPAND groups with their markers, sizes and the ``Total:`` line.
Versions and build ids are split by Portage's own code, never by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .errors import SwarmError

# Column letters, in order (Portage's _emerge/resolver/output.py).
FLAG_COLUMNS = ("interactive", "new", "slot", "fetch", "update", "downgrade", "keyword")

_ROW = re.compile(r"^\[(ebuild|binary|uninstall|nomerge|blocks)( [^\]]*|)\](.*)$")
_TOTAL = re.compile(r"^Total: (\d+) packages?\b")
_BOILERPLATE = re.compile(
    r"^(These are the packages that would be (merged|fetched)"
    r"|Calculating dependencies|(Calculating )?[Dd]ependencies\.\.\."
    r"|Dependency resolution took"
    r"|Fetch Restriction: |Conflict: \d+ blocks?)"
)
_TOKEN = re.compile(
    r'\s*(?:(?P<group>[A-Z][A-Z0-9_]*)="(?P<flags>[^"]*)"'
    r"|\[(?P<bracket>[^\]]*)\]"
    r"|(?P<size>\d[\d,.]*) KiB"
    r")"
)


class ParseError(SwarmError):
    """The input is not an emerge merge list we can trust."""


@dataclass(frozen=True)
class UseFlag:
    """One flag of a USE or USE_EXPAND group as emerge shows it."""

    name: str
    enabled: bool
    text: str  # as emerge printed it
    # Parsed so the parser is complete (emerge's markers); nothing decides on them yet.
    forced: bool = False  # (flag): forced or masked by the profile
    changed: bool = False  # flag*: differs from the installed package
    new: bool = False  # flag%: newly in IUSE (or, with '-', removed)


@dataclass
class Row:
    """One row of the merge list."""

    line_no: int
    kind: str  # ebuild, binary, uninstall, nomerge or blocks
    flags: str = ""  # the raw flag columns, padded to seven
    cpv: str = ""
    cp: str = ""
    version: str = ""
    build_id: int | None = None
    slot: str = ""
    subslot: str = ""
    repo: str = ""
    old: list[str] = field(default_factory=list)
    use: dict[str, list[UseFlag]] = field(default_factory=dict)
    size_kib: int | None = None
    depth: int = 0
    blocker: str = ""  # blocks rows: the blocking atom
    satisfied: bool | None = None  # blocks rows: b (True) or B (False)
    detail: str = ""  # blocks rows: Portage's explanation

    def flag(self, column: str) -> str:
        """The letter in one flag column ('' when blank)."""
        return self.flags[FLAG_COLUMNS.index(column)].strip()

    def enabled_use(self) -> str:
        """Enabled flags as Portage's USE would hold them, sorted: the build's USE identity."""
        names = []
        for group, flags in self.use.items():
            prefix = "" if group == "USE" else group.lower() + "_"
            names.extend(prefix + f.name for f in flags if f.enabled)
        return " ".join(sorted(names))


@dataclass
class MergeList:
    """A parsed ``emerge --pretend`` output."""

    rows: list[Row]
    total: int | None  # N of the Total: line, when emerge printed one
    notes: list[tuple[int, str]]  # other text Portage printed, with line numbers
    reverse: bool = False  # --tree lists the merge order upside down

    def packages(self) -> list[Row]:
        """The rows that would be merged, ebuild and binary, in merge order."""
        merges = [r for r in self.rows if r.kind in ("ebuild", "binary")]
        return merges[::-1] if self.reverse else merges


def parse_merge_list(text: str) -> MergeList:
    """Parse emerge output; raise ParseError for anything that looks wrong."""
    if "\0" in text:
        raise ParseError("input is binary, not emerge --pretend output")
    rows: list[Row] = []
    notes: list[tuple[int, str]] = []
    bad: list[tuple[int, str]] = []
    total = None
    header = reverse = False
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        if line.startswith("["):
            row = _parse_row(line, line_no)
            if row is None:
                bad.append((line_no, line))
            else:
                rows.append(row)
        elif match := _TOTAL.match(line):
            total = int(match.group(1))
        elif _BOILERPLATE.match(line):
            header = True
            reverse |= "in reverse order" in line
        else:
            notes.append((line_no, line))
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    if last.startswith("[") and not text.endswith("\n"):
        # A list cut inside a row can still look like a row ("::tes" for "::test").
        raise ParseError(f"the last row has no end of line: input cut off? ({last[:80]!r})")
    if bad:
        shown = "; ".join(f"line {n}: {t[:120]}" for n, t in bad[:3])
        raise ParseError(f"{len(bad)} merge-list row(s) not understood: {shown}")
    merges = [r for r in rows if r.kind in ("ebuild", "binary")]
    if not merges and total is None:
        where = f" (line {notes[0][0]}: {notes[0][1][:80]!r})" if notes else ""
        what = ("no merge list found (no package row, no 'Total:' line)" if header or notes or rows
                else "input is empty")
        raise ParseError(f"{what}; is this 'emerge --pretend' output?{where}")
    if total is not None and total != len(merges):
        raise ParseError(
            f"'Total: {total} packages' but {len(merges)} ebuild/binary rows: input truncated?"
        )
    if total is None and any(r.size_kib is not None for r in merges):
        # --verbose always ends the list with Total:; without it the tail is missing.
        raise ParseError("verbose merge list without its 'Total:' line: input truncated?")
    return MergeList(rows=rows, total=total, notes=notes, reverse=reverse)


def _parse_row(line: str, line_no: int) -> Row | None:
    match = _ROW.match(line)
    if not match:
        return None
    kind, columns, rest = match.groups()
    row = Row(line_no=line_no, kind=kind)
    indent = len(rest) - len(rest.lstrip(" "))
    if indent < 1:
        return None
    row.depth = indent - 1
    rest = rest.strip()
    if kind == "blocks":
        return _parse_blocks(row, columns, rest)
    if kind in ("ebuild", "binary"):
        flags = columns[1:]
        if len(flags) not in (6, 7):  # --quiet drops the keyword column
            return None
        row.flags = flags.ljust(7)
    package, _, tail = rest.partition(" ")
    try:
        return _parse_package(row, package, tail)
    except ValueError:
        return None


def _parse_blocks(row: Row, columns: str, rest: str) -> Row | None:
    letter = columns.strip()
    if letter not in ("b", "B"):
        return None
    row.satisfied = letter == "b"
    row.blocker, _, detail = rest.partition(" ")
    row.detail = detail.strip().removeprefix("(").removesuffix(")")
    row.cpv = row.blocker
    return row if row.blocker else None


def _parse_package(row: Row, package: str, tail: str) -> Row | None:
    tokens = _tokens(tail)
    if tokens is None:
        return None
    brackets = [value for kind, value in tokens if kind == "bracket"]
    # --columns: "cat/pkg   [version:slot::repo]   [old]"
    if not _set_cpv(row, package) and (
            not brackets or not _set_cpv(row, f"{package}-{brackets.pop(0)}")):
        return None
    row.old = [old for b in brackets for old in b.split(", ") if old]
    for kind, value in tokens:
        if kind == "size":
            row.size_kib = int(value.replace(",", "").replace(".", ""))
        elif kind == "group":
            group, flags = value
            row.use[group] = [_parse_flag(f) for f in flags.split()]
    return row


def _tokens(tail: str) -> list[tuple[str, object]] | None:
    tokens, pos = [], 0
    tail = tail.rstrip()
    while pos < len(tail):
        match = _TOKEN.match(tail, pos)
        if not match or match.end() == pos:
            return None
        if match.group("group") is not None:
            tokens.append(("group", (match.group("group"), match.group("flags"))))
        elif match.group("bracket") is not None:
            tokens.append(("bracket", match.group("bracket").strip()))
        else:
            tokens.append(("size", match.group("size")))
        pos = match.end()
    return tokens


def _set_cpv(row: Row, text: str) -> bool:
    from portage.dep import Atom  # Portage's own version and build-id rules
    from portage.exception import InvalidAtom

    # Portage checks the slot, sub-slot and repository names too: a row
    # with one Portage could never print is not a row.
    try:
        atom = Atom("=" + text, allow_build_id=row.kind == "binary", allow_repo=True)
    except InvalidAtom:
        return False
    if atom.slot_operator or atom.use or atom.blocker:
        return False
    row.cpv, row.cp, row.version = str(atom.cpv), atom.cp, atom.version
    row.build_id = atom.build_id
    row.slot, row.subslot = atom.slot or "0", atom.sub_slot or ""
    row.repo = atom.repo or ""
    return True


def _parse_flag(text: str) -> UseFlag:
    forced = text.startswith("(") and text.endswith(")")
    bare = text.strip("()")
    enabled = not bare.startswith("-")
    name = bare.lstrip("-")
    changed = new = False
    while name and name[-1] in "*%":
        changed |= name[-1] == "*"
        new |= name[-1] == "%"
        name = name[:-1]
    return UseFlag(name=name, enabled=enabled, text=text, forced=forced, changed=changed, new=new)


def consults_binhost(command: list[str]) -> bool:
    """Whether a scan command asks a binhost (--getbinpkg, --getbinpkgonly, -g, -G)."""
    for word in command:
        if word.split("=")[0] in ("--getbinpkg", "--getbinpkgonly"):
            return not word.endswith(("=n", "=no", "=False"))
        if re.fullmatch(r"-[A-Za-z]+", word) and ("g" in word or "G" in word):
            return True
    return False


# What emerge says when it could not read a binhost's index: it then uses
# its own old copy (--pretend), so its list says nothing about what is there.
BINHOST_UNREADABLE = "Error fetching binhost package info"


def run_emerge(command: list[str], environment: dict[str, str], timeout: int,
               progress: bool = False) -> tuple[str, str]:
    """Run the scan command, return its stdout and stderr; raise SwarmError if it fails."""
    env = {**os.environ, **environment}
    started = time.monotonic()
    stop = threading.Event()
    if progress:
        threading.Thread(target=_show_progress, args=(command, started, stop),
                         daemon=True).start()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              errors="replace", timeout=timeout or None, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SwarmError(f"cannot run '{command[0]}': {exc.strerror} (scan.command in the "
                         "config)") from None
    except subprocess.TimeoutExpired:
        raise SwarmError(f"'{' '.join(command)}' did not finish in {timeout} s (scan.timeout)") from None
    finally:
        stop.set()
        if progress:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        tail = " | ".join(lines[-3:]) or "no output"
        raise SwarmError(f"'{' '.join(command)}' failed with exit code {proc.returncode}: {tail}")
    return proc.stdout, proc.stderr


def _show_progress(command: list[str], started: float, stop: threading.Event) -> None:
    # Only for a person at a terminal: cron's stderr is not a tty.
    name = os.path.basename(command[0])
    while not stop.wait(1.0):
        seconds = int(time.monotonic() - started)
        sys.stderr.write(f"\r{name} is resolving dependencies... {seconds} s")
        sys.stderr.flush()
