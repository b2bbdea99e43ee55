"""swarm-delegate: heartbeats, claims, reports and leases; the drones' ssh gateway."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import click

from .. import db
from .. import delegate as lib
from ..errors import ExitCode, SwarmError
from ..output import emit_json, emit_ndjson
from .common import CONTEXT, config_option, handle_errors, load_config, run


def drone_option(f):
    return click.option("--drone", required=True, metavar="NAME",
                        help="The drone acting: a [drones.NAME] table of the config.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, for jq.")(f)


def emit(as_json: bool, result: dict, text: str) -> None:
    """The result as JSON, or one line for people."""
    if as_json:
        emit_json(result)
    else:
        click.echo(text)


@contextmanager
def opened(config_path):
    """The config and an open database, closed afterwards."""
    config = load_config(config_path)
    conn = db.connect(config.database)
    try:
        yield config, conn
    finally:
        conn.close()


@click.group(context_settings=CONTEXT)
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
      expire     return leases past expiry and finished back-offs to 'needed'
      gateway    the forced command for a drone's key in authorized_keys

    \b
    Example authorized_keys line on the orchestrator, one a drone:
      command="swarm-delegate gateway --drone d1",restrict ssh-ed25519 AAAA... swarm@d1
    """


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@handle_errors
def heartbeat(config_path, drone, as_json):
    """Record a drone's facts and extend the leases it holds.

    Reads one JSON object on stdin: arch, chost, cflags, abi_x86, cuda,
    jobs, load, free_disk, config_digest, version (swarm-drone sends them).
    A drone is online while its last heartbeat is younger than
    delegate.online_seconds.

    \b
    Example:
      echo '{"arch": "amd64"}' | swarm-delegate heartbeat --drone d1
    """
    text = sys.stdin.read() if not sys.stdin.isatty() else ""
    try:
        facts = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise SwarmError(f"heartbeat facts are not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(facts, dict):
        raise SwarmError("heartbeat facts must be one JSON object", ExitCode.USAGE)
    with opened(config_path) as (config, conn):
        result = lib.heartbeat(conn, config, drone, facts)
    emit(as_json, result, f"{drone}: {result['leases_extended']} lease(s) extended to "
                          f"{result['lease_until']}")
    if not result["config_matches"] and "config_digest" in facts:
        click.echo(f"{os.path.basename(sys.argv[0])}: warning: drone {drone} runs another config "
                   "than the orchestrator's (config digests differ)", err=True)


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.option("--limit", type=click.IntRange(1), default=1, show_default=True,
              help="Claim up to this many packages, one transaction each.")
@handle_errors
def claim(config_path, drone, as_json, limit):
    """Take the best eligible package for a drone, under a lease.

    Eligible: needed, still in the scan, not in a retry back-off. Best:
    highest priority, then merge order. Expired leases and finished back-offs
    are returned to 'needed' first. Prints
    {"cpv", "slot", "subslot", "repo", "use", "lease_until", "attempts"}
    (one line a package with --limit); prints nothing and exits 0 when
    nothing is eligible: the drone sleeps and asks again.

    \b
    Example:
      swarm-delegate claim --drone d1 --json | jq -r .cpv
    """
    claimed = []
    with opened(config_path) as (config, conn):
        for _ in range(limit):
            job = lib.claim(conn, config, drone)
            if job is None:
                break
            claimed.append(job)
    if as_json:
        emit_ndjson(claimed)
    else:
        for job in claimed:
            click.echo(f"{job['cpv']}\tlease until {job['lease_until']}")


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.argument("cpv")
@click.option("--ok", "outcome", flag_value="ok", help="The build succeeded.")
@click.option("--failed", "outcome", flag_value="failed", help="The build failed.")
@click.option("--file", "file", metavar="PATH",
              help="With --ok: the binary package, relative to staging/DRONE/.")
@click.option("--size", type=int, help="With --ok: its size as the drone saw it.")
@click.option("--sha256", help="With --ok: its sha256 as the drone saw it.")
@click.option("--log", metavar="PATH", help="With --failed: the build log, relative to staging/DRONE/.")
@handle_errors
def report(config_path, drone, as_json, cpv, outcome, file, size, sha256, log):
    """Report the result of a build the drone holds a lease on.

    --ok --file PATH: the binary package was uploaded to staging/DRONE/PATH;
    its name must be that of CPV, and --size/--sha256 (when given) must
    match what arrived. The package becomes 'received'.

    --failed [--log PATH]: the package becomes 'failed', the attempt is
    counted, the log is kept under state_dir/logs/CPV/, and it is handed out
    again after delegate.retry_seconds, doubled for each further failure.

    \b
    Examples:
      swarm-delegate report --drone d1 app-misc/foo-1.0 --ok --file app-misc/foo/foo-1.0-1.gpkg.tar
      swarm-delegate report --drone d1 app-misc/foo-1.0 --failed --log logs/foo-1.0.log
    """
    if outcome is None:
        raise click.UsageError("say --ok or --failed")
    if outcome == "ok" and not file:
        raise click.UsageError("--ok needs --file")
    with opened(config_path) as (config, conn):
        if outcome == "ok":
            result = lib.report_built(conn, config, drone, cpv, file, size, sha256)
        else:
            result = lib.report_failed(conn, config, drone, cpv, log)
    emit(as_json, result, f"{cpv}: {result['status']}")


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@json_option
@click.argument("cpv")
@handle_errors
def release(config_path, drone, as_json, cpv):
    """Give a lease back: the package is 'needed' again at once.

    \b
    Example:
      swarm-delegate release --drone d1 app-misc/foo-1.0
    """
    with opened(config_path) as (config, conn):
        result = lib.release(conn, config, drone, cpv)
    emit(as_json, result, f"{cpv}: released")


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when all is well (cron).")
@handle_errors
def expire(config_path, as_json, quiet):
    """Return leases past expiry and finished back-offs to 'needed'.

    Every claim does this first; run it from cron too so that status stays
    true while no drone is asking.

    \b
    Example (crontab):
      */5 * * * * swarm-delegate expire --quiet
    """
    with opened(config_path) as (_, conn):
        result = lib.expire(conn)
    if as_json:
        emit_json(result)
    elif not quiet:
        click.echo(f"{result['expired']} lease(s) expired, {result['retried']} back-off(s) over")


@cli.command(context_settings=CONTEXT)
@config_option
@drone_option
@handle_errors
def gateway(config_path, drone):
    """The forced command of a drone's ssh key: allow its own verbs and uploads only.

    Reads SSH_ORIGINAL_COMMAND. Allows `swarm-delegate heartbeat|claim|
    report|release` (always as --drone NAME, with only the options those
    verbs need) and `rsync` uploads into staging/NAME/ (no '..', no absolute
    paths, no symlinks, no other rsync options); refuses everything else
    with a message and exit 2. Nothing goes through a shell.

    \b
    In ~swarm/.ssh/authorized_keys on the orchestrator, one line a drone:
      command="swarm-delegate gateway --drone d1",restrict ssh-ed25519 AAAA... swarm@d1
    """
    from ..transport import run_gateway

    config = load_config(config_path)

    def run_verb(args: list[str]) -> None:
        cli.main(args=[*args, "--config", str(config.path)], prog_name="swarm-delegate")

    sys.exit(run_gateway(config, drone, os.environ.get("SSH_ORIGINAL_COMMAND"), run_verb))


def main():
    run(cli)
