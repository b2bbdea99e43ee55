"""swarm-status: how the swarm is doing, for people and for jq."""

from __future__ import annotations

import click

from .. import clock, status
from ..errors import ExitCode, SwarmError
from ..output import emit_json, emit_ndjson, emit_table
from ..packages import STATES
from .common import CONTEXT, SwarmCommand, config_option, json_option, pass_run, run


@click.command(cls=SwarmCommand, context_settings=CONTEXT)
@config_option
@json_option
@click.option("--packages", "list_packages", is_flag=True,
              help="List the queue's packages instead, one JSON object a line (NDJSON).")
@click.option("--state", type=click.Choice([str(s) for s in STATES]),
              help="With --packages: only packages in this state.")
@click.option("--retired", is_flag=True,
              help="With --packages: include packages gone from the latest scan.")
@pass_run
def cli(run_, as_json, list_packages, state, retired):
    """Show the swarm: drones, success rate, packages per state.

    Every figure is derived from the database and staging: drones online
    (heartbeat younger than delegate.online_seconds) out of known, the
    success rate of reported builds, the number of packages in each state
    (needed, delegated, received, synced, failed), the bytes waiting in
    staging and the age of the oldest received package (BACKLOG when older
    than three binhost.sync_interval_seconds), and one line a drone.

    \b
    Examples:
      swarm-status
      swarm-status --json | jq .states.needed
      swarm-status --packages --state failed | jq -r .cpv
    """
    if (state or retired) and not list_packages:
        raise SwarmError("--state and --retired go with --packages", ExitCode.USAGE)
    conn = run_.database()
    if list_packages:
        emit_ndjson(status.packages(conn, state, retired))
        return
    figures = status.summary(conn, run_.config(), clock.utcnow())
    if as_json:
        emit_json(figures)
    else:
        _print_summary(figures)


def _print_summary(figures: dict) -> None:
    rate = "n/a" if figures["success_rate"] is None else f"{figures['success_rate']:.1%}"
    click.echo(f"drones online: {figures['drones_online']}/{figures['drones_known']}")
    click.echo(f"success rate:  {rate} ({figures['builds_ok']} built, {figures['builds_failed']} failed)")
    states = "  ".join(f"{k} {v}" for k, v in figures["states"].items())
    click.echo(f"packages:      {figures['packages']} ({states}; {figures['retired']} retired)")
    age = figures["oldest_received_seconds"]
    flag = "  BACKLOG: is swarm-sync running from cron?" if figures["backlog"] else ""
    click.echo(f"staging:       {figures['staging_bytes']:,} bytes waiting"
               + (f", oldest received {age} s ago{flag}" if age is not None else ""))
    scan = figures["last_scan"]
    if scan:
        click.echo(f"last scan:     {scan['at']}: {scan['rows']} rows, {scan['added']} added, "
                   f"{scan['requeued']} requeued, {scan['retired']} retired")
    if figures["drones"]:
        click.echo()
        emit_table(
            [[d["drone"], "yes" if d["online"] else "no", d["last_heartbeat"] or "never",
              d["building"], d["built"], d["failed"],
              "n/a" if d["success_rate"] is None else f"{d['success_rate']:.0%}"]
             for d in figures["drones"]],
            ["drone", "online", "last heartbeat", "building", "built", "failed", "success"])


def main():
    run(cli)
