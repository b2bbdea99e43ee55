"""swarm-sync: publish staging to the binhost, from cron."""

from __future__ import annotations

import logging
import sys

import click

from .. import clock
from ..errors import ExitCode, SwarmError, TryLater
from ..output import emit_json
from .common import CONTEXT, SwarmCommand, config_option, json_option, pass_run, run, verbosity_options

log = logging.getLogger(__name__)


@click.command(cls=SwarmCommand, context_settings=CONTEXT)
@config_option
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be done; do nothing.")
@click.option("--pending", is_flag=True,
              help="Publish while drones' reports are pending, waiting for a running swarm-sync "
                   "first (what a report starts in the background); exit at once if another "
                   "waits already.")
@json_option
@verbosity_options
@pass_run
def cli(run_, dry_run, pending, as_json, verbose, quiet):
    """Publish received packages from staging to the binhost.

    Under an exclusive lock file (a second run exits 75 at once), for every
    'received' package: copy the staged file into binhost.path/.incoming/
    and verify that copy (size and sha256 as the drone reported, a complete
    gpkg whose Manifest matches, the CPV in its metadata), sign it if
    binhost.gpg_key is set, rename it into place under a never-reused
    CAT/PN/PF-BUILD_ID.gpkg.tar name, rewrite Packages and Packages.gz once
    with Portage's own index code (temporary names, then rename; TIMESTAMP
    bumped; superseded builds of the same package and slot dropped), mark
    the packages 'synced' and clear them from staging. A file that fails
    verification goes to staging/quarantine/ and its package back to
    'needed'. Superseded files are deleted after binhost.grace_seconds. With
    binhost.rsync_target set, the binhost is then mirrored there: files
    first, the index last.

    A run killed at any point leaves an index that lists only complete
    files; the next run finishes the job. Quiet with -q when all is well:
    errors go to stderr and to orchestrator.log_file.

    Exit codes: 0 done (also nothing to do), 1 a problem (quarantined
    packages, rsync failed), 2 config error, 75 another swarm-sync is running.

    \b
    Crontab (cron/crontab):
      */2 * * * *  swarm-sync --quiet
    \b
    Examples:
      swarm-sync -v          # explain each step
      swarm-sync --dry-run   # what would be published
    """
    from .. import sync

    config = run_.config()
    # A progress line only for a person watching: never from cron or a pipe.
    progress = _progress_line if sys.stderr.isatty() and not quiet else None
    try:
        result = (sync.publish_pending(config, clock.utcnow) if pending else
                  sync.publish(config, clock.utcnow(), dry_run=dry_run, progress=progress))
    except TryLater:
        if quiet:  # cron: the run that holds the lock does the work
            sys.exit(int(ExitCode.TEMPFAIL))
        raise
    finally:
        if progress:
            sys.stderr.write("\r\033[K")  # the progress line gives way to what follows
    if as_json:
        emit_json({**result.to_dict(), "dry_run": dry_run})
    elif not quiet:
        verb = "would publish" if dry_run else "published"
        for cpv in result.published:
            click.echo(f"{verb} {cpv}")
        for path in result.deleted:
            click.echo(f"{'would delete' if dry_run else 'deleted'} superseded {path}")
    for path in result.superseded:
        log.info("superseded, deleted after the grace period: %s", path)
    if result.quarantined:
        names = ", ".join(cpv for cpv, _ in result.quarantined)
        if dry_run:
            raise SwarmError(f"would quarantine {len(result.quarantined)} package(s): {names}")
        raise SwarmError(f"quarantined {len(result.quarantined)} package(s): {names} "
                         "(see staging/quarantine/ and the history)")


def _progress_line(done: int, total: int, cpv: str) -> None:
    sys.stderr.write(f"\r\033[Kswarm-sync: checking {done}/{total} {cpv}")
    sys.stderr.flush()


def main():
    run(cli)
