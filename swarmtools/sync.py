"""Publication: staging -> binhost, so that clients can always trust the index.

Steps of a run (under an exclusive lock file), in the order Portage's
clients need:

1. place: copy each received file into ``binhost/.incoming/``, verify that
   copy (size and sha256 as the drone reported, a complete gpkg of its
   CPV), record its never-reused ``CAT/PN/PF-BUILD_ID.gpkg.tar`` name, sign
   it when asked and ``rename()`` it into place; a bad one goes to
   ``staging/quarantine/`` and its package back to ``needed``;
2. index: rewrite ``Packages`` and ``Packages.gz`` once, with Portage's own
   index code, adding the new entries and dropping the superseded ones;
3. mark: the packages become ``synced``; their staged files are removed;
4. delete superseded files once ``binhost.grace_seconds`` are over;
5. sweep staging of files no package names; mirror when asked.

A run killed at any point leaves an index that lists only complete files,
and the next run finishes the job: a recorded destination holding the right
file is not copied again, and re-adding an entry replaces the one with the
same PATH. The layout of staging and binhost is drawn in :mod:`staging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import atoms, clock, db, gpkg, identity, packages, staging
from .binhost import Binhost, Index, PortageIndex, mirror, portage_config, read_index
from .config import DEFAULT, Config
from .crashpoints import crashpoint
from .errors import SwarmError, TryLater
from .packages import Event, State

log = logging.getLogger(__name__)

ACTOR = "swarm-sync"
HOOK_VARIABLE = "SWARM_SYNC_TEST_HOOK"  # "STEP:kill" or "STEP:pause=SECONDS", tests only
_SAFE_PATH = re.compile(r"^[A-Za-z0-9+_.-]+(/[A-Za-z0-9+_.-]+)*$")


@dataclass
class SyncResult:
    """What a run did."""

    published: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # published once, gone since
    reindexed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The --json answer."""
        return {"published": self.published,
                "quarantined": [{"cpv": c, "reason": r} for c, r in self.quarantined],
                "superseded": self.superseded, "deleted": self.deleted, "orphans": self.orphans,
                "requeued": self.requeued, "reindexed": self.reindexed}


def publish(config: Config, now: datetime, dry_run: bool = False, progress=None) -> SyncResult:
    """Publish every received package; raise TryLater when another run holds the lock."""
    with db.run_lock(staging.sync_lock(config), config.database, "swarm-sync"):
        return _publish_locked(config, now, dry_run, progress)


def _publish_locked(config: Config, now: datetime, dry_run: bool = False,
                    progress=None) -> SyncResult:
    conn = db.connect(config.database)
    try:
        names = config.binhost_names()
        publishers, failed = [], []
        for name in names:
            # Each binhost by itself, with the Portage settings of a profile
            # that publishes there. One binhost's trouble (an index it cannot
            # trust, a dead mirror) does not keep the others from being published.
            publisher = Publisher(publisher_config(config, name), conn, now, dry_run, progress,
                                  binhost=name)
            publishers.append(publisher)
            try:
                publisher.run()
            except SwarmError as exc:
                if len(names) == 1:
                    raise
                log.error("binhost %s: %s", name, exc)
                failed.append(f"binhost {name}: {exc}")
        publisher.sweep_orphans()  # the staging area they all share, once
        result = SyncResult()
        for done in publishers:
            for field in vars(result):
                getattr(result, field).extend(getattr(done.result, field))
        if not dry_run:
            _record_run(conn, now, result)
        if failed:
            raise SwarmError("; ".join(failed))
        return result
    finally:
        conn.close()


def _record_run(conn: sqlite3.Connection, now: datetime, result: SyncResult) -> None:
    # The status page's "last sync": a run with nothing to do leaves no event.
    counts = {name: len(value) for name, value in vars(result).items()}
    with db.write(conn):
        conn.execute("INSERT OR REPLACE INTO runs (command, at, summary) VALUES (?, ?, ?)",
                     (ACTOR, clock.iso(now), json.dumps(counts, sort_keys=True)))


def publisher_config(config: Config, binhost: str) -> Config:
    """CONFIG as binhost BINHOST is published: a profile of it's view, else its own."""
    for name in config.profile_names():
        if config.binhost_of(name) == binhost:
            return config.for_profile(name)
    return config.for_binhost(binhost)


