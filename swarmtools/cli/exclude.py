"""swarm-exclude: what is not built, or not on which drones."""

from __future__ import annotations

import logging
import sys

import click

from .. import clock, exclude
from ..errors import ExitCode, SwarmError
from ..output import emit_json, emit_ndjson, emit_table
from .common import CONTEXT, SwarmGroup, config_option, json_option, pass_run, run, who

log = logging.getLogger(__name__)


@click.group(cls=SwarmGroup, context_settings=CONTEXT)
def cli():
    """Keep packages from being built: everywhere, on one drone, or on one build class.

    A rule is a Portage atom, wildcards and repositories allowed, matched by
    Portage itself as in package.mask:

    \b
      media-video/nvidia-drivers     every version
      */*-bin                        every -bin package
      >=sys-devel/gcc-15             from version 15 on
      dev-lang/rust:*                every slot
      sys-apps/*::gentoo             a category, from one repository

    Rules come from three places: this command (source manual), the file
    named by exclude.file in the config (source file: one atom a line, #
    comments, kept in git; edit the file, not the database), and failure
    memory (source auto): a package that failed exclude.auto_failures times
    on drones of one build class (same CHOST and CFLAGS), on two of them at
    least, is excluded for that class, and everywhere once it failed so in
    every class (one drone alone never excludes a package). An automatic
    rule ends when the package changes (new version or USE) or after
    exclude.auto_days. Only build failures count; a full disk, a failed
    fetch or a missing binary dependency is the drone's trouble.

    A claim never hands a package to a drone a rule covers; swarm-status
    --why CPV says which rule keeps a package waiting.

    \b
      add       add rules (atoms as arguments, or - for one a line on stdin)
      remove    remove rules by id or atom
      list      the rules in force and how many queued packages each matches
      check     is CPV excluded, and by which rule? (exit 0 yes, 1 no, 2 bad)
    """


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.argument("atoms", nargs=-1, required=True, metavar="ATOM...|-")
@click.option("--reason", required=True, help="Why: shown by list, check and swarm-status --why.")
@click.option("--drone", metavar="NAME", help="Only for this drone (default: every drone).")
@click.option("--days", type=click.IntRange(1, 36500), help="The rule ends after this many days.")
@pass_run
def add(run_, as_json, atoms, reason, drone, days):
    """Add rules: each ATOM, or with - one atom a line from stdin (# comments).

    A bare CATEGORY/PF (app-misc/foo-1.0, as swarm-status --packages prints
    it) means that version: =app-misc/foo-1.0.

    All or nothing: an invalid atom is refused with its line number and no
    rule is added. A rule that matches nothing in the queue is added with a
    warning (it may match what a later scan brings).

    \b
    Examples:
      swarm-exclude add 'media-video/nvidia-drivers' --reason "licence: not ours to ship"
      swarm-exclude add '>=sys-devel/gcc-15' --drone d3 --reason "d3's kernel too old"
      swarm-status --packages --state failed | jq -r .cpv \\
          | swarm-exclude add - --reason "broken upstream, see bug 123"
    """
    config = run_.config()
    now = clock.utcnow()
    lines = list(_atoms(atoms))
    if not lines:
        raise SwarmError("no atom given (stdin had none)", ExitCode.USAGE)
    until = clock.later(now, days * 86400) if days else None
    added = exclude.add(run_.database(create=True), config, lines, reason, who(), now, drone,
                        until)
    idle = [rule for rule in added if not rule["matches"]]
    for rule in idle[:WARNINGS]:
        log.warning("warning: rule %s (%s) matches nothing in the queue", rule["id"],
                    rule["atom"])
    if len(idle) > WARNINGS:  # a list from elsewhere: one line, not fifty thousand
        log.warning("warning: and %d more rules match nothing in the queue",
                    len(idle) - WARNINGS)
    if as_json:
        emit_ndjson(added)
    else:
        for rule in added:
            click.echo(f"rule {rule['id']}: {rule['atom']} "
                       f"({'drone ' + drone if drone else 'every drone'}), "
                       f"{rule['matches']} queued package(s)")


# Rules that match nothing named one by one; the others counted.
WARNINGS = 10


def _atoms(arguments):
    """(line number, atom) of the arguments, or of stdin for '-'."""
    for position, argument in enumerate(arguments, 1):
        if argument != "-":
            yield position, argument
            continue
        for number, line in enumerate(sys.stdin, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                yield number, line


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.argument("selectors", nargs=-1, required=True, metavar="ID|ATOM...")
@pass_run
def remove(run_, as_json, selectors):
    """Remove manual or automatic rules by id (from list) or by atom.

    Rules of exclude.file are removed by editing the file. Exits 1 when no
    rule was removed.

    \b
    Examples:
      swarm-exclude remove 12
      swarm-exclude remove 'media-video/nvidia-drivers'
    """
    removed = exclude.remove(run_.database(), run_.config(), list(selectors), clock.utcnow())
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"{removed} rule(s) removed")
    if not removed:
        raise SwarmError(f"no manual or automatic rule {' '.join(selectors)}", ExitCode.FAILED)


@cli.command("list", context_settings=CONTEXT)
@config_option
@json_option
@click.option("--auto", "auto_only", is_flag=True, help="Only failure memory's rules.")
@pass_run
def list_rules(run_, as_json, auto_only):
    """The rules in force, oldest first, with the queued packages each matches.

    One line a rule: id, atom, scope (every drone, a drone, or a build class
    CHOST|CFLAGS), source (manual, file, auto), matches, who, when, until,
    reason. --json prints one object a line, with the kept log of the last
    failure behind an automatic rule ("log").

    \b
    Examples:
      swarm-exclude list
      swarm-exclude list --auto --json | jq -r '.atom + " " + .reason'
    """
    found = exclude.listing(run_.database(create=True), run_.config(), clock.utcnow(), auto_only)
    if as_json:
        emit_ndjson(found)
        return
    emit_table([[r["id"], r["atom"], r["scope"], r["source"], r["matches"], r["who"], r["at"],
                 r["until"] or "-", r["reason"]] for r in found],
               ["id", "atom", "scope", "source", "matches", "who", "at", "until", "reason"])


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.argument("cpv")
@click.option("--drone", metavar="NAME",
              help="For this drone (its build class from its last heartbeat); default: any rule "
                   "for any drone.")
@pass_run
def check(run_, as_json, cpv, drone):
    """Is CPV (CATEGORY/PF) excluded, and by which rule? Exits like grep.

    Prints each rule that matches CPV (for DRONE, if given) and exits 0;
    prints nothing and exits 1 when none does; exits 2 when CPV is not a
    package name and version, or a rule cannot be read. CPV need not be in
    the queue.

    \b
    Examples:
      swarm-exclude check media-video/nvidia-drivers-550.78 && echo excluded
      swarm-exclude check sys-devel/gcc-15.1.0 --drone d3 --json | jq .reason
    """
    config = run_.config()
    if drone is not None and drone not in config.drones:
        raise SwarmError(f"unknown drone '{drone}'", ExitCode.USAGE)
    found = exclude.matching(run_.database(create=True), config, cpv, drone, clock.utcnow())
    if as_json:
        emit_ndjson({**rule.to_dict(), "scope": rule.scope()} for rule in found)
    else:
        for rule in found:
            click.echo(f"{cpv}: excluded by {rule.label()} ({rule.source}) {rule.atom} for "
                       f"{rule.scope()}: {rule.reason}")
    sys.exit(0 if found else 1)


def main():
    run(cli)
