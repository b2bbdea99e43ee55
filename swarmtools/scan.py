"""The scan, conducted: what each build profile wants, brought into the queue (swarm-fresh).

One scan runs at a time (:func:`staging.fresh_lock`). What the config no
longer wants is retired first (:func:`queue.forget`). Then, one profile
after the other: its Portage configuration and trees are taken
(:func:`profile.snapshot`) before emerge runs, so a change during the scan
is seen by the next ``--if-changed``; emerge runs (or a saved list is
read), the queue is brought in line (:func:`queue.apply_scan`), the profile
is recorded (:func:`profile.record_scan`) and the rules are matched again
(:func:`exclude.refresh`). Then, if asked, the dependency graph is resolved.

A scan is long: this module takes a clock (a function), not a moment.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import clock, db, exclude, portageenv, profile, resolve, staging
from .binhost import read_index
from .config import Config
from .emerge import BINHOST_UNREADABLE, MergeList, ParseError, consults_binhost, parse_merge_list, run_emerge
from .errors import ExitCode, SwarmError, TryLater
from .queue import ScanResult, Verdict, apply_scan, forget

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Request:
    """What swarm-fresh is asked to do (its options)."""

    profiles: list[str]  # the profiles to scan, checked (profiles_to_scan)
    source: str | None = None  # a saved scan ('-': stdin) instead of running emerge
    dry_run: bool = False
    force: bool = False  # apply a scan that would retire or rebuild more than half
    consulted_binhost: bool = False  # the saved scan asked the swarm's binhost
    if_changed: bool = False  # scan only a profile whose inputs changed
    resolve: bool = False  # then run swarm-resolve
    progress: bool = False  # show that emerge is working (a terminal)


@dataclass
class Outcome:
    """What the scans did: what was forgotten, and each scanned profile's changes."""

    forgotten: ScanResult
    # Profile -> its changes; a profile --if-changed found unchanged is not here.
    profiles: dict[str, ScanResult] = field(default_factory=dict)


def profiles_to_scan(config: Config, names: list[str], source: str | None,
                     if_changed: bool) -> list[str]:
    """The profiles a run scans (NAMES, else all), checked before anything runs."""
    if if_changed and source:
        raise SwarmError("--if-changed looks at what a scan would read; it does not go with "
                         "--from", ExitCode.USAGE)
    names = list(dict.fromkeys(names)) or config.profile_names()
    for name in names:
        config.for_profile(name)  # an unknown name is a config error before anything runs
    if source and len(names) > 1:
        raise SwarmError(f"--from is the scan of one profile; name it with --profile (one of "
                         f"{', '.join(names)})", ExitCode.USAGE)
    return names


def run(config: Config, conn, request: Request, clock_now: Clock) -> Outcome | None:
    """Forget, scan each profile, then resolve if asked; None when --if-changed found
    another scan running (it will do)."""
    with contextlib.ExitStack() as held:
        # One scan at a time. An overlapping hook (--if-changed) leaves it to
        # the running one; a scan asked for by hand waits for it to end.
        try:
            held.enter_context(db.run_lock(staging.fresh_lock(config), config.database,
                                           "swarm-fresh",
                                           timeout=0 if request.if_changed else config.scan.timeout))
        except TryLater as exc:
            if not request.if_changed:
                raise
            log.info("%s: that scan will do", exc)
            return None
        # What the config no longer wants goes first, scan or not.
        outcome = Outcome(forget(conn, config.profile_names(), config.binhost_names(),
                                 clock_now(), dry_run=request.dry_run))
        for change in outcome.forgotten.changes:
            log.warning("retired %s: %s", change.cpv, change.detail)
        upcoming = _targets_now(config, request)
        for name in request.profiles:
            upcoming.pop(name, None)
            result = scan_profile(config.for_profile(name), conn, request, clock_now, upcoming)
            if result is not None:
                outcome.profiles[name] = result
    if outcome.profiles and request.resolve and not request.dry_run:
        try:
            resolved = resolve.run(config, clock_now())
            log.info("resolved: %s", resolved.to_dict())
        except TryLater as exc:
            log.warning("%s: the running swarm-resolve started before this scan; run it again", exc)
    return outcome


