"""swarm-release: dated binhost snapshots that clients pin, promote and roll back."""

from __future__ import annotations

import sys

import click

from .. import clock, release
from ..output import emit_json, emit_ndjson, emit_table
from .common import CONTEXT, SwarmGroup, config_option, json_option, pass_run, run, verbosity_options, who


@click.group(cls=SwarmGroup, context_settings=CONTEXT)
def cli():
    """Freeze the binhost as dated releases; point channels at them.

    The live binhost changes every time swarm-sync publishes: right for most
    days, until a broken build reaches every client within minutes. A
    release is a frozen, verified copy of the binhost that clients can pin:
    hardlinks of the published files (no copies) under
    binhost.releases_path/NAME/, with their own Packages index and a
    release.json (time, package count, bytes, the queue's identities, the
    scan). A release never changes once made.

    Clients pin a channel instead of the live binhost: RELEASES_URL/stable
    (print its binrepos.conf entry with swarm-config binrepos --channel
    stable). A channel is one symlink, swapped with rename(): a client sees
    the old release or the new one, never a mix, and never an empty
    channel, wherever a command is stopped. RELEASES_URL/latest is the live
    binhost.

    One promote, rollback or prune runs at a time (lock
    state_dir/swarm-release.lock): a second waits for the first to finish,
    by hand as from cron, and exits 75 (try again later) after 10 minutes.

    \b
      create    freeze the binhost as a release (NAME: today's date, .N when taken)
      list      releases, and where each channel points
      promote   verify a release, then point a channel (stable) at it
      rollback  point a channel back at the release it served before
      diff      added, removed, upgraded and rebuilt packages between releases
      prune     remove old releases no channel ever pointed at

    \b
    Crontab (cron/crontab): a release each night when something changed
      30 3 * * *  swarm-release create --if-changed --quiet
    """


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@verbosity_options
@click.argument("name", required=False)
@click.option("--if-changed", is_flag=True,
              help="Do nothing (exit 0) when the newest release holds what the binhost lists now.")
@pass_run
def create(run_, as_json, verbose, quiet, name, if_changed):
    """Freeze the binhost as release NAME (default: today's date, YYYY.MM.DD[.N]).

    Waits for a running swarm-sync (its lock, up to 10 minutes), then
    hardlinks every file the binhost's index lists into
    binhost.releases_path/NAME/ and writes its Packages and Packages.gz with
    Portage's index code and its release.json. Signed packages stay signed:
    the files are the same. binhost.releases_path must be on the binhost's
    filesystem (hardlinks); on another one create refuses.

    \b
    Examples:
      swarm-release create                 # 2026.12.05 (then 2026.12.05.1, ...)
      swarm-release create --if-changed -q # from cron
    """
    info = release.create(run_.config(), run_.database(), clock.utcnow(), name, if_changed)
    if info is None:
        if not quiet:
            click.echo("unchanged: the newest release holds what the binhost lists", err=True)
        if as_json:
            emit_json({"created": None})
        return
    if as_json:
        emit_json({k: v for k, v in info.items() if k != "queue"})
    elif not quiet:
        click.echo(f"created release {info['name']}: {info['packages']} packages, "
                   f"{info['bytes']:,} bytes (hardlinks)")


