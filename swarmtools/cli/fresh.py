"""swarm-fresh: fill the queue from emerge --pretend --emptytree @world."""

from __future__ import annotations

import sys

import click

from .. import clock, scan
from ..output import emit_json, emit_table
from .common import CONTEXT, SwarmCommand, config_option, json_option, pass_run, run, verbosity_options


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
@click.option("--resolve/--no-resolve", "then_resolve", default=None,
              help="Then run swarm-resolve, or not [default: scan.resolve, true: claims wait "
                   "for dependencies from the first]; skipped, with a warning, while another "
                   "runs.")
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

    Then swarm-resolve runs (scan.resolve; --no-resolve skips it), so
    drones get a package only once its build-time dependencies are
    published, from the first claim on; a dry run resolves nothing.

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
      swarm-fresh                      # run the scan, update the queue, resolve
      swarm-fresh --from world.txt -n  # what would this saved scan change?
      swarm-fresh --if-changed -q      # from cron: scan only after a change
      emerge -pev --color=n @world | swarm-fresh --from - --json | jq .added
    """
    config = run_.config()
    names = scan.profiles_to_scan(config, list(profile_names), source, if_changed)
    resolve = config.scan.resolve if then_resolve is None else then_resolve
    request = scan.Request(names, source, dry_run, force, consulted_binhost, if_changed,
                           resolve, progress=sys.stderr.isatty() and not quiet)
    # Open the database first: a config or schema problem should not wait for emerge.
    conn = run_.database(create=True)
    outcome = scan.run(config, conn, request, clock.utcnow)
    if outcome is None:  # --if-changed, and another scan runs
        return
    forgotten, results = outcome.forgotten, outcome.profiles
    if not results:  # --if-changed, and nothing changed
        if as_json:
            emit_json({"scanned": False, **({"forgotten": forgotten.retired}
                                            if forgotten.retired else {})})
        return
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


def main():
    run(cli)
