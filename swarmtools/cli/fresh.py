"""swarm-fresh: fill the queue from emerge --pretend --emptytree @world."""

from __future__ import annotations

import contextlib
import logging
import sys

import click

from pathlib import Path

from .. import clock, db, exclude, portageenv, profile, resolve
from ..binhost import read_index
from ..emerge import BINHOST_UNREADABLE, ParseError, consults_binhost, parse_merge_list, run_emerge
from ..errors import ExitCode, SwarmError, TryLater
from ..output import emit_json, emit_table
from ..queue import Verdict, apply_scan, forget
from .common import CONTEXT, SwarmCommand, config_option, json_option, pass_run, run, verbosity_options

log = logging.getLogger(__name__)


@click.command(cls=SwarmCommand, context_settings=CONTEXT)
@config_option
@click.option("--from", "source", metavar="FILE",
              help="Read saved emerge output from FILE ('-': stdin) instead of running emerge.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would change; change nothing.")
@json_option
@click.option("--force", is_flag=True,
              help="Apply a scan that would retire more than half of the queue (or rebuild "
                   "more than half of what is published).")
@click.option("--consulted-binhost", is_flag=True,
              help="With --from: the saved scan asked the swarm's binhost (--getbinpkg), so its "
                   "[ebuild rows for published packages mean Portage would not use them.")
@click.option("--resolve", "then_resolve", is_flag=True,
              help="Then run swarm-resolve (skipped, with a warning, while another runs).")
@click.option("--if-changed", is_flag=True,
              help="Scan only when the Portage configuration, the world file or a repository "
                   "changed since the last scan (cron, postsync); exit 0 quietly while another "
                   "scan runs.")
@click.option("--profile", "profile_names", metavar="NAME", multiple=True,
              help="Scan only this build profile ([profiles.NAME]; repeatable). Default: every "
                   "profile, one after the other.")
