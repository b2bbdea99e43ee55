"""swarm-fresh: fill the queue from emerge --pretend --emptytree @world."""

from __future__ import annotations

import logging
import sys

import click

from pathlib import Path

from .. import clock, db, exclude, resolve
from ..binhost import read_index
from ..emerge import BINHOST_UNREADABLE, ParseError, consults_binhost, parse_merge_list, run_emerge
from ..errors import ExitCode, SwarmError, TryLater
from ..output import emit_json, emit_table
from ..queue import Verdict, apply_scan
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
@verbosity_options
@pass_run
def cli(run_, source, dry_run, as_json, force, consulted_binhost, then_resolve, verbose, quiet):
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

    Exit codes: 0 done, 1 scan failed or not understood, 2 usage or config
    error, 75 database busy (try again).

    \b
    Examples:
      swarm-fresh                      # run the scan, update the queue
      swarm-fresh --from world.txt -n  # what would this saved scan change?
      emerge -pev --color=n @world | swarm-fresh --from - --json | jq .added
    """
    config = run_.config()
    # Open the database first: a config or schema problem should not wait for emerge.
    conn = run_.database(create=True)
    published = read_index(Path(config.binhost.path))  # refuses an index it cannot trust
    merge_list, consulted = _scan(config, source, quiet, published is not None)
    result = apply_scan(conn, merge_list, source or " ".join(config.scan.command),
                        clock.utcnow(), dry_run=dry_run, force=force,
                        verdict=Verdict(published, consulted or consulted_binhost))
    if not dry_run:
        with db.write(conn):  # what the rules match and packages require, for the new queue
            exclude.refresh(conn, config, clock.utcnow())
    if then_resolve and not dry_run:
        try:
            resolved = resolve.run(config, clock.utcnow())
            log.info("resolved: %s", resolved.to_dict())
        except TryLater as exc:
            log.warning("%s: the running swarm-resolve started before this scan; run it again", exc)
    if as_json:
        emit_json({**result.counts(), "dry_run": dry_run} if dry_run else result.counts())
        return
    if quiet:
        return
    if result.changes:
        emit_table([[c.event, c.cpv, c.detail] for c in result.changes],
                   ["change", "cpv", "detail"])
    counts = ", ".join(f"{v} {k}" for k, v in result.counts().items())
    click.echo(("would change: " if dry_run else "") + counts)


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
