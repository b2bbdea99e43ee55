"""The binhost: its files, its Portage index, and its mirror.

Portage is told about the binhost through one ``portage.config`` made for
it (:func:`portage_config`) and passed to everything that needs Portage:
no process-wide settings, no writes to ``os.environ``. The index is read
and written by Portage's own bintree code. Its private names used here,
the surface to re-check when Portage changes: ``binarytree._load_pkgindex``,
``_pkgindex_version_supported``, ``_new_pkgindex``, ``_read_metadata``,
``_eval_use_flags``, ``_inject_file``, ``_update_pkgindex_header``,
``_pkgindex_write``, and ``portage.versions._pkg_str``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import gpkg, identity, portageenv
from .config import Config
from .errors import SwarmError
from .output import fsync_path

log = logging.getLogger(__name__)


def portage_config(config: Config):
    """A portage.config for the binhost, with the scan's environment (the profile's Portage)."""
    env = portageenv.scan_environment(config)
    env["PKGDIR"] = config.binhost.path
    # compress-index: Packages.gz too (clients fetch it first). Multi-instance
    # names never reuse a file name.
    env["FEATURES"] = f"{env.get('FEATURES', '')} compress-index binpkg-multi-instance".strip()
    if config.binhost.gpg_key:
        home = config.binhost.gpg_home or os.path.expanduser("~/.gnupg")
        env["BINPKG_GPG_SIGNING_KEY"] = config.binhost.gpg_key
        env["BINPKG_GPG_SIGNING_GPG_HOME"] = home
        # Portage checks a signed package whenever it reads it (the index
        # entry): with the signer's own home, whose key it trusts, as the
        # user running swarm-sync (not 'nobody', who cannot read that home).
        env["BINPKG_GPG_VERIFY_GPG_HOME"] = home
        env["GPG_VERIFY_USER_DROP"] = env["GPG_VERIFY_GROUP_DROP"] = ""
    return portageenv.settings(env)


class Binhost:
    """The published files under binhost.path, and the copies being verified."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.incoming_dir = self.path / ".incoming"

    def clear_incoming(self) -> None:
        """Drop half-prepared copies of a stopped run (we hold the lock)."""
        shutil.rmtree(self.incoming_dir, ignore_errors=True)

    def copy_in(self, source: Path, target: str) -> Path:
        """Copy SOURCE beside the package tree under TARGET's file name (gpkg-sign needs it)."""
        incoming = self.incoming_dir / Path(target).name
        incoming.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, incoming)
        return incoming

    def put(self, incoming: Path, target: str) -> None:
        """Rename a verified copy into place: a file at its final name is always whole."""
        fsync_path(incoming)
        destination = self.path / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, destination)
        # The index will name this file: the rename must survive a power loss too.
        fsync_path(destination.parent)

    def has(self, relative: str) -> bool:
        """Whether a published file is on disk."""
        return (self.path / relative).is_file()

    def delete(self, relative: str) -> None:
        """Remove a published file (once no index lists it)."""
        (self.path / relative).unlink(missing_ok=True)

    def build_ids(self, category: str, pn: str, pf: str) -> set[int]:
        """Build ids of PF's files on disk."""
        directory = self.path / category / pn
        if not directory.is_dir():
            return set()
        found = set()
        for name in os.listdir(directory):
            parsed = gpkg.parse_name(name)
            if parsed and parsed.pf == pf and parsed.build_id is not None:
                found.add(parsed.build_id)
        return found


class PortageIndex:
    """The binhost's Packages index, read and written by Portage's bintree code."""

    def __init__(self, path: Path, settings):
        from portage.dbapi.bintree import binarytree

        self.path = Path(path)
        self.settings = settings
        self.tree = binarytree(pkgdir=str(self.path), settings=settings)
        self._indexed_ids: dict[str, set[int]] | None = None  # CPV -> build ids in the index

    def build_ids(self, cpv: str) -> set[int]:
        """Build ids the index lists for CPV (read once a run: only we write it)."""
        if self._indexed_ids is None:
            self._indexed_ids = {}
            for entry in self.tree._load_pkgindex().packages:
                if entry.get("BUILD_ID", "").isdigit():
                    self._indexed_ids.setdefault(entry["CPV"], set()).add(int(entry["BUILD_ID"]))
        return self._indexed_ids.get(cpv, set())

    def publish(self, new: list[tuple[str, str]], drop: list[str] = (),
                keep: set[str] = frozenset()) -> list[str]:
        """Add the new files' entries (CPV, path), drop superseded ones and DROP, write once.

        A new build supersedes the other entries of its category/package and
        SLOT but those in KEEP (builds of that slot other profiles want, with
        other USE or versions). Returns the paths the index no longer lists
        (to delete after the grace).
        """
        from portage.locks import lockfile, unlockfile
        from portage.versions import _pkg_str, cpv_getkey

        lock = lockfile(str(self.path / "Packages"), wantnewlockfile=1)
        try:
            index = self.tree._load_pkgindex()
            if not self.tree._pkgindex_version_supported(index):
                index = self.tree._new_pkgindex()
            before = int(index.header.get("TIMESTAMP", 0) or 0)
            added = []
            for cpv, relative in new:
                full = str(self.path / relative)
                metadata = self.tree._read_metadata(full, os.stat(full))
                self.tree._eval_use_flags(cpv, metadata)
                pkg = _pkg_str(cpv, metadata=metadata, settings=self.tree.settings,
                               db=self.tree.dbapi)
                entry = self.tree._inject_file(index, pkg, full)
                added.append((pkg.cp, metadata.get("SLOT", "0").split("/")[0], entry["PATH"]))
            kept, dropped = [], []
            for entry in index.packages:
                key = (cpv_getkey(entry["CPV"]), entry.get("SLOT", "0").split("/")[0])
                if entry.get("PATH") in drop:
                    continue  # its file is gone: no client may be sent to fetch it
                if entry.get("PATH") not in keep and any(
                        key == (cp, slot) and entry.get("PATH") != path for cp, slot, path in added):
                    dropped.append(entry["PATH"])
                else:
                    kept.append(entry)
            index.packages[:] = kept
            self.tree._update_pkgindex_header(index.header)
            index.modified = True
            _wait_for_a_newer_timestamp(before)
            self.tree._pkgindex_write(index)
        finally:
            unlockfile(lock)
        listed = {entry["PATH"] for entry in kept}
        leftovers = [str(p.relative_to(self.path)) for _, path in new
                     for p in (self.path / path).parent.glob("*")
                     if p.is_file() and gpkg.parse_name(p.name)
                     and str(p.relative_to(self.path)) not in listed]
        return sorted(set(dropped) | set(leftovers))