@cli.command("list", context_settings=CONTEXT)
@config_option
@json_option
@pass_run
def list_(run_, as_json):
    """The releases, oldest first, and the channels pointing at them.

    \b
    Examples:
      swarm-release list
      swarm-release list --json | jq -r '.releases[-1].name'
    """
    config = run_.config()
    made = [{k: v for k, v in r.items() if k != "queue"} for r in release.releases(config)]
    channels = release.channels(config, clock.utcnow())
    if as_json:
        emit_json({"releases": made, "channels": channels})
        return
    pointing = {}
    for c in channels:
        pointing.setdefault(c["release"], []).append(c["channel"])
    emit_table([[r["name"], r["at"], r["packages"], f"{r['bytes']:,}",
                 ", ".join(pointing.get(r["name"], [])) or "-"] for r in made],
               ["release", "made", "packages", "bytes", "channels"])
    for c in channels:
        where = "the live binhost" if c["release"] is None else \
            f"{c['release']} since {c['since']} ({_age(c['age_seconds'])})"
        click.echo(f"{c['channel']}: {where}")


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.argument("name")
@click.option("--channel", default="stable", show_default=True, help="The channel to point.")
@pass_run
def promote(run_, as_json, name, channel):
    """Verify release NAME, then point CHANNEL at it.

    Refuses (exit 1, with every problem) unless every file its index lists
    is there with the size and digests the index says, its signatures are
    valid (when binhost.gpg_key is set), and no package in it has another
    identity (USE, slot, repository, CHOST) than the queue wants for that
    version now: a client with the profile's settings would not take it.
    The release must hold nothing else: a link (a web server that follows
    links would serve what it points at), or a file or directory its index
    does not list, is refused too, by name.

    Waits for a running promote, rollback or prune (up to 10 minutes, then
    exit 75: try again later).

    \b
    Examples:
      swarm-release promote 2026.12.05
      swarm-release promote 2026.12.05 --channel testing
    """
    moved = release.promote(run_.config(), run_.database(), name, channel, clock.utcnow(), who())
    _moved(moved, as_json)


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.option("--channel", default="stable", show_default=True, help="The channel to move back.")
@pass_run
def rollback(run_, as_json, channel):
    """Point CHANNEL back at the release it served before the current one.

    Each rollback steps back one promotion (verifying that release first);
    exit 1 when there is none. Waits for a running promote, rollback or
    prune (up to 10 minutes, then exit 75).

    \b
    Example:
      swarm-release rollback             # stable: back to the previous release
    """
    moved = release.rollback(run_.config(), run_.database(), channel, clock.utcnow(), who())
    _moved(moved, as_json)


def _moved(moved: dict, as_json: bool) -> None:
    if as_json:
        emit_json(moved)
    else:
        click.echo(f"{moved['channel']}: {moved['previous'] or 'nothing'} -> {moved['release']}")


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.argument("a")
@click.argument("b")
@pass_run
def diff(run_, as_json, a, b):
    """What changed from release A to release B.

    One line a package (CATEGORY/PN and SLOT): added, removed, upgraded,
    downgraded, or rebuilt (the same version, a new build) with why: a USE
    change, a sub-slot change, or a new build of the same version and USE.
    NDJSON with --json or when piped.

    \b
    Examples:
      swarm-release diff 2026.12.04 2026.12.05
      swarm-release diff 2026.12.04 2026.12.05 --json | jq -r 'select(.change == "rebuilt") | .to'
    """
    changes = release.diff(run_.config(), a, b)
    if as_json or not sys.stdout.isatty():
        emit_ndjson(changes)
    else:
        emit_table([[c["change"], f"{c['cp']}:{c['slot']}", c["from"] or "-", c["to"] or "-",
                     c["why"]] for c in changes], ["change", "package", "from", "to", "why"])


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.option("--keep", type=click.IntRange(1, 10**6),
              help="Releases to keep (default binhost.releases_keep).")
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be removed; remove nothing.")
@pass_run
def prune(run_, as_json, keep, dry_run):
    """Remove old releases: all but the newest KEEP, sparing any a channel ever pointed at.

    A release a channel served stays (a rollback may go back to it). The
    binhost's files are not touched: a release's files are hardlinks.
    Waits for a running promote or rollback (up to 10 minutes, then exit
    75), so the release it is pointing a channel at is never removed.

    \b
    Examples:
      swarm-release prune --keep 7
      swarm-release prune -n
    """
    config = run_.config()
    removed = release.prune(config, run_.database(), keep or config.binhost.releases_keep,
                            clock.utcnow(), dry_run)
    if as_json:
        emit_json({"removed": removed, "dry_run": dry_run})
    else:
        for name in removed:
            click.echo(f"{'would remove' if dry_run else 'removed'} {name}")


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds // 3600} h" if seconds >= 7200 else f"{seconds // 60} min"


def main():
    run(cli)


if __name__ == "__main__":
    sys.exit(main())
