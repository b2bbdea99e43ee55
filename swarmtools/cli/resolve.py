"""swarm-resolve: the dependency graph, what gates each claim, and priorities."""

from __future__ import annotations

import sys

import click

from .. import clock, resolve
from ..errors import ExitCode, TryLater
from ..output import emit_json
from .common import CONTEXT, SwarmCommand, config_option, json_option, pass_run, run, verbosity_options


@click.command(cls=SwarmCommand, context_settings=CONTEXT)
@config_option
@json_option
@verbosity_options
@pass_run
def cli(run_, as_json, verbose, quiet):
    """Compute the queue's dependency graph, what gates each claim, and priorities.

    For every queued package, reads its DEPEND, BDEPEND, RDEPEND, PDEPEND and
    IDEPEND with Portage (the repository's md5-cache), applies the package's
    USE from the scan, resolves || groups to what the queue holds and
    matches the atoms against the queue. Then:

    \b
      gating     a package is handed out only when its build-time
                 dependencies and their runtime dependencies are published
                 (the drone installs them as binaries, builds with
                 --buildpkgonly); PDEPEND and the cycles Portage broke in
                 its merge order never gate
      priority   the longest chain of expected build time waiting on each
                 package (swarm's own build times, resolve.emerge_logs, else
                 resolve.default_seconds): long chains go first

    Reduced dependencies are cached by identity (CPV, repository, USE, the
    ebuild's metadata hash): after a tree sync only what changed is read
    again (--json: recomputed vs cached). The queue stays usable meanwhile;
    a package swarm-resolve has not seen goes in merge order, its drone
    reporting any missing binary dependency instead of compiling it.

    Exit codes: 0 done, 1 failed, 2 config error, 75 another swarm-resolve
    is running.

    \b
    Examples:
      swarm-resolve -v
      swarm-resolve --json | jq .recomputed
      swarm-fresh                    # a scan, then this (scan.resolve; --no-resolve: not)
    """
    try:
        result = resolve.run(run_.config(), clock.utcnow())
    except TryLater:
        if quiet:
            sys.exit(int(ExitCode.TEMPFAIL))
        raise
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        r = result
        click.echo(f"{r.packages} packages: {r.recomputed} read, {r.cached} cached, "
                   f"{r.rematched} matched anew; {r.edges} edges, {r.requires} waits, "
                   f"{len(r.cycles_broken)} cycle edges broken; {r.seconds:.2f} s")


def main():
    run(cli)