# A client asks for the index with If-Modified-Since = its cached TIMESTAMP
# plus this many seconds (Portage's TIMESTAMP_TOLERANCE), and Portage sets
# the file's mtime to TIMESTAMP: an index written sooner answers 304.
CLIENT_TOLERANCE = 5


def _wait_for_a_newer_timestamp(before: int) -> None:
    """Sleep until an index written now is one every client that cached BEFORE refetches.

    TIMESTAMP is the time of writing: it never runs ahead of the clock, so
    the publisher waits instead (at most CLIENT_TOLERANCE + 1 seconds, only
    when publications follow each other that closely).
    """
    due = before + CLIENT_TOLERANCE + 1
    while (now := time.time()) < due:
        time.sleep(due - now)


@dataclass
class Index:
    """A binhost's Packages file as read: its header and package entries."""

    header: dict[str, str]
    entries: list[dict[str, str]]

    def paths(self) -> set[str]:
        """Every PATH the index lists."""
        return {entry["PATH"] for entry in self.entries}

    def by_cpv(self, cpv: str) -> list[dict[str, str]]:
        """The entries of one CPV (several builds may be listed)."""
        return [entry for entry in self.entries if entry["CPV"] == cpv]

    def hidden(self) -> tuple[str, ...]:
        """Flag prefixes of the USE_EXPAND groups emerge does not show."""
        return identity.hidden_prefixes(self.header)


_INDEX_LINE = re.compile(r"^[A-Z][A-Z0-9_]*:( .*)?$")


def read_index(binhost: Path) -> Index | None:
    """The binhost's index (None: there is none yet); SwarmError if it cannot be trusted.

    Portage's reader skips what it does not understand; a sync that trusted
    it would write back an index missing every entry it skipped. So every
    line must be Portage's KEY: value form, the header must carry VERSION,
    TIMESTAMP and PACKAGES, and PACKAGES must count the entries.
    """
    path = Path(binhost) / "Packages"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SwarmError(f"cannot read the binhost's index {path}: {exc}") from None
    from portage.getbinpkg import PackageIndex  # (Portage is slow to import)

    problem = None
    bad = next((n for n, line in enumerate(text.splitlines(), 1)
                if line and not _INDEX_LINE.match(line)), None)
    index = PackageIndex()
    index.read(io.StringIO(text))
    header = index.header
    if bad is not None:
        problem = f"line {bad} is not 'KEY: value'"
    elif not header.get("VERSION", "").isdigit() or not header.get("TIMESTAMP", "").isdigit():
        problem = "its header has no numeric VERSION and TIMESTAMP"
    elif header.get("PACKAGES") != str(len(index.packages)):
        problem = f"PACKAGES: {header.get('PACKAGES')} but {len(index.packages)} entries"
    elif any("CPV" not in e or "PATH" not in e for e in index.packages):
        problem = "an entry without CPV or PATH"
    if problem:
        raise SwarmError(f"the binhost's index {path} cannot be trusted ({problem}); nothing "
                         "was changed: restore it, or move it away and run swarm-sync --reindex")
    return Index(dict(header), [dict(e) for e in index.packages])


def mirror(source: Path, target: str, ssh_command: list[str]) -> None:
    """Copy the binhost to another host: files first, then the index."""
    common = ["rsync", "-rt", "--partial", "-e", shlex.join(ssh_command)]
    files = ["--exclude=/Packages", "--exclude=/Packages.gz", "--exclude=/.incoming",
             f"{source}/", f"{target}/"]
    steps = [
        [*common, *files],  # new files first
        [*common, f"{source}/Packages.gz", f"{source}/Packages", f"{target}/"],  # renamed in
        [*common, "--delete", *files],  # then what no index lists any more
    ]
    for command in steps:
        log.info("mirroring: %s", " ".join(command))
        proc = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SwarmError(f"rsync to {target} failed (exit {proc.returncode}): {proc.stderr.strip()}")