def scan_profile(config: Config, conn, request: Request, clock_now: Clock,
                 upcoming: dict[str, profile.Target] | None = None) -> ScanResult | None:
    """One profile's scan under the lock (CONFIG: its view, Config.for_profile): what it
    changed, or None when --if-changed found no change. UPCOMING: the targets of the
    profiles this run scans after it (same_build_target)."""
    snap = inputs = unrecorded = None
    complaints: list[str] = []
    if not request.source:
        # Portage's complaints about its configuration are said once the scan
        # succeeded: when it fails, emerge's own error says it better.
        with _held_back(logging.getLogger(portageenv.__name__)) as complaints:
            try:
                snap = profile.snapshot(portageenv.scan_environment(config), config.profile)
            except (SwarmError, OSError) as exc:
                unrecorded = exc
        if snap is not None:
            same_build_target(conn, config, snap, upcoming or {})
            inputs = snap.inputs(config.scan.command, config.scan.environment,
                                 f"{config.binhost_of(config.profile)} {config.binhost.url}")
            last = profile.last_inputs(conn, snap.name)
            if request.if_changed and last and last[0] == inputs:
                log.info("profile %s: nothing changed since the scan at %s: not scanning",
                         config.profile, last[1])
                return None
    published = read_index(Path(config.binhost.path))  # refuses an index it cannot trust
    merge_list, consulted = merge_list_of(config, request.source, request.progress,
                                          published is not None)
    for complaint in complaints:
        log.warning("%s", complaint)
    if unrecorded is not None:
        # Claims would name the last scan's profile (its USE, its tree) for
        # this scan's packages: better no change at all.
        raise SwarmError(f"the scan ran, but what it read cannot be recorded as the build "
                         f"profile drones build with: {unrecorded}; nothing was changed")
    result = apply_scan(conn, merge_list, request.source or " ".join(config.scan.command),
                        clock_now(), dry_run=request.dry_run, force=request.force,
                        verdict=Verdict(published, consulted or request.consulted_binhost),
                        profile=config.profile, binhost=config.binhost_of(config.profile))
    if not request.dry_run:
        if snap is not None:
            with db.write(conn):
                profile.record_scan(conn, config, snap, inputs, clock.iso(clock_now()))
            # Once recorded: the bundle it replaced is served no more.
            for digest in profile.prune_bundles(conn, config):
                log.info("deleted the build profile bundle %s: no profile builds with it now",
                         digest)
        # What the rules match and packages require, for the new queue (and
        # the profile just recorded): matched while the database is free.
        exclude.refresh(conn, config, clock_now())
    return result


def _targets_now(config: Config, request: Request) -> dict[str, profile.Target]:
    """What each profile this run scans after the first builds for now, if it shares its
    binhost.

    Each scan is checked against these, not against their last scans: a
    change made to every profile of a binhost at once is not refused.
    """
    if request.source:
        return {}
    found = {}
    for name in request.profiles[1:]:  # (the first is scanned before any other)
        binhost = config.binhost_of(name)
        if sum(config.binhost_of(other) == binhost for other in config.profile_names()) > 1:
            with contextlib.suppress(SwarmError):  # its own scan will say what is wrong
                found[name] = profile.current_target(
                    portageenv.scan_environment(config.for_profile(name)))
    return found


def same_build_target(conn, config: Config, snap: profile.Snapshot,
                      upcoming: dict[str, profile.Target]) -> None:
    """Refuse a profile whose CHOST, ARCH or compiler flags are not those of another profile
    on its binhost (UPCOMING: as they are now, for the profiles this run scans later; the
    others' as their last scan recorded them).

    Profiles of one binhost share a build they want with the same USE, and
    the binhost's clients pick a build by USE, never by compiler flags: one
    binhost, one target. (swarm-sync also checks a binhost's builds against
    one CHOST, and a build both want could go to no drone.)
    """
    binhost = config.binhost_of(config.profile)
    others = {**profile.recorded_targets(conn), **upcoming}
    for name in config.profile_names():
        if name == config.profile or name not in others or config.binhost_of(name) != binhost:
            continue
        differ = snap.target.differences(others[name])
        if differ:
            mine, theirs = (", ".join(f'{key} "{target.value(key)}"' for key in differ)
                            for target in (snap.target, others[name]))
            raise SwarmError(
                f"profile {config.profile} builds with {mine} but profile {name}, "
                f"on the same binhost {binhost}, with {theirs}: a binhost's "
                "clients pick a build by USE, never by compiler flags (nor CHOST), so its "
                "profiles must agree on them; give one of them a binhost of its own "
                "([binhosts.NAME])")


@contextlib.contextmanager
def _held_back(logger: logging.Logger):
    """Collect LOGGER's records as text instead of printing them."""
    held: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            held.append(record.getMessage())

    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def merge_list_of(config: Config, source: str | None, progress: bool,
                  published: bool) -> tuple[MergeList, bool]:
    """The parsed merge list, from SOURCE (a saved scan) or from the scan command; and
    whether it asked the binhost."""
    consulted = False
    if source:
        text = _read_source(source)
    else:
        scan = config.scan
        environment = dict(scan.environment)
        consulted = consults_binhost(scan.command)
        if consulted:
            # The swarm's binhost, from the one config: not written twice.
            environment.setdefault("PORTAGE_BINHOST", config.binhost.url)
        text, errors = run_emerge(scan.command, environment, scan.timeout, progress)
        for line in filter(str.strip, errors.splitlines()):
            log.warning("emerge: %s", line)
        if consulted and BINHOST_UNREADABLE in errors:
            if published:
                raise SwarmError(
                    f"the scan could not read the binhost's index at "
                    f"{environment['PORTAGE_BINHOST']}, so its list does not say what is "
                    "published; nothing was changed (is the web server up? binhost.url?)")
            consulted = False  # nothing published yet: nothing to weigh
    merge_list = parse_merge_list(text)
    for line_no, note in merge_list.notes:
        log.info("line %d is not a merge-list row: %s", line_no, note)
    for row in merge_list.rows:
        if row.kind == "blocks":
            log.warning("blocker (%s): %s", "satisfied" if row.satisfied else "unsatisfied",
                        row.detail or row.blocker)
        elif row.kind in ("uninstall", "nomerge"):
            log.info("%s row, not queued: %s", row.kind, row.cpv)
    return merge_list, consulted


def _read_source(source: str) -> str:
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as stream:
                data = stream.read()
    except OSError as exc:
        raise SwarmError(f"cannot read {source}: {exc.strerror}", ExitCode.USAGE) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{source} is not text: is it emerge --pretend output?") from None
