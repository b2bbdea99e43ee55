"""swarm-status: how the swarm is doing, for people and for jq."""

from __future__ import annotations

import sys
from pathlib import Path

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
@click.option("--history", "show_history", is_flag=True,
              help="The event history instead (of PACKAGE, or the swarm's): NDJSON, a table "
                   "at a terminal.")
@click.option("--last", type=click.IntRange(1, 10**6), default=50, show_default=True,
              help="With --history: how many of the latest events.")
@click.option("--why", "explain", is_flag=True,
              help="Why PACKAGE is not being built: the reasons for every drone, then each "
                   "drone's own.")
@click.option("--drone", metavar="NAME", help="With --why: only this drone's reasons.")
@click.option("--html", "html_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the status page to FILE, its JSON twin beside it (FILE with .json) "
                   "and the failure logs under logs/ there; print nothing.")
@click.option("--prometheus", is_flag=True,
              help="Print the figures in Prometheus's text format (node_exporter's textfile "
                   "collector).")
@click.argument("package", required=False, metavar="[PACKAGE]")
@pass_run
def cli(run_, as_json, list_packages, state, retired, show_history, last, explain, drone,
        html_path, prometheus, package):
    """Show the swarm: drones, success rate, packages per state.

    Every figure is derived from the database and staging: drones online
    (heard from within delegate.online_seconds, or holding a live lease)
    out of known, the success rate of reported builds (built against the
    package's own failures: build, stalled; reports of a dependency not
    published yet and the drones' trouble, environment and fetch, are
    counted apart), the number of packages in each state
    (needed, delegated, received, synced, failed), the bytes waiting in
    staging and the age of the oldest received package (BACKLOG when older
    than three binhost.sync_interval_seconds), and one line a drone.

    Needed packages that cannot be handed out now are counted by what keeps
    them: back-off (a failed build waits), held (a drone's refused upload),
    dependencies (not published yet), excluded (swarm-exclude rules covering
    every online drone), capability (no online drone has a feature it
    needs), no drone (none online). Drones show when they are grounded.

    --why PACKAGE (CATEGORY/PF, or CATEGORY/PN for each queued slot) asks
    the rules the claims use: what keeps it from every drone, what keeps it
    from each drone (offline, grounded, held, excluded for it, lacking a
    feature), the drones that build in their live system (isolation =
    "none"), and which drones would take it now.

    --history [PACKAGE] prints what happened, oldest first: to every package
    (the last --last events) or to one (CATEGORY/PF: that version;
    CATEGORY/PN: every version): when, which version, what, the state before
    and after, who, and why.

    --html FILE writes the status page for a web server: one self-contained
    HTML file (inline CSS and SVG, no JavaScript, nothing fetched from
    elsewhere) with the headline, the drones (building what since when,
    success, speed), packages per state, charts of the queue per state
    over time, builds per hour per drone, the longest builds and the
    critical path still to go, the failed packages with their reason and a
    link to the end of the kept build log, and what keeps needed packages
    waiting. FILE with .json holds the same figures for scripts; failure
    logs (their last 256 KiB, of the failures shown) go to logs/ beside
    FILE, and logs there that no failure shows any more are removed. Every
    file is written under a temporary name and renamed: a browser sees the
    old page or the new one, whole. FILE's directory must exist (exit 2,
    naming it, when it does not).

    --prometheus prints the figures in Prometheus's text format: packages
    per state, waiting and kept back, drones online, builds per drone and
    result (counters), staging bytes, the oldest received package's age,
    and the last scan and sync time. Write it with a rename, as
    node_exporter's textfile collector asks.

    \b
    Crontab (cron/crontab):
      * * * * *  swarm-status --html /var/www/swarm/index.html
      * * * * *  cd /var/lib/node_exporter && swarm-status --prometheus > p.$$ && mv p.$$ swarm.prom
    \b
    Examples:
      swarm-status
      swarm-status --json | jq .states.needed
      swarm-status --packages --state failed | jq -r .cpv
      swarm-status --why dev-libs/foo-1.0       # why is it not built?
      swarm-status --why dev-libs/foo --drone d2 --json | jq .drones
      swarm-status --history app-misc/foo       # what happened to foo?
    """
    views = [name for name, on in (("--packages", list_packages), ("--history", show_history),
                                   ("--why", explain), ("--html", html_path),
                                   ("--prometheus", prometheus)) if on]
    if len(views) > 1:
        raise SwarmError(f"{' and '.join(views)} do not go together", ExitCode.USAGE)
    if as_json and (html_path or prometheus):
        raise SwarmError(f"--json does not go with {views[0]}", ExitCode.USAGE)
    if (state or retired) and not list_packages:
        raise SwarmError("--state and --retired go with --packages", ExitCode.USAGE)
    if package and not (show_history or explain):
        raise SwarmError(f"{package}: a package goes with --why or --history", ExitCode.USAGE)
    if explain and not package:
        raise SwarmError("--why needs a PACKAGE", ExitCode.USAGE)
    if drone and not explain:
        raise SwarmError("--drone goes with --why", ExitCode.USAGE)
    conn = run_.database(writer=False)
    if explain:
        answers = status.why(conn, run_.config(), package, clock.utcnow(), drone)
        if as_json:
            emit_ndjson(answers)
        else:
            _print_why(answers)
        return
    if show_history:
        events = status.history(conn, package, last)
        if package and not events:
            raise SwarmError(f"no package {package} in the queue", ExitCode.FAILED)
        if as_json or not sys.stdout.isatty():
            emit_ndjson(events)
        else:
            emit_table([[e["at"], e["cpv"] or "", e["event"],
                         f"{e['from_status'] or '-'} -> {e['to_status'] or '-'}",
                         e["actor"], e["detail"]] for e in events],
                       ["at", "package", "event", "state", "by", "detail"])
        return
    if list_packages:
        emit_ndjson(status.packages(conn, state, retired))
        return
    if html_path:
        from .. import page

        page.write(conn, run_.config(), clock.utcnow(), Path(html_path))
        return
    if prometheus:
        from .. import metrics

        sys.stdout.write(metrics.render(status.summary(conn, run_.config(), clock.utcnow())))
        return
    figures = status.summary(conn, run_.config(), clock.utcnow())
    if as_json:
        emit_json(figures)
    else:
        _print_summary(figures)