@verbosity_options
@pass_run
def cli(run_, source, dry_run, as_json, force, consulted_binhost, then_resolve, if_changed,
        profile_names, verbose, quiet):
    """Queue every package the world needs, from a full emerge scan.

    Runs the config's scan.command (by default `emerge --pretend --emptytree
    --verbose --color=n --with-bdeps=y --usepkg=y --getbinpkg=y @world`,
    asking the swarm's binhost, binhost.url, what is already built) or reads
    its saved output, and brings the queue in line with it, in one
    transaction:

    \b
      [ebuild ...] rows      new packages are queued (needed); a package whose
                             version, slot, repository or USE changed is
                             queued again (requeued); the rest keep their
                             state and history (unchanged)
      [binary ...] rows      on the swarm's binhost (its index lists that CPV
                             with that identity): synced, never built; a
                             binary from anywhere else counts as [ebuild
      gone from the list     retired: kept, with their history
      blockers, uninstalls   reported, not queued

    Portage's verdict wins: when the scan asked the binhost, an [ebuild row
    for a package the queue calls synced means Portage would not use the
    published build (other USE, say), and the package is queued again, with
    the reason in its history. A scan that could not read the binhost's
    index changes nothing (its list would be from a stale copy).

    A row it does not understand, a truncated or empty list, a failed emerge,
    or a scan that would retire more than half of the queue (a broken world
    file makes emerge list nothing, and exit 0) or rebuild more than half of
    what is published stops it before anything changes (exit 1; --force
    applies it anyway). A package that comes back after being retired keeps
    its row, history and, if unchanged, its state. While emerge runs, a
    terminal shows that it is working; cron sees nothing. Prints each change
    and the counts; --json prints {"added", "requeued", "retired",
    "unchanged", "binary", "total"}.

    Each scan also records the build profile drones build with: the scan's
    Portage configuration (PORTAGE_CONFIGROOT/etc/portage, packed as a bundle
    named by its sha256) and the state of each ebuild repository it read
    (metadata/timestamp.chk, else the git commit, else a digest of the
    files). --if-changed compares those, the world file and the scan command
    with the last scan's and runs no emerge when nothing changed: run it from
    cron every few minutes (the postsync hook scans without it). One scan
    runs at a time (lock file state_dir/swarm-fresh.lock): another waits for
    it, or with --if-changed leaves the work to it and exits 0. A scan whose
    build profile cannot be recorded changes nothing (exit 1).

    Several build profiles ([profiles.NAME] tables: a PORTAGE_CONFIGROOT,
    the sets it wants, the binhost it publishes to) are scanned one after
    the other; each changes only what it wants. Profiles that publish to one
    binhost share a build they want with the same identity (counted
    "shared"); a package one of them wants with another USE or version is
    built again, and both builds are published there side by side (a client
    gets the one that matches its settings). With several profiles, --json
    adds "profiles": {NAME: counts}. A saved scan (--from) is one profile's:
    name it with --profile.

    Exit codes: 0 done (or, with --if-changed, nothing changed or another scan
    runs), 1 scan failed or not understood, 2 usage or config error, 75
    database busy (try again).

    \b
    Examples:
      swarm-fresh                      # run the scan, update the queue
      swarm-fresh --from world.txt -n  # what would this saved scan change?
      swarm-fresh --if-changed -q      # from cron: scan only after a change
      emerge -pev --color=n @world | swarm-fresh --from - --json | jq .added
    """
    config = run_.config()
    if if_changed and source:
        raise SwarmError("--if-changed looks at what a scan would read; it does not go with "
                         "--from", ExitCode.USAGE)
    names = list(dict.fromkeys(profile_names)) or config.profile_names()
    for name in names:
        config.for_profile(name)  # an unknown name is a config error before anything runs
    if source and len(names) > 1:
        raise SwarmError(f"--from is the scan of one profile; name it with --profile (one of "
                         f"{', '.join(names)})", ExitCode.USAGE)
    # Open the database first: a config or schema problem should not wait for emerge.
    conn = run_.database(create=True)
    with contextlib.ExitStack() as held:
        # One scan at a time. An overlapping hook (--if-changed) leaves it to
        # the running one; a scan asked for by hand waits for it to end.
        try:
            held.enter_context(db.run_lock(config.state_dir / "swarm-fresh.lock",
                                           config.database, "swarm-fresh",
                                           timeout=0 if if_changed else config.scan.timeout))
        except TryLater as exc:
            if not if_changed:
                raise
            log.info("%s: that scan will do", exc)
            return
        # What the config no longer wants goes first, scan or not.
        forgotten = forget(conn, config.profile_names(), config.binhost_names(),
                           clock.utcnow(), dry_run=dry_run)
        for change in forgotten.changes:
            log.warning("retired %s: %s", change.cpv, change.detail)
        results = {}
        for name in names:
            result = _fresh(config.for_profile(name), conn, source, dry_run, force,
                            consulted_binhost, if_changed, quiet)
            if result is not None:
                results[name] = result
    if not results:  # --if-changed, and nothing changed
        if as_json:
            emit_json({"scanned": False, **({"forgotten": forgotten.retired}
                                            if forgotten.retired else {})})
        return
    if then_resolve and not dry_run:
        try:
            resolved = resolve.run(config, clock.utcnow())
            log.info("resolved: %s", resolved.to_dict())
        except TryLater as exc:
            log.warning("%s: the running swarm-resolve started before this scan; run it again", exc)
    several = len(config.profile_names()) > 1
    if as_json:
        answer = {**_summed([r.counts() for r in results.values()]),
                  "forgotten": forgotten.retired}
        if several:
            answer["profiles"] = {name: r.counts() for name, r in results.items()}
        emit_json({**answer, "dry_run": dry_run} if dry_run else answer)
    elif not quiet:
        for name, result in results.items():
            if result.changes:
                emit_table([[c.event, c.cpv, c.detail] for c in result.changes],
                           ["change", "cpv", "detail"])
            counts = ", ".join(f"{v} {k}" for k, v in result.counts().items()
                               if v or k != "shared")
            click.echo(("would change: " if dry_run else "")
                       + (f"profile {name}: " if several else "") + counts)


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(c[key] for c in counts) for key in counts[0]}


