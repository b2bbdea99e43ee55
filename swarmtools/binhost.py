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

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import gpkg
from .config import Config
from .errors import SwarmError

log = logging.getLogger(__name__)


def portage_config(config: Config):
    """A portage.config for the binhost, with the scan's environment (the profile's Portage)."""
    import portage

    env = {**os.environ, **config.scan.environment}
    # A prefix (the demo, the tests) names its EPREFIX in the environment;
    # a real host has Portage's own.
    eprefix = env.get("PORTAGE_OVERRIDE_EPREFIX", portage.const.EPREFIX)
    config_root = env.get("PORTAGE_CONFIGROOT") or eprefix or "/"
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
    try:
        return portage.config(config_root=config_root, eprefix=eprefix, env=env)
    except portage.exception.PortageException as exc:
        raise SwarmError(f"Portage cannot read its configuration under {config_root}: {exc}") from None


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
        fd = os.open(incoming, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        destination = self.path / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(incoming, destination)
        # The index will name this file: the rename must survive a power loss too.
        fd = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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

    def publish(self, new: list[tuple[str, str]]) -> list[str]:
        """Add the new files' entries (CPV, path), drop superseded ones, write the index once.

        Returns the paths the index no longer lists (to delete after the grace).
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
                if any(key == (cp, slot) and entry.get("PATH") != path for cp, slot, path in added):
                    dropped.append(entry["PATH"])
                else:
                    kept.append(entry)
            index.packages[:] = kept
            self.tree._update_pkgindex_header(index.header)
            index.modified = True
            if int(time.time()) <= before:
                # Clients refetch only on a strictly newer TIMESTAMP (1 s resolution).
                time.sleep(before + 1 - time.time())
            self.tree._pkgindex_write(index)
        finally:
            unlockfile(lock)
        listed = {entry["PATH"] for entry in kept}
        leftovers = [str(p.relative_to(self.path)) for _, path in new
                     for p in (self.path / path).parent.glob("*")
                     if p.is_file() and gpkg.parse_name(p.name)
                     and str(p.relative_to(self.path)) not in listed]
        return sorted(set(dropped) | set(leftovers))


def index_entries(binhost: Path) -> list[dict]:
    """The package entries of a binhost's Packages file (Portage's reader)."""
    from portage.getbinpkg import PackageIndex

    index = PackageIndex()
    with open(binhost / "Packages", encoding="utf-8") as f:
        index.read(f)
    return index.packages


def mirror(source: Path, target: str) -> None:
    """Copy the binhost to another host: files first, then the index."""
    common = ["rsync", "-rt", "--partial"]
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
