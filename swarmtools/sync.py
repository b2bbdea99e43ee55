"""Publication: staging -> binhost, so that clients can always trust the index.

Order, as Portage's clients need it (portage-facts.md section 2):

1. copy each received file into ``binhost/.incoming/`` and verify that copy
   (size and sha256 as the drone reported, a complete gpkg whose Manifest
   matches, the CPV of its metadata); a bad one goes to
   ``staging/quarantine/`` and its package back to ``needed``;
2. record its never-reused ``CAT/PN/PF-BUILD_ID.gpkg.tar`` name, sign it when
   asked, and ``rename()`` it into place;
3. rewrite ``Packages`` and ``Packages.gz`` once, with Portage's own index
   code, adding the new entries and dropping the superseded ones (same
   category/package and SLOT), each written to a temporary name and renamed;
4. mark the packages ``synced``, then clear them from staging;
5. delete superseded files only after ``binhost.grace_seconds``.

A run killed at any point leaves an index that lists only complete files, and
the next run finishes the job: a recorded destination holding the right file
is not copied again, and re-adding an entry replaces the one with the same
PATH. Everything runs under an exclusive lock file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import db
from .config import Config
from .delegate import file_digest
from .errors import SwarmError, TryLater

log = logging.getLogger(__name__)

ACTOR = "swarm-sync"
HOOK_VARIABLE = "SWARM_SYNC_TEST_HOOK"  # "STEP:kill" or "STEP:pause=SECONDS", tests only
_SAFE_PATH = re.compile(r"^[A-Za-z0-9+_.-]+(/[A-Za-z0-9+_.-]+)*$")
_MANIFEST_HASHES = {"BLAKE2B": hashlib.blake2b, "SHA512": hashlib.sha512}


@dataclass
class SyncResult:
    """What a run did."""

    published: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"published": self.published,
                "quarantined": [{"cpv": c, "reason": r} for c, r in self.quarantined],
                "superseded": self.superseded, "deleted": self.deleted, "orphans": self.orphans}


def lock_path(config: Config) -> Path:
    """The lock file every swarm-sync takes."""
    return Path(config["orchestrator"]["state_dir"]) / "swarm-sync.lock"


def sync(config: Config, dry_run: bool = False, now: datetime | None = None) -> SyncResult:
    """Publish every received package; raise TryLater when another run holds the lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(config)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise TryLater(f"another swarm-sync holds {lock.lock_file}; try again later") from None
    try:
        conn = db.connect(config.database)
        try:
            return Publisher(config, conn, dry_run, now or datetime.now(timezone.utc)).run()
        finally:
            conn.close()
    finally:
        lock.release()


def _hook(step: str) -> None:
    # Lets the tests stop or kill a run at each step, to prove crash safety.
    wanted = os.environ.get(HOOK_VARIABLE, "")
    name, _, action = wanted.partition(":")
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("pause="):
        time.sleep(float(action.split("=", 1)[1]))


