"""swarm-status: how the swarm is doing, for people and for jq."""

from __future__ import annotations

import click

from .. import db, status
from ..output import emit_json, emit_ndjson, emit_table
from .common import CONTEXT, config_option, handle_errors, load_config, run


@click.command(context_settings=CONTEXT)
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for jq.")
@click.option("--packages", "list_packages", is_flag=True,
              help="List the queue's packages instead, one JSON object a line (NDJSON).")
@click.option("--state", type=click.Choice(db.STATES),
              help="With --packages: only packages in this state.")
@click.option("--retired", is_flag=True,
              help="With --packages: include packages gone from the latest scan.")
@handle_errors
def cli(config_path, as_json, list_packages, state, retired):
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
    config = load_config(config_path)
    conn = db.connect(config.database, create=False)
    try:
        if list_packages:
            emit_ndjson(status.packages(conn, state, retired))
            return
        if state or retired:
            raise click.UsageError("--state and --retired go with --packages")
        figures = status.summary(conn, config)
    finally:
        conn.close()
    if as_json:
        emit_json(figures)
    else:
        _print_summary(figures)


def _print_summary(f: dict) -> None:
    rate = "n/a" if f["success_rate"] is None else f"{f['success_rate']:.1%}"
    click.echo(f"drones online: {f['drones_online']}/{f['drones_known']}")
    click.echo(f"success rate:  {rate} ({f['builds_ok']} built, {f['builds_failed']} failed)")
    states = "  ".join(f"{k} {v}" for k, v in f["states"].items())
    click.echo(f"packages:      {f['packages']} ({states}; {f['retired']} retired)")
    age = f["oldest_received_seconds"]
    flag = "  BACKLOG: is swarm-sync running from cron?" if f["backlog"] else ""
    click.echo(f"staging:       {f['staging_bytes']:,} bytes waiting"
               + (f", oldest received {age} s ago{flag}" if age is not None else ""))
    scan = f["last_scan"]
    if scan:
        click.echo(f"last scan:     {scan['at']}: {scan['rows']} rows, {scan['added']} added, "
                   f"{scan['requeued']} requeued, {scan['retired']} retired")
    if f["drones"]:
        click.echo()
        emit_table(
            [[d["drone"], "yes" if d["online"] else "no", d["last_heartbeat"] or "never",
              d["building"], d["built"], d["failed"],
              "n/a" if d["success_rate"] is None else f"{d['success_rate']:.0%}"]
             for d in f["drones"]],
            ["drone", "online", "last heartbeat", "building", "built", "failed", "success"])


def main():
    run(cli)