def _fresh(config, conn, source, dry_run, force, consulted_binhost, if_changed, quiet):
    """One profile's scan under the lock (CONFIG: its view, Config.for_profile): the
    ScanResult, or None when --if-changed found no change."""
    snap = inputs = unrecorded = None
    complaints: list[str] = []
    if not source:
        # What the scan reads, taken before it runs: a change during the
        # scan is seen by the next --if-changed.
        # Portage's complaints about its configuration are said once the scan
        # succeeded: when it fails, emerge's own error says it better.
        with _held_back(logging.getLogger(portageenv.__name__)) as complaints:
            try:
                snap = profile.snapshot(portageenv.scan_environment(config), config.profile)
            except (SwarmError, OSError) as exc:
                unrecorded = exc
        if snap is not None:
            _same_build_target(conn, config, snap)
            inputs = snap.inputs(config.scan.command, config.scan.environment,
                                 f"{config.binhost_of(config.profile)} {config.binhost.url}")
            last = profile.last_inputs(conn, snap.name)
            if if_changed and last and last[0] == inputs:
                log.info("profile %s: nothing changed since the scan at %s: not scanning",
                         config.profile, last[1])
                return None
    published = read_index(Path(config.binhost.path))  # refuses an index it cannot trust
    merge_list, consulted = _scan(config, source, quiet, published is not None)
    for complaint in complaints:
        log.warning("%s", complaint)
    if unrecorded is not None:
        # Claims would name the last scan's profile (its USE, its tree) for
        # this scan's packages: better no change at all.
        raise SwarmError(f"the scan ran, but what it read cannot be recorded as the build "
                         f"profile drones build with: {unrecorded}; nothing was changed")
    result = apply_scan(conn, merge_list, source or " ".join(config.scan.command),
                        clock.utcnow(), dry_run=dry_run, force=force,
                        verdict=Verdict(published, consulted or consulted_binhost),
                        profile=config.profile, binhost=config.binhost_of(config.profile))
    if not dry_run:
        with db.write(conn):  # what the rules match and packages require, for the new queue
            exclude.refresh(conn, config, clock.utcnow())
            if snap is not None:
                profile.record(conn, config.state_dir, snap, inputs, clock.iso(clock.utcnow()))
    return result


def _same_build_target(conn, config, snap) -> None:
    """Refuse a profile whose CHOST or ARCH is not that of another profile on its binhost:
    swarm-sync checks a binhost's builds against one CHOST, and a build both
    want could go to no drone."""
    binhost = config.binhost_of(config.profile)
    for other in conn.execute("SELECT name, chost, arch FROM profiles WHERE name != ?",
                              (config.profile,)):
        if (other["name"] in config.profile_names() and config.binhost_of(other["name"]) == binhost
                and (other["chost"], other["arch"]) != (snap.chost, snap.arch)):
            raise SwarmError(
                f"profile {config.profile} is for {snap.chost} ({snap.arch}) but profile "
                f"{other['name']}, on the same binhost {binhost}, is for {other['chost']} "
                f"({other['arch']}): give one of them a binhost of its own ([binhosts.NAME])")


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


def _scan(config, source: str | None, quiet: bool, published: bool):
    """The parsed merge list, from --from or from the scan command; did it ask the binhost?"""
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
        progress = sys.stderr.isatty() and not quiet
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
        data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
    except OSError as exc:
        raise SwarmError(f"cannot read {source}: {exc.strerror}", ExitCode.USAGE) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{source} is not text: is it emerge --pretend output?") from None


def main():
    run(cli)
