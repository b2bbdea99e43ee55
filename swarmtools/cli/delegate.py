"""swarm-delegate: heartbeats, claims, reports and leases; the drones' ssh gateway."""

from __future__ import annotations

import sys

import click

from .. import clock, delegate, exclude, gateway, verbs
from ..output import emit_json
from ..packages import FailureKind
from .common import CONTEXT, SwarmGroup, config_option, json_option, pass_run, run


def drone_option(f):
    return click.option("--drone", required=True, metavar="NAME",
                        help="The drone acting: a [drones.NAME] table of the config.")(f)


@click.group(cls=SwarmGroup, context_settings=CONTEXT)
def cli():
    """Hand packages to drones, one drone each, and take their results.

    Drones call these verbs over ssh (or locally on a single host); people
    call them to see or fix things by hand. Every change is one transaction
    and one event in the history.

    \b
      heartbeat  record a drone's facts (JSON on stdin), extend its leases
      claim      take the best eligible package (nothing printed: none)
      report     a build's result: --ok --file PKG, or --failed [--log LOG]
      release    give a lease back
      profile    the Portage configuration drones build with (by digest or name)
      expire     return leases past expiry and finished back-offs to 'needed'
      unground   let a grounded drone claim again (people only)
      gateway    the forced command for a drone's key in authorized_keys

    A drone's features (cuda, multilib, arch, chost) come from its
    heartbeat facts and are the drone's word, checked by nobody: a drone's
    key is trust in that host to build what it claims (swarm-sync checks
    what it uploads, USE, CHOST and compiler flags, not how it was built).

    \b
    Example authorized_keys line on the orchestrator, one a drone (sshd's
    PATH need not find swarm-delegate: swarm-config render authorized-keys
    prints the lines with this install's path):
      command="/usr/bin/swarm-delegate gateway --drone d1",restrict ssh-ed25519 AAAA... root@d1
    """


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@pass_run
def heartbeat(run_, drone, as_json):
    """Record a drone's facts and extend the leases it holds.

    Reads one JSON object on stdin (at most 64 KiB): arch, chost, cflags,
    abi_x86, cuda, jobs, load, free_disk, config_digest, version
    (swarm-drone sends them; an idle drone sends them with its claim, a
    building one every delegate.heartbeat_seconds, by default a third of
    delegate.lease_seconds). A drone is online while it was heard from
    within delegate.online_seconds or holds a live lease. A fact of the
    wrong type (a list for config_digest, NaN) is refused (exit 2).

    \b
    Example:
      echo '{"arch": "amd64"}' | swarm-delegate heartbeat --drone d1
    """
    verbs.run("heartbeat", run_.config(), drone, as_json=as_json)


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.option("--limit", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Claim up to this many packages, one transaction each.")
@click.option("--idle-info", is_flag=True,
              help='When nothing is eligible, say so: {"cpv": null, "in_progress": N, '
                   '"retry_soon": R, "ask_again_seconds": S}, N the packages being built or '
                   "published (work that may make more eligible), R those whose back-off ends "
                   "within delegate.idle_max_seconds, both as the claim saw them; S when to "
                   "ask again (null: at the drone's own back-off).")
@click.option("--heartbeat", is_flag=True,
              help="Read the drone's heartbeat facts on stdin (as `heartbeat` does) and record "
                   "them first: an idle drone's heartbeat rides on its claim, one ssh session.")
@pass_run
def claim(run_, drone, as_json, limit, idle_info, heartbeat):
    """Take the best eligible package for a drone, under a lease.

    Eligible: needed, still in the scan, not in a retry back-off, not held
    back from this drone, (once swarm-resolve has seen it) everything its
    build installs already published, no swarm-exclude rule covering this
    drone, and no feature required that the drone lacks (multilib, cuda,
    arch:ARCH, [[route]] features). A grounded drone's claim is refused
    (exit 1) with the reason and until when. Best (delegate.policy): the
    longest chain first, placed on the drone that finishes it soonest; or
    plain priority, then merge order. Expired leases and finished back-offs
    are returned to 'needed' first; a lease the drone holds but did not name
    in its last heartbeat is handed back to it. Prints
    {"cpv", "slot", "subslot", "repo", "use", "lease_until", "attempts"}
    (one line a package with --limit; with --heartbeat also
    "config_matches"); prints nothing and exits 0 when nothing is
    eligible: the drone waits and asks again. Its wait doubles from
    delegate.poll_seconds up to delegate.idle_max_seconds; the answer's
    ask_again_seconds cuts it short when work may soon become eligible,
    never below what the fleet's idle drones can afford (about one idle
    claim a second, fleet-wide).

    \b
    Example:
      swarm-delegate claim --drone d1 --json | jq -r .cpv
    """
    verbs.run("claim", run_.config(), drone, as_json=as_json, limit=limit, idle_info=idle_info,
              heartbeat=heartbeat)


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.argument("cpv")
@click.option("--ok", is_flag=True, help="The build succeeded.")
@click.option("--failed", is_flag=True, help="The build failed.")
@click.option("--file", "file", metavar="PATH",
              help="With --ok: the binary package, relative to staging/DRONE/.")
@click.option("--size", type=click.IntRange(0, 2**62), help="With --ok: its size as the drone saw it.")
@click.option("--sha256", help="With --ok: its sha256 as the drone saw it.")
@click.option("--log", metavar="PATH", help="With --failed: the build log, relative to staging/DRONE/.")
@click.option("--kind", type=click.Choice([str(k) for k in FailureKind]),
              help="With --failed: what failed (default build; stalled: no progress; "
                   "missing-binary-dependency: the package waits, no attempt counted; "
                   "environment, fetch: the drone's trouble, no attempt counted).")
@click.option("--missing", metavar="CPV,...",
              help="With --kind missing-binary-dependency: the dependencies not on the binhost.")
@pass_run
def report(run_, drone, as_json, cpv, **options):
    """Report the result of a build the drone holds a lease on.

    --ok --file PATH: the binary package was uploaded to staging/DRONE/PATH;
    its name must be that of CPV, and --size/--sha256 (when given) must
    match what arrived. The package becomes 'received'.

    --failed [--log PATH]: the package becomes 'failed', the attempt is
    counted, the log is kept under state_dir/logs/CPV/, and it is handed out
    again after delegate.retry_seconds, doubled for each further failure.
    Failure memory may exclude it for the drone's build class (answer:
    "excluded"), and a drone failing exclude.ground_after builds in a row is
    grounded ("grounded": until when). --kind environment (a full disk) or
    fetch: the drone's trouble, not the package's: needed again at once for
    other drones, no attempt counted, nothing excluded.
    With --kind missing-binary-dependency --missing CPV,...: the drone found
    dependencies not on the binhost (it builds nothing but what it claimed):
    the package is needed again, counts no attempt, and waits for those.

    \b
    Examples:
      swarm-delegate report --drone d1 app-misc/foo-1.0 --ok --file app-misc/foo/foo-1.0-1.gpkg.tar
      swarm-delegate report --drone d1 app-misc/foo-1.0 --failed --log logs/foo-1.0.log
    """
    verbs.run("report", run_.config(), drone, as_json=as_json, cpv=cpv, **options)


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.option("--because", type=click.Choice(sorted(delegate.GIVE_BACK)),
              help="The drone cannot build it as the scan asked: " + "; ".join(
                  f"{k}: {v}" for k, v in delegate.GIVE_BACK.items())
              + ". It is then held from the package for delegate.idle_max_seconds.")
@click.option("--found", metavar="TEXT", help="What the drone found (for the history).")
@click.argument("cpv")
@pass_run
def release(run_, drone, as_json, cpv, because, found):
    """Give a lease back: the package is 'needed' again at once.

    No attempt is counted: giving back is never the package's failure.

    \b
    Examples:
      swarm-delegate release --drone d1 app-misc/foo-1.0
      swarm-delegate release --drone d1 app-misc/foo-1.0 --because tree --found gentoo=timestamp:...
    """
    verbs.run("release", run_.config(), drone, as_json=as_json, cpv=cpv, because=because,
              found=found)


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.argument("which", metavar="DIGEST|NAME")
@pass_run
def profile(run_, drone, as_json, which):
    """Print a build profile's Portage configuration bundle (base64 of a tar).

    Claims name the profile's digest; a drone fetches the bundle once per
    digest and builds with it as its PORTAGE_CONFIGROOT (swarm-fresh wrote
    it, under state_dir/profiles/). By NAME ([profiles.NAME], or default):
    the profile's last scan, with its record ("profile") and its binhost
    ("binhost"), as swarm-drone --base asks for it.

    \b
    Examples:
      swarm-delegate profile --drone d1 --json 3f2a...e1 | jq -r .tar | base64 -d | tar t
      swarm-delegate profile --drone d1 --json default | jq .profile.chost
    """
    verbs.run("profile", run_.config(), drone, as_json=as_json, which=which)


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when all is well (cron).")
@pass_run
def expire(run_, as_json, quiet):
    """Return leases past expiry and finished back-offs to 'needed'.

    Every claim does this first; run it from cron too so that status stays
    true while no drone is asking.

    \b
    Example (crontab):
      */5 * * * * swarm-delegate expire --quiet
    """
    result = delegate.expire(run_.database(), clock.utcnow())
    if as_json:
        emit_json(result)
    elif not quiet:
        click.echo(f"{result['expired']} lease(s) expired, {result['retried']} back-off(s) over")


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@pass_run
def unground(run_, drone, as_json):
    """Let a grounded drone claim again, before its grounding ends.

    A drone whose builds fail exclude.ground_after times in a row (a broken
    toolchain, a full disk) is grounded for exclude.ground_seconds: its
    claims are refused and those failures count against no package.
    swarm-status shows grounded drones and until when. Fix the drone, then
    lift it here (not a drone verb: the gateway refuses it).

    \b
    Example:
      swarm-delegate unground --drone d1
    """
    result = exclude.unground(run_.database(), run_.config(), drone, clock.utcnow())
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{drone}: may claim again")


@cli.command("gateway", context_settings=CONTEXT)
@click.option("--config", "config_path", metavar="PATH",
              help="Config file [default /etc/swarmtools/swarm.toml; SWARM_CONFIG is ignored].")
@drone_option
def serve_gateway(config_path, drone):
    """The ssh forced command for one drone's key (not for people).

    Reads SSH_ORIGINAL_COMMAND. Allows `swarm-delegate heartbeat|claim|
    report|release|profile` (always as --drone NAME, with only the options those
    verbs need) and `rsync` uploads into staging/NAME/ (no '..', no absolute
    paths, no symlinks, no other rsync options); refuses everything else
    with a message and exit 2. Nothing goes through a shell.

    \b
    No SWARM_* variable is read (sshd may let a client set some): the
    config is the one --config names, else /etc/swarmtools/swarm.toml.

    \b
    In ~swarm/.ssh/authorized_keys on the orchestrator, one line a drone, with
    the absolute path (swarm-config render authorized-keys prints them):
      command="/usr/bin/swarm-delegate gateway --drone d1",restrict ssh-ed25519 AAAA... root@d1
    """
    sys.exit(gateway.main(["--drone", drone, *(["--config", config_path] if config_path else [])]))


def main():
    run(cli)