def publish_soon(config: Config) -> None:
    """Start a coalescing swarm-sync in the background (after a drone's report).

    Chains of dependencies wait on publication at every link: waiting for
    cron's next run would add minutes a link. Bursts coalesce: at most one
    run publishes and one waits to run after it.
    """
    import subprocess
    import sys

    staging.sync_pending(config).touch()
    program = Path(sys.executable).parent / "swarm-sync"
    try:
        subprocess.Popen([str(program) if program.exists() else "swarm-sync", "--quiet",
                          "--pending", "--config", str(config.path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:
        log.warning("could not start swarm-sync (cron will publish): %s", exc)


def publish_pending(config: Config, clock_now: Callable[[], datetime],
                    wait: float = 3600) -> SyncResult:
    """Publish while reports are pending; leave at once when another run will do it.

    It runs as long as reports keep coming: each run reads CLOCK_NOW.
    """
    with contextlib.ExitStack() as held:
        try:
            with db.run_lock(staging.sync_waiter_lock(config), config.database,
                             "waiting swarm-sync"):
                # Wait for a running swarm-sync; leaving the waiter's lock
                # then lets the next report's run wait in turn.
                held.enter_context(db.run_lock(staging.sync_lock(config), config.database, "swarm-sync",
                                               timeout=wait))
        except TryLater:
            return SyncResult()  # one waits already: it will see what was reported
        result = SyncResult()
        marker = staging.sync_pending(config)
        while marker.exists():
            marker.unlink(missing_ok=True)
            done = _publish_locked(config, clock_now())
            for name in vars(result):
                getattr(result, name).extend(getattr(done, name))
        return result


def _hook(step: str) -> None:
    crashpoint(HOOK_VARIABLE, step)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class _Reject(Exception):
    """A received file that must not be published; the message says why."""


class Publisher:
    """One run of swarm-sync."""

    def __init__(self, config: Config, conn: sqlite3.Connection, now: datetime, dry_run: bool,
                 progress=None, binhost: str = DEFAULT):
        """PROGRESS(done, total, cpv), when given, is called as each received package is checked."""
        self.config = config
        self.progress = progress
        self.conn = conn
        self.now = now
        self.at = clock.iso(now)
        self.dry_run = dry_run
        self.binhost = Binhost(Path(config.binhost.path))
        self.name = binhost  # the binhost's name: its packages, publications, superseded files
        self.staging = config.staging_dir
        self.result = SyncResult()
        self._settings = None
        self._package_settings = None
        self._index: PortageIndex | None = None

    @property
    def settings(self):
        """The binhost's portage.config, made when first needed (Portage is slow to load)."""
        if self._settings is None:
            self._settings = portage_config(self.config)
        return self._settings

    def _wanted_flags(self, pkg: sqlite3.Row) -> dict[str, str]:
        """The compiler flags the profile's Portage gives PKG: its make.conf's, or its
        package.env's for that package."""
        import portage

        if self._package_settings is None:
            self._package_settings = portage.config(clone=self.settings)
        self._package_settings.setcpv(atoms.Queued(pkg).pkg)
        return {key: self._package_settings.get(key, "") for key in identity.RECORDED_FLAGS}

    @property
    def index(self) -> PortageIndex:
        if self._index is None:
            self._index = PortageIndex(self.binhost.path, self.settings)
        return self._index

    def run(self) -> SyncResult:
        """The steps of a run, in order."""
        if not self.binhost.path.is_dir():
            raise SwarmError(f"binhost.path {self.binhost.path} does not exist; create it "
                             "(owned by the user swarm-sync runs as) or fix the config")
        published = read_index(self.binhost.path)  # refuses an index it cannot trust
        # Rows as read now: every later write is guarded by what was read, so
        # a rescan or a claim that changes a row meanwhile wins over this run.
        received = self.conn.execute(
            "SELECT * FROM packages WHERE status = ? AND binhost = ? ORDER BY id",
            (State.RECEIVED, self.name)).fetchall()
        _hook("start")
        lost, reindex, stale = self._check_synced(published)
        log.info("%d received package(s) to publish", len(received))
        if received and not self.dry_run:
            self.binhost.clear_incoming()
        ready = []
        for done, pkg in enumerate(received, 1):
            if self.progress:
                self.progress(done, len(received), pkg["cpv"])
            if path := self._place_or_quarantine(pkg):
                ready.append((pkg, path))
        _hook("copied")
        if (ready or reindex or stale) and not self.dry_run:
            new = [(pkg["cpv"], path) for pkg, path in ready + reindex]
            superseded = self.index.publish(
                new, drop=stale, keep=self._wanted_builds(published) | {path for _, path in new})
            log.info("wrote %s and Packages.gz", self.binhost.path / "Packages")
            _hook("indexed")
            self._mark_synced(ready, reindex, superseded)
            _hook("marked")
        self._requeue_lost(lost)
        self._delete_superseded()
        if not self.dry_run and self.config.binhost.rsync_target:
            mirror(self.binhost.path, self.config.binhost.rsync_target,
                   self.config.binhost.rsync_ssh_command)
        return self.result

    def _wanted_builds(self, published: Index | None) -> set[str]:
        """The published files of this binhost's active builds: kept beside a newer build
        of their slot (another profile's, with other USE or version)."""
        keep = set()
        for path, cpv, build_id in self.conn.execute(
                "SELECT binhost_path, cpv, build_id FROM packages WHERE binhost = ? AND active = 1"
                " AND status = ?", (self.name, State.SYNCED)):
            if path is not None:
                keep.add(path)
            elif published is not None:  # a scan found it on the binhost: as the index lists it
                keep |= {e["PATH"] for e in published.by_cpv(cpv)
                         if build_id in (None, _int(e.get("BUILD_ID")))}
        return keep

    def _check_synced(self, published: Index | None):
        """What the index and disk say of every synced package.

        Returns (lost, reindex, stale): packages whose binary is gone (to
        build again, with why), packages whose file is there but unlisted (to
        list again), and index entries whose file is missing (to drop).
        """
        paths = published.paths() if published else set()
        lost, reindex = [], []
        for pkg in self.conn.execute(
                "SELECT * FROM packages WHERE status = ? AND active = 1 AND binhost = ?",
                (State.SYNCED, self.name)):
            path = pkg["binhost_path"]
            if path is None:  # marked synced by a scan that found it on the binhost
                entries = published.by_cpv(pkg["cpv"]) if published else []
                if not any(pkg["build_id"] in (None, _int(e.get("BUILD_ID"))) for e in entries):
                    lost.append((pkg, "not in the binhost's index"))
            elif not self.binhost.has(path):
                lost.append((pkg, f"its file {path} is gone from the binhost"))
            elif path not in paths:
                reindex.append((pkg, path))
        stale = sorted(p for p in paths if not self.binhost.has(p))
        for pkg, why in lost:
            log.warning("%s was published but %s; building it again", pkg["cpv"], why)
        for pkg, path in reindex:
            log.warning("%s: %s is on the binhost but not in its index; listing it again",
                        pkg["cpv"], path)
        for path in stale:
            log.warning("the index lists %s, which is not on disk; dropping the entry", path)
        return lost, reindex, stale

    def _requeue_lost(self, lost) -> None:
        if not lost or self.dry_run:
            return
        with db.write(self.conn):
            for pkg, why in lost:
                if packages.move(self.conn, pkg["id"], expect=State.SYNCED, to=State.NEEDED,
                                 event=Event.REQUEUED, actor=ACTOR, at=self.at,
                                 guard={"binhost_path": pkg["binhost_path"]},
                                 detail=f"published, but {why}", **packages.NO_BUILD):
                    self.result.requeued.append(pkg["cpv"])

    def _place_or_quarantine(self, pkg: sqlite3.Row) -> str | None:
        try:
            return self._place(pkg)
        except _Reject as reason:
            self._quarantine(pkg, str(reason))
            return None

    def _place(self, pkg: sqlite3.Row) -> str | None:
        """Put a verified copy on the binhost; return its path there (None: nothing to do)."""
        name = pkg["file"] or ""
        if not _SAFE_PATH.fullmatch(name) or ".." in name.split("/"):
            raise _Reject(f"unsafe file name {name!r}")
        if pkg["binhost_path"] and self.binhost.has(pkg["binhost_path"]):
            return pkg["binhost_path"]  # an earlier run put it there (whole: by rename)
        source = self.staging / name
        if not source.is_file():
            raise _Reject(f"staged file {name} is missing")
        log.info("verifying %s (%s)", pkg["cpv"], name)
        if self.dry_run:
            self._verify(source, pkg)
            self.result.published.append(pkg["cpv"])
            return None
        target = self._allocate(pkg["cpv"], Path(name).name)
        # Copied outside the package tree under its final name, verified
        # there (the drone cannot change this copy), then renamed into place.
        log.info("copying %s to %s", name, target)
        incoming = self.binhost.copy_in(source, target)
        try:
            self._verify(incoming, pkg)
        except _Reject:
            incoming.unlink()
            raise
        with db.write(self.conn):  # recorded before the rename, so a rerun finds it
            recorded = packages.update(self.conn, pkg["id"], binhost_path=target,
                                       guard={"status": State.RECEIVED, "digest": pkg["digest"]})
            if recorded:
                self.conn.execute(
                    "INSERT OR IGNORE INTO publications (binhost, path, cpv, build_id,"
                    " package_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (self.name, target, pkg["cpv"], gpkg.parse_name(Path(target).name).build_id,
                     pkg["id"], self.at))
        if not recorded:
            log.warning("%s changed during this run; left for the next", pkg["cpv"])
            incoming.unlink()
            return None
        if self.config.binhost.gpg_key:
            gpkg.sign(incoming, self.settings)
        self.binhost.put(incoming, target)
        return target

    def _allocate(self, cpv: str, staged_name: str) -> str:
        """A binhost name for a new build: no file, index entry or earlier name had its id."""
        from portage.versions import catpkgsplit

        category, pf = cpv.split("/", 1)
        pn = catpkgsplit(cpv)[1]
        used = {0} | self.binhost.build_ids(category, pn, pf) | self.index.build_ids(cpv)
        used |= {row[0] for row in self.conn.execute(
            "SELECT build_id FROM publications WHERE binhost = ? AND cpv = ?", (self.name, cpv))}
        wanted = gpkg.parse_name(staged_name)
        build_id = (wanted.build_id if wanted and wanted.build_id and wanted.build_id not in used
                    else max(used) + 1)
        return f"{category}/{pn}/{gpkg.name_for(pf, build_id)}"

    def _verify(self, path: Path, pkg: sqlite3.Row) -> None:
        """Raise _Reject unless PATH is the file the drone reported, a whole gpkg of its CPV."""
        try:
            size, digest = gpkg.file_digest(path)
            if (size, digest) != (pkg["size"], pkg["digest"]):
                raise _Reject(f"{path.name} is not the file that was reported "
                              f"({size} bytes, reported {pkg['size']})")
            metadata = gpkg.verify(path, pkg["cpv"], self.settings)
        except _Reject:
            raise
        except SwarmError as exc:
            raise _Reject(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - whatever breaks reading it, it is not publishable
            raise _Reject(f"{path.name}: cannot be read as a gpkg ({type(exc).__name__}: {exc})") from None
        # Portage's verdict on a client: a build with other USE, slot or CHOST
        # than the scan's is not the package clients asked for; nor one for
        # other CPUs than the profile's (clients never look at its flags).
        differs = identity.differences(pkg, metadata, self.settings.get("CHOST"),
                                       identity.hidden_prefixes(self.settings))
        differs += identity.flag_differences(metadata, self._wanted_flags(pkg))
        if differs:
            raise _Reject(f"built by {pkg['drone']} with other settings than the scan's: "
                          + "; ".join(differs))

    def _quarantine(self, pkg: sqlite3.Row, reason: str) -> None:
        log.error("%s %s: %s", "would quarantine" if self.dry_run else "quarantining",
                  pkg["cpv"], reason)
        self.result.quarantined.append((pkg["cpv"], reason))
        if self.dry_run:
            return
        name = pkg["file"] or ""
        with db.write(self.conn):
            current = self.conn.execute("SELECT status, file FROM packages WHERE id = ?",
                                        (pkg["id"],)).fetchone()
            if (current["status"], current["file"]) != (State.RECEIVED, pkg["file"]):
                return  # changed meanwhile (rescan): nothing of ours to undo
            safe = _SAFE_PATH.fullmatch(name) and ".." not in name.split("/")
            if safe and (self.staging / name).is_file():
                reason += f"; file kept at {staging.quarantine(self.config, name, clock.stamp(self.now))}"
            # The drone's fault, not the package's: no attempt is counted, but
            # this drone does not get this package again before the back-off.
            until = clock.later(self.now, self.config.delegate.retry_seconds)
            packages.move(self.conn, pkg["id"], expect=State.RECEIVED, to=State.NEEDED,
                          event=Event.QUARANTINED, actor=ACTOR, at=self.at,
                          detail=f"{reason}; {pkg['drone']} may take it again after {until}",
                          event_drone=pkg["drone"], drone=None, file=None, size=None,
                          digest=None, binhost_path=None)
            if pkg["drone"]:
                packages.hold(self.conn, pkg["id"], pkg["drone"], until, reason)

    def _mark_synced(self, ready, reindex, superseded: list[str]) -> None:
        published = []
        with db.write(self.conn):
            for pkg, path in reindex:
                packages.note(self.conn, pkg["id"], Event.REINDEXED, actor=ACTOR, at=self.at,
                              detail=f"{path} listed again in the index")
                self.result.reindexed.append(pkg["cpv"])
            for pkg, path in ready:
                if packages.move(self.conn, pkg["id"], expect=State.RECEIVED, to=State.SYNCED,
                                 event=Event.SYNCED, actor=ACTOR, at=self.at,
                                 guard={"digest": pkg["digest"]}, event_drone=pkg["drone"],
                                 detail=f"published as {path}"):
                    published.append(pkg)
                    self.result.published.append(pkg["cpv"])
                else:
                    # Rescanned meanwhile: the binary is still a true build of
                    # pkg["cpv"]; a newer build of the package supersedes it.
                    log.warning("%s changed during this run; published, not marked", pkg["cpv"])
            for path in superseded:
                self.conn.execute("INSERT OR IGNORE INTO superseded (binhost, path, since)"
                                  " VALUES (?, ?, ?)", (self.name, path, self.at))
        for pkg in published:  # only what was published: a newer upload stays
            # The same file may stand for a build of another binhost (a drone
            # reused its binary of that identity): it stays for that one.
            if not self.conn.execute("SELECT 1 FROM packages WHERE file = ? AND status = ?",
                                     (pkg["file"], State.RECEIVED)).fetchone():
                (self.staging / pkg["file"]).unlink(missing_ok=True)
        self.result.superseded = superseded

    def _delete_superseded(self) -> None:
        limit = clock.iso(self.now - timedelta(seconds=self.config.binhost.grace_seconds))
        due = [row[0] for row in self.conn.execute(
            "SELECT path FROM superseded WHERE binhost = ? AND since <= ?", (self.name, limit))]
        if not due:
            return
        published = read_index(self.binhost.path)
        # Never a file the index lists, nor one a package is published as.
        keep = (published.paths() if published else set()) | {row[0] for row in self.conn.execute(
            "SELECT binhost_path FROM packages WHERE binhost_path IS NOT NULL AND status IN (?, ?)"
            " AND binhost = ?", (State.SYNCED, State.RECEIVED, self.name))}
        for path in due:
            if path not in keep:
                self.result.deleted.append(path)
                log.info("deleting %s: superseded longer than binhost.grace_seconds", path)
                if self.dry_run:
                    continue
                self.binhost.delete(path)
            if not self.dry_run:
                with db.write(self.conn):
                    self.conn.execute("DELETE FROM superseded WHERE binhost = ? AND path = ?",
                                      (self.name, path))

    def sweep_orphans(self) -> None:
        """Staged files no received package names (of any binhost): log them, quarantine
        after a grace."""
        wanted = {row[0] for row in self.conn.execute(
            "SELECT file FROM packages WHERE status = ? AND file IS NOT NULL", (State.RECEIVED,))}
        # Left behind by a run stopped after marking: already published.
        published = dict(self.conn.execute(
            "SELECT file, digest FROM packages WHERE status = ? AND file IS NOT NULL",
            (State.SYNCED,)))
        # A drone uploads before it reports: give it the lease time to do so.
        grace = self.config.delegate.lease_seconds
        for relative, path in sorted(staging.uploads(self.config)):
            # Dot-files too: rsync's temporary .name.XXXXXX of a killed upload.
            if relative in wanted or not path.is_file():
                continue
            if relative in published and gpkg.file_digest(path)[1] == published[relative]:
                if not self.dry_run:
                    path.unlink()
                continue
            # ctime: when it arrived here (rsync -t keeps the drone's mtime).
            if self.now.timestamp() - path.stat().st_ctime < grace:
                continue
            self.result.orphans.append(relative)
            log.warning("staged file %s belongs to no received package; quarantined", relative)
            if not self.dry_run:
                staging.quarantine(self.config, relative, "orphans")
        if not self.dry_run:
            staging.remove_empty_dirs(self.config)