class Publisher:
    """One run of swarm-sync."""

    def __init__(self, config: Config, conn: sqlite3.Connection, dry_run: bool, now: datetime):
        self.config = config
        self.conn = conn
        self.dry_run = dry_run
        self.now = now
        self.binhost = Path(config["binhost"]["path"])
        self.staging = config.staging_dir
        self.result = SyncResult()

    def run(self) -> SyncResult:
        # Rows as read now: every later write is guarded by what was read, so
        # a rescan or a claim that changes a row meanwhile wins over this run.
        received = self.conn.execute(
            "SELECT * FROM packages WHERE status = 'received' ORDER BY id").fetchall()
        _hook("start")
        log.info("%d received package(s) to publish", len(received))
        index = PortageIndex(self.config) if received and not self.dry_run else None
        if index:
            # Half-prepared files of a stopped run; we hold the lock, nobody else writes here.
            shutil.rmtree(self.binhost / ".incoming", ignore_errors=True)
        ready = []
        for pkg in received:
            try:
                placed = self._place(pkg, index)
            except _Reject as reason:
                self._quarantine(pkg, str(reason))
                continue
            if placed:
                ready.append((pkg, placed))
        _hook("copied")
        if ready:
            superseded = index.publish([(pkg["cpv"], path) for pkg, path in ready])
            log.info("wrote %s and Packages.gz", self.binhost / "Packages")
            _hook("indexed")
            self._mark_synced(ready, superseded)
            _hook("marked")
        self._delete_superseded()
        self._orphans()
        if not self.dry_run and self.config["binhost"]["rsync_target"]:
            mirror(self.binhost, self.config["binhost"]["rsync_target"])
        return self.result

    def _place(self, pkg: sqlite3.Row, index: "PortageIndex | None") -> str | None:
        """Put a verified copy on the binhost; return its path there (None: nothing to do)."""
        name = pkg["file"] or ""
        if not _SAFE_PATH.fullmatch(name) or ".." in name.split("/"):
            raise _Reject(f"unsafe file name {name!r}")
        if pkg["binhost_path"] and (self.binhost / pkg["binhost_path"]).is_file():
            return pkg["binhost_path"]  # an earlier run put it there (whole: by rename)
        source = self.staging / name
        if not source.is_file():
            raise _Reject(f"staged file {name} is missing")
        log.info("verifying %s (%s)", pkg["cpv"], name)
        if self.dry_run:
            _verify(source, pkg)
            self.result.published.append(pkg["cpv"])
            return None
        target_name = index.allocate(pkg["cpv"], Path(name).name, self._used_names(pkg["cpv"]))
        # Copied outside the package tree under its final name (gpkg-sign
        # needs it), verified there (the drone cannot change this copy), then
        # renamed into place: a file at the target is whole.
        incoming = self.binhost / ".incoming" / Path(target_name).name
        incoming.parent.mkdir(parents=True, exist_ok=True)
        log.info("copying %s to %s", name, target_name)
        shutil.copyfile(source, incoming)
        try:
            _verify(incoming, pkg)
        except _Reject:
            incoming.unlink()
            raise
        with db.write(self.conn):  # recorded before the rename, so a rerun finds it
            changed = self.conn.execute(
                "UPDATE packages SET binhost_path = ? WHERE id = ? AND status = 'received'"
                " AND digest = ?", (target_name, pkg["id"], pkg["digest"])).rowcount == 0
        if changed:
            log.warning("%s changed during this run; left for the next", pkg["cpv"])
            incoming.unlink()
            return None
        if self.config["binhost"]["gpg_key"]:
            sign_gpkg(incoming)
        fd = os.open(incoming, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.rename(incoming, self.binhost / target_name)
        return target_name

    def _used_names(self, cpv: str) -> set[str]:
        # Every name ever published for this CPV (the history is append-only),
        # so a build id is never reused, even after its file was deleted.
        category, pf = cpv.split("/", 1)
        return {row[0].removeprefix("published as ") for row in self.conn.execute(
            "SELECT detail FROM events WHERE event = 'synced' AND detail LIKE ?",
            (f"published as {category}/%/{pf}-%",))}

    def _quarantine(self, pkg: sqlite3.Row, reason: str) -> None:
        log.error("%s %s: %s", "would quarantine" if self.dry_run else "quarantining",
                  pkg["cpv"], reason)
        self.result.quarantined.append((pkg["cpv"], reason))
        if self.dry_run:
            return
        source = self.staging / (pkg["file"] or "")
        target = self.staging / "quarantine" / f"{self.now:%Y%m%dT%H%M%S}" / (pkg["file"] or "")
        with db.write(self.conn):
            if self.conn.execute(
                    "UPDATE packages SET status = 'needed', drone = NULL, file = NULL, size = NULL,"
                    " digest = NULL, binhost_path = NULL, updated_at = ?"
                    " WHERE id = ? AND status = 'received' AND file IS ?",
                    (db.now(), pkg["id"], pkg["file"])).rowcount == 0:
                return  # changed meanwhile (rescan): nothing of ours to undo
            safe = pkg["file"] and _SAFE_PATH.fullmatch(pkg["file"]) and ".." not in pkg["file"]
            if safe and source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
                reason += f"; file kept at {target}"
            db.record_event(self.conn, pkg["id"], ACTOR, "quarantined", "received", "needed", reason)

    def _mark_synced(self, ready, superseded: list[str]) -> None:
        at = db.now()
        with db.write(self.conn):
            for pkg, path in ready:
                if self.conn.execute(
                        "UPDATE packages SET status = 'synced', updated_at = ?"
                        " WHERE id = ? AND status = 'received' AND digest = ?",
                        (at, pkg["id"], pkg["digest"])).rowcount:
                    db.record_event(self.conn, pkg["id"], ACTOR, "synced", "received", "synced",
                                    f"published as {path}", at)
                    self.result.published.append(pkg["cpv"])
                else:
                    # Rescanned meanwhile: the binary is still a true build of
                    # pkg["cpv"]; a newer build of the package supersedes it.
                    log.warning("%s changed during this run; published, not marked", pkg["cpv"])
            for path in superseded:
                self.conn.execute("INSERT OR IGNORE INTO superseded (path, since) VALUES (?, ?)",
                                  (path, at))
        for pkg, _ in ready:
            (self.staging / pkg["file"]).unlink(missing_ok=True)
        self.result.superseded = superseded

    def _delete_superseded(self) -> None:
        limit = (self.now - timedelta(seconds=self.config["binhost"]["grace_seconds"])).isoformat(
            timespec="seconds")
        due = [row[0] for row in self.conn.execute(
            "SELECT path FROM superseded WHERE since <= ?", (limit,))]
        if not due:
            return
        has_index = (self.binhost / "Packages").exists()
        listed = {e.get("PATH") for e in index_entries(self.binhost)} if has_index else set()
        for path in due:
            if path not in listed:  # never a file the index lists
                self.result.deleted.append(path)
                log.info("deleting %s: superseded longer than binhost.grace_seconds", path)
                if self.dry_run:
                    continue
                (self.binhost / path).unlink(missing_ok=True)
            if not self.dry_run:
                with db.write(self.conn):
                    self.conn.execute("DELETE FROM superseded WHERE path = ?", (path,))

    def _orphans(self) -> None:
        """Staged files no received package names: log them, quarantine after a grace."""
        if not self.staging.is_dir():
            return
        wanted = {row[0] for row in self.conn.execute(
            "SELECT file FROM packages WHERE status = 'received' AND file IS NOT NULL")}
        # Left behind by a run stopped after marking: already published.
        published = dict(self.conn.execute(
            "SELECT file, digest FROM packages WHERE status = 'synced' AND file IS NOT NULL"))
        # A drone uploads before it reports: give it the lease time to do so.
        grace = self.config["delegate"]["lease_seconds"]
        for path in sorted(self.staging.rglob("*")):
            relative = str(path.relative_to(self.staging))
            if (not path.is_file() or relative.startswith("quarantine/")
                    or relative in wanted or path.name.startswith(".")):
                continue
            if relative in published and file_digest(path)[1] == published[relative]:
                if not self.dry_run:
                    path.unlink()
                continue
            # ctime: when it arrived here (rsync -t keeps the drone's mtime).
            if time.time() - path.stat().st_ctime < grace:
                continue
            self.result.orphans.append(relative)
            log.warning("staged file %s belongs to no received package; quarantined", relative)
            if not self.dry_run:
                target = self.staging / "quarantine" / "orphans" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                path.rename(target)


class _Reject(Exception):
    """A received file that must not be published; the message says why."""


def _verify(path: Path, pkg: sqlite3.Row) -> None:
    """Raise _Reject unless PATH is the file the drone reported, a whole gpkg of its CPV."""
    try:
        size, digest = file_digest(path)
        if (size, digest) != (pkg["size"], pkg["digest"]):
            raise _Reject(f"{path.name} is not the file that was reported "
                          f"({size} bytes, reported {pkg['size']})")
        verify_gpkg(path, pkg["cpv"])
    except _Reject:
        raise
    except SwarmError as exc:
        raise _Reject(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever breaks reading it, it is not publishable
        raise _Reject(f"{path.name}: cannot be read as a gpkg ({type(exc).__name__}: {exc})") from None


def verify_gpkg(path: Path, cpv: str) -> None:
    """Raise SwarmError unless PATH is a complete gpkg whose Manifest and CPV match."""
    try:
        with tarfile.open(path, "r:") as container:
            members = container.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            if len(tops) != 1 or any(not m.isfile() or "/" not in m.name for m in members):
                raise SwarmError(f"{path.name}: not a gpkg (one directory of plain files)")
            top = tops.pop()
            files = {m.name.split("/", 1)[1]: m for m in members}
            if "gpkg-1" not in files or "Manifest" not in files:
                raise SwarmError(f"{path.name}: not a gpkg (gpkg-1 or Manifest missing)")
            manifest = container.extractfile(files["Manifest"]).read().decode()
            listed = _check_manifest(container, files, manifest, path.name)
            unlisted = set(files) - listed - {"Manifest"}
            if any(not name.endswith(".sig") for name in unlisted):
                raise SwarmError(f"{path.name}: files not in its Manifest: {sorted(unlisted)}")
    except (tarfile.TarError, EOFError, UnicodeDecodeError) as exc:
        raise SwarmError(f"{path.name}: unreadable gpkg ({exc})") from None
    category, pf = _metadata_cpv(path, top)
    if f"{category}/{pf}" != cpv:
        raise SwarmError(f"{path.name}: holds {category}/{pf}, but {cpv} was reported")


def sign_gpkg(path: Path) -> None:
    """Sign a gpkg in place with Portage's own code (as gpkg-sign --allow-unsigned)."""
    import portage.exception
    import portage.gpkg

    package = portage.gpkg.gpkg(_portage_settings(), gpkg_file=str(path))
    package.request_signature = False  # the drone's build is unsigned
    try:
        package.update_signature()
    except (portage.exception.PortageException, OSError) as exc:
        raise SwarmError(f"cannot sign {path.name} with binhost.gpg_key: {exc}") from None


def _check_manifest(container, files, manifest: str, name: str) -> set[str]:
    listed = set()
    for line in manifest.splitlines():
        words = line.split()
        if not words or words[0] != "DATA":
            continue
        if len(words) < 5 or not words[2].isdigit():
            raise SwarmError(f"{name}: malformed Manifest line {line!r}")
        member, size = words[1], int(words[2])
        hashes = dict(zip(words[3::2], words[4::2]))
        if member not in files or files[member].size != size:
            raise SwarmError(f"{name}: {member} does not match the size in its Manifest")
        data = container.extractfile(files[member])
        digests = {h: _MANIFEST_HASHES[h]() for h in hashes if h in _MANIFEST_HASHES}
        if not digests:
            raise SwarmError(f"{name}: no known hash for {member} in its Manifest")
        while block := data.read(1 << 20):
            for digest in digests.values():
                digest.update(block)
        for h, digest in digests.items():
            if digest.hexdigest() != hashes[h]:
                raise SwarmError(f"{name}: {member} does not match its Manifest ({h})")
        listed.add(member)
    return listed


def _metadata_cpv(path: Path, basename: str) -> tuple[str, str]:
    import portage.gpkg  # Portage reads its own metadata (any compression)

    metadata = portage.gpkg.gpkg(_portage_settings(), basename, str(path)).get_metadata(
        ["CATEGORY", "PF"])
    try:
        return tuple(metadata[k].decode().strip() for k in ("CATEGORY", "PF"))  # type: ignore
    except (AttributeError, KeyError):
        raise SwarmError(f"{path.name}: no CATEGORY/PF in its metadata") from None


_SETTINGS = None


def _portage_settings():
    global _SETTINGS
    if _SETTINGS is None:
        import portage

        _SETTINGS = portage.config(clone=portage.settings)
    return _SETTINGS


def prepare_portage(config: Config) -> None:
    """Point Portage (imported after this) at the binhost, with the scan's environment."""
    # The scan's environment is the orchestrator's Portage (a prefix in the demo).
    os.environ.update(config["scan"]["environment"])
    os.environ["PKGDIR"] = config["binhost"]["path"]
    features = os.environ.get("FEATURES", "")
    # compress-index: Packages.gz too (clients fetch it first). Multi-instance
    # names never reuse a file name; signing is not done here.
    os.environ["FEATURES"] = f"{features} compress-index binpkg-multi-instance".strip()
    if config["binhost"]["gpg_key"]:
        os.environ["BINPKG_GPG_SIGNING_KEY"] = config["binhost"]["gpg_key"]
        home = config["binhost"]["gpg_home"] or os.path.expanduser("~/.gnupg")
        os.environ["BINPKG_GPG_SIGNING_GPG_HOME"] = home
        # Portage checks a signed package whenever it reads it (the index
        # entry): with the signer's own home, whose key it trusts, as the
        # user running swarm-sync (not 'nobody', who cannot read that home).
        os.environ["BINPKG_GPG_VERIFY_GPG_HOME"] = home
        os.environ["GPG_VERIFY_USER_DROP"] = os.environ["GPG_VERIFY_GROUP_DROP"] = ""


class PortageIndex:
    """The binhost's Packages index, read and written by Portage's bintree code."""

    def __init__(self, config: Config):
        import portage
        from portage.dbapi.bintree import binarytree

        self.path = Path(config["binhost"]["path"])
        settings = _portage_settings()
        settings.unlock()
        settings["PKGDIR"] = str(self.path)
        settings.backup_changes("PKGDIR")
        settings.lock()
        self.tree = binarytree(pkgdir=str(self.path), settings=settings)
        self.portage = portage
        self._indexed_ids: dict[str, set[int]] | None = None  # CPV -> build ids in the index

    def allocate(self, cpv: str, staged_name: str, used_names: set[str]) -> str:
        """A binhost name for a new build: no file, index entry or earlier publication had it."""
        category, pf = cpv.split("/", 1)
        pn = self.portage.versions.catpkgsplit(cpv)[1]
        directory = self.path / category / pn
        directory.mkdir(parents=True, exist_ok=True)
        used = {0}
        pattern = re.compile(re.escape(pf) + r"-(\d+)\.(?:gpkg\.tar|xpak)$")
        for name in os.listdir(directory):
            if match := pattern.match(name):
                used.add(int(match.group(1)))
        used |= self._index_build_ids().get(cpv, set())
        for name in used_names:
            if match := pattern.search(name):
                used.add(int(match.group(1)))
        wanted = re.search(r"-(\d+)\.gpkg\.tar$", staged_name)
        build_id = int(wanted.group(1)) if wanted and int(wanted.group(1)) not in used else max(used) + 1
        return f"{category}/{pn}/{pf}-{build_id}.gpkg.tar"

    def _load(self):
        return self.tree._load_pkgindex()

    def _index_build_ids(self) -> dict[str, set[int]]:
        # Read once a run, not once a package: only this run (holding the
        # lock) changes the index until publish() rereads it.
        if self._indexed_ids is None:
            self._indexed_ids = {}
            for entry in self._load().packages:
                if entry.get("BUILD_ID", "").isdigit():
                    self._indexed_ids.setdefault(entry["CPV"], set()).add(int(entry["BUILD_ID"]))
        return self._indexed_ids

    def publish(self, new: list[tuple[str, str]]) -> list[str]:
        """Add the new files' entries, drop superseded ones, write the index once.

        Returns the paths the index no longer lists (to delete after the grace).
        """
        from portage.locks import lockfile, unlockfile
        from portage.versions import _pkg_str

        lock = lockfile(str(self.path / "Packages"), wantnewlockfile=1)
        try:
            index = self._load()
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
                key = (self.portage.versions.cpv_getkey(entry["CPV"]),
                       entry.get("SLOT", "0").split("/")[0])
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
                     if p.is_file() and p.name.endswith((".gpkg.tar", ".xpak"))
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