def _print_why(answers: list[dict]) -> None:
    for answer in answers:
        holder = f" by {answer['drone']}" if answer["drone"] else ""
        # Which build, when profiles have builds of their own.
        build = (f" (binhost {answer['binhost']}, USE=\"{answer['use']}\", wanted by "
                 f"{', '.join(answer['profiles']) or 'no profile'})"
                 if answer["binhost"] != "default" or answer["profiles"] not in ([], ["default"])
                 else "")
        click.echo(f"{answer['cpv']}: {answer['status']}{holder}{build}"
                   + ("" if answer["active"] else " (retired: not in the latest scan)"))
        for reason in answer["reasons"]:
            click.echo(f"  {reason['rule']}: {reason['why']}")
        for drone in answer["drones"]:
            for reason in drone["reasons"]:
                click.echo(f"  {drone['drone']}: {reason['rule']}: {reason['why']}")
            if drone["isolation"] == "none":  # what it builds may see the drone's own system
                click.echo(f"  {drone['drone']}: builds in its live system (isolation = none)")
        if answer["eligible_for"]:
            click.echo(f"  eligible for: {', '.join(answer['eligible_for'])} (their next claim, "
                       "in priority order)")


def _print_summary(figures: dict) -> None:
    rate = "n/a" if figures["success_rate"] is None else f"{figures['success_rate']:.1%}"
    click.echo(f"drones online: {figures['drones_online']}/{figures['drones_known']}")
    click.echo(f"success rate:  {rate} ({figures['builds_ok']} built, {figures['builds_failed']} "
               f"failed; apart: {figures['builds_dependency_waits']} waited for dependencies, "
               f"{figures['builds_drone_trouble']} drone trouble)")
    states = "  ".join(f"{k} {v}" for k, v in figures["states"].items())
    click.echo(f"packages:      {figures['packages']} ({states}; {figures['retired']} retired)")
    waits = figures["waiting"]
    if waits["on_dependencies"]:
        click.echo(f"waiting:       {waits['on_dependencies']} for dependencies to be published"
                   f" ({waits['on_failure']} of them on a failed build)")
    kept = "  ".join(f"{k} {v}" for k, v in figures["blocked"].items() if v)
    if kept:
        click.echo(f"kept back:     {kept}")
    age = figures["oldest_received_seconds"]
    flag = "  BACKLOG: is swarm-sync running from cron?" if figures["backlog"] else ""
    click.echo(f"staging:       {figures['staging_bytes']:,} bytes waiting"
               + (f", oldest received {age} s ago{flag}" if age is not None else ""))
    scan = figures["last_scan"]
    if scan:
        of = f" (profile {scan['profile']})" if len(figures["profiles"]) > 1 else ""
        click.echo(f"last scan:     {scan['at']}{of}: {scan['rows']} rows, {scan['added']} added, "
                   f"{scan['requeued']} requeued, {scan['retired']} retired")
    built_with = figures["profile"]
    if built_with:
        click.echo(f"profile:       {built_with['name']} {built_with['digest'][:12]} "
                   f"({built_with['chost']}, {built_with['arch']}; "
                   + ", ".join(f"{repo} {state[:30]}" for repo, state in
                               sorted(built_with["tree"].items())) + ")")
    if len(figures["profiles"]) > 1:
        for name, share in figures["profiles"].items():
            states = "  ".join(f"{k} {v}" for k, v in share["states"].items())
            click.echo(f"  {name} (binhost {share['binhost']}): {share['packages']} "
                       f"({states}; {share['retired']} retired)")
    sync = figures["last_sync"]
    if sync:
        click.echo(f"last sync:     {sync['at']}: {sync['published']} published")
    pinned = [c for c in figures["channels"] if c["release"]]
    if pinned:
        click.echo("channels:      " + ", ".join(
            f"{c['channel']} -> {c['release']} ({c['age_seconds'] // 60} min ago)" for c in pinned))
    if figures["drones"]:
        click.echo()
        emit_table(
            [[d["drone"], "yes" if d["online"] else "no", d["last_heartbeat"] or "never",
              d["building"], d["built"], d["failed"],
              "n/a" if d["success_rate"] is None else f"{d['success_rate']:.0%}",
              d["dependency_waits"], d["drone_trouble"],
              "live system" if d["isolation"] == "none" else
              "throw-away root" if d["isolation"] else "?",
              f"until {d['grounded_until']}" if d["grounded_until"] else "-",
              "; ".join(d["drift"]) or "-"]
             for d in figures["drones"]],
            ["drone", "online", "last heartbeat", "building", "built", "failed", "success",
             "dep. waits", "trouble", "builds in", "grounded", "drift"])


def main():
    run(cli)
