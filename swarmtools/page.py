"""The status page: one self-contained HTML file and its JSON twin (swarm-status --html).

Written by cron into a directory the binhost's web server already serves:
no JavaScript, no external resources (inline CSS and SVG), readable on a
phone and in a terminal browser (every chart has its figures in words).
Every figure is status.summary()'s or comes from the event history; the
JSON twin holds exactly what the page shows. Files are replaced with
rename(), so a browser fetching the page never sees half of it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

from . import charts, clock, staging, status
from .config import Config
from .errors import ExitCode, SwarmError
from .output import write_atomic
from .packages import STATES, Event, State

HISTORY_DAYS = 30        # how far back the queue chart and the longest builds look
HISTORY_POINTS = 60      # points of the queue chart
BUILD_HOURS = 24         # bars of the builds-per-hour chart
LIST_LIMIT = 50          # rows of each list (failures, kept back): the page stays small
LONGEST = 10             # bars of the longest builds
PATH_LIMIT = 40          # links of the critical path shown
LOG_TAIL_BYTES = 256 << 10  # the end of a build log is where emerge says what failed
LOG_DIR = "logs"         # beside the page: published failure logs

# Each at least 3:1 on the page's white (WCAG 1.4.11); no chart tells its
# series by colour alone (charts.py), so these only help.
COLORS = {State.NEEDED: "#b26b00", State.DELEGATED: "#2f6fdb", State.RECEIVED: "#8a4fd6",
          State.SYNCED: "#2a9d4b", State.FAILED: "#d1342f"}
DRONE_COLORS = ("#2f6fdb", "#2a9d4b", "#b26b00", "#8a4fd6", "#d1342f", "#0f8b8d", "#b5487f",
                "#6b7b2a")
BAR_COLOR = "#2f6fdb"


def gather(conn: sqlite3.Connection, config: Config, now: datetime) -> dict:
    """Every figure of the page: swarm-status --json's, the history's, the lists'."""
    drones = status.drone_table(conn, config, now)
    kept = status.kept_back(conn, config, now, drones)
    figures = status.summary(conn, config, now, drones=drones, kept=kept)
    return {
        **figures,
        "generated_at": clock.iso(now),
        "headline": headline(figures),
        "queue_history": queue_history(conn, now),
        "builds_per_hour": builds_per_hour(conn, now),
        "longest_builds": longest_builds(conn, now),
        "critical_path": critical_path(conn),
        "failures": failures(conn, config),
        "kept_back": kept_list(conn, kept),
    }


def headline(figures: dict) -> str:
    """The seed's status line: drones online, success rate, packages per state.

    The rate counts the packages' own failures; reports of a dependency not
    published yet and the drones' trouble follow it, apart.
    """
    ok, failed = figures["builds_ok"], figures["builds_failed"]
    rate = "n/a" if figures["success_rate"] is None else f"{figures['success_rate']:.1%}"
    waits, trouble = figures["builds_dependency_waits"], figures["builds_drone_trouble"]
    apart = (f" (apart: {waits:,} waited for dependencies, {trouble:,} drone trouble)"
             if waits or trouble else "")
    states = " · ".join(f"{figures['states'][s]:,} {s}" for s in STATES)
    return (f"{figures['drones_online']}/{figures['drones_known']} drones online · "
            f"{rate} success rate ({ok:,}/{ok + failed:,}){apart} · {states}")


def queue_history(conn: sqlite3.Connection, now: datetime) -> dict:
    """Packages per state over time, replayed from the history (which explains every state).

    Up to HISTORY_POINTS points over the last HISTORY_DAYS (or since the
    first event); a point counts the queue's active packages after every
    event up to its time, so the last point is the queue now.
    """
    first = conn.execute("SELECT min(at) FROM events WHERE package_id IS NOT NULL").fetchone()[0]
    if first is None:
        return {"at": [], "states": {str(s): [] for s in STATES}}
    start = max(clock.parse(first), now - timedelta(days=HISTORY_DAYS))
    step = max((now - start) / HISTORY_POINTS, timedelta(seconds=1))
    points = max(1, min(HISTORY_POINTS, -(-(now - start) // step)))
    times = [start + step * k for k in range(1, points)] + [now]
    stamps = [clock.iso(t) for t in times]
    state: dict[int, str] = {}
    active: dict[int, bool] = {}
    counts = defaultdict(int)
    series = {str(s): [] for s in STATES}
    point = 0

    def snapshot():
        for name, values in series.items():
            values.append(counts[name])

    def count(pkg: int, sign: int):
        if active.get(pkg) and state.get(pkg):
            counts[state[pkg]] += sign

    for pkg, at, event, to_status in conn.execute(
            "SELECT package_id, at, event, to_status FROM events WHERE package_id IS NOT NULL"
            " ORDER BY id"):
        while point < len(stamps) - 1 and at > stamps[point]:
            snapshot()
            point += 1
        count(pkg, -1)
        if to_status:
            state[pkg] = to_status
        if event == Event.RETIRED:
            active[pkg] = False
        elif pkg not in active or event in (Event.ADDED, Event.REQUEUED, Event.ON_BINHOST):
            active[pkg] = True  # the scan lists it again
        count(pkg, +1)
    while point < len(stamps):
        snapshot()
        point += 1
    return {"at": stamps, "states": series}


def builds_per_hour(conn: sqlite3.Connection, now: datetime) -> dict:
    """Builds reported per drone in each of the last BUILD_HOURS hours (the last one is this hour)."""
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    hours = [this_hour - timedelta(hours=BUILD_HOURS - 1 - k) for k in range(BUILD_HOURS)]
    drones: dict[str, list[int]] = {}
    for drone, at in conn.execute("SELECT drone, at FROM events WHERE event = ? AND at >= ?",
                                  (Event.BUILT, clock.iso(hours[0]))):
        slot = int((clock.parse(at) - hours[0]).total_seconds() // 3600)
        if 0 <= slot < BUILD_HOURS:
            drones.setdefault(drone or "?", [0] * BUILD_HOURS)[slot] += 1
    return {"hours": [clock.iso(h) for h in hours], "drones": dict(sorted(drones.items()))}


def longest_builds(conn: sqlite3.Connection, now: datetime) -> list[dict]:
    """The LONGEST longest builds of the last HISTORY_DAYS: claim to report, in seconds."""
    since = clock.iso(now - timedelta(days=HISTORY_DAYS))
    builds = []
    for cpv, drone, at, claimed in conn.execute(
            "SELECT coalesce(b.cpv, p.cp), b.drone, b.at, (SELECT max(c.at) FROM events c WHERE"
            " c.package_id = b.package_id AND c.event = ? AND c.id < b.id)"
            " FROM events b JOIN packages p ON p.id = b.package_id WHERE b.event = ? AND b.at >= ?",
            (Event.CLAIMED, Event.BUILT, since)):
        if claimed:
            seconds = (clock.parse(at) - clock.parse(claimed)).total_seconds()
            builds.append({"cpv": cpv, "drone": drone, "at": at, "seconds": round(seconds)})
    builds.sort(key=lambda b: (-b["seconds"], b["at"]))
    return builds[:LONGEST]


def critical_path(conn: sqlite3.Connection) -> list[dict]:
    """The longest chain of expected build time still to go (swarm-resolve's priorities).

    From the unpublished package with the highest priority, each next link is
    its unpublished dependent with the highest priority. Empty before
    swarm-resolve has run.
    """
    unpublished = "p.active = 1 AND p.status != 'synced' AND p.priority > 0"
    row = conn.execute(f"SELECT p.id, p.cpv, p.status, p.expected_seconds, p.priority FROM"
                       f" packages p WHERE {unpublished} ORDER BY p.priority DESC, p.id LIMIT 1"
                       ).fetchone()
    chain, seen = [], set()
    while row is not None and row["id"] not in seen and len(chain) < PATH_LIMIT:
        seen.add(row["id"])
        chain.append({"cpv": row["cpv"], "status": row["status"],
                      "expected_seconds": row["expected_seconds"] or 0,
                      "to_go_seconds": row["priority"]})
        row = conn.execute(
            f"SELECT p.id, p.cpv, p.status, p.expected_seconds, p.priority FROM requires r"
            f" JOIN packages p ON p.id = r.package_id WHERE r.dep_id = ? AND {unpublished}"
            f" ORDER BY p.priority DESC, p.id LIMIT 1", (row["id"],)).fetchone()
    return chain


def failures(conn: sqlite3.Connection, config: Config) -> list[dict]:
    """Failed packages, newest failure first, with its reason and its kept log."""
    items = []
    for row in conn.execute(
            "SELECT p.cpv, p.attempts, p.retry_after, e.at, e.drone, e.kind, e.detail"
            " FROM packages p JOIN events e ON e.id = (SELECT max(id) FROM events"
            " WHERE package_id = p.id AND event = ?) WHERE p.status = ? AND p.active = 1"
            " ORDER BY e.at DESC, p.id LIMIT ?", (Event.BUILD_FAILED, State.FAILED, LIST_LIMIT)):
        logs = sorted(staging.kept_logs(config, row["cpv"]).glob("*.log"))
        items.append({**dict(row), "log": str(logs[-1]) if logs else None, "log_url": None})
    return items


def kept_list(conn: sqlite3.Connection, kept: dict[str, set[int]]) -> list[dict]:
    """Needed packages that cannot be handed out now, first in priority order, with the rules."""
    rules = defaultdict(list)
    for rule, ids in kept.items():
        for pkg in ids:
            rules[pkg].append(rule)
    if not rules:
        return []
    ids = ",".join(str(i) for i in rules)  # integers from our own database
    return [{"cpv": cpv, "rules": sorted(rules[pkg])} for pkg, cpv in conn.execute(
        f"SELECT id, cpv FROM packages WHERE id IN ({ids})"
        " ORDER BY priority DESC, scan_order, id LIMIT ?", (LIST_LIMIT,))]


def write(conn: sqlite3.Connection, config: Config, now: datetime, html_path: Path) -> dict:
    """Write the page, its JSON twin (same name, .json) and the failure logs beside it."""
    html_path = Path(html_path)
    if not html_path.parent.is_dir():  # checked first: the failure logs would make it
        raise SwarmError(f"{html_path.parent} is not a directory: create it (mkdir -p "
                         f"{html_path.parent}) or give --html a file in one", ExitCode.USAGE)
    data = gather(conn, config, now)
    publish_logs(data["failures"], html_path.parent / LOG_DIR)
    write_atomic(html_path.with_suffix(".json"), json.dumps(data, sort_keys=True, indent=1) + "\n")
    write_atomic(html_path, render(data, html_path.with_suffix(".json").name))
    return data


def publish_logs(items: list[dict], directory: Path) -> None:
    """Copy the end of each failure's log under DIRECTORY; remove logs no failure shows any more."""
    wanted = set()
    for item in items:
        if not item["log"]:
            continue
        source = Path(item["log"])
        # .txt: every web server sends it as text/plain (a browser would download a .log)
        relative = f"{item['cpv']}/{source.stem}.txt"
        target = directory / relative
        if not target.exists():  # a kept log never changes: copied once
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - LOG_TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
            cut = f"[the first {size - LOG_TAIL_BYTES:,} bytes are left out]\n" \
                if size > LOG_TAIL_BYTES else ""
            write_atomic(target, cut + tail)
        wanted.add(target)
        item["log_url"] = f"{LOG_DIR}/{relative}"
    for old in directory.glob("*/*/*.txt") if directory.is_dir() else ():
        if old not in wanted:
            old.unlink()


# --- rendering -------------------------------------------------------------

# Text colours are 4.5:1 or more on the white background (WCAG 1.4.3);
# borders only separate rows and headings.
CSS = f"""
body{{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:960px;padding:0 \
{charts.PAGE_MARGIN // 2}px;color:#222;background:#fff}}
h1{{font-size:1.3em;margin:.8em 0 .2em}}
h2{{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}}
.headline{{font-size:1.1em;font-weight:600;margin:.3em 0 1em}}
.muted{{color:#666}}.warn{{color:#b00;font-weight:600}}
table{{border-collapse:collapse;width:100%;font-size:.92em}}
caption{{text-align:left;font-weight:600;padding:.2em 0 .4em;position:sticky;left:0;\
max-width:calc(100vw - {charts.PAGE_MARGIN}px)}}
th,td{{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top}}
td.n,th.n{{text-align:right}}.scroll{{overflow-x:auto}}
svg{{width:100%;height:auto;display:block;max-width:{charts.W}px}}
{charts.css()}
figure{{margin:0 0 1em}}figcaption{{font-size:.9em;color:#444}}
i.swatch{{font-style:normal}}
code{{font-size:.95em;overflow-wrap:anywhere}}
"""


def render(data: dict, twin: str = "index.json") -> str:
    """The page, as one string of HTML (escaped: package names and reasons come from outside).

    TWIN: the JSON file's name, linked from the page.
    """
    sections = [
        _overview(data), _profiles(data), _drones(data), _queue_chart(data),
        _builds_chart(data), _longest_chart(data), _path_chart(data), _failures(data),
        _kept(data),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            # An empty icon: browsers would otherwise fetch /favicon.ico.
            "<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>swarm: {escape(data['headline'])}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<h1>Build swarm</h1>\n<p class=\"headline\" id=\"headline\">"
            f"{escape(data['headline'])}</p>\n" + "\n".join(sections) +
            f"\n<p class=\"muted\">Written {escape(_short(data['generated_at']))} UTC by "
            "swarm-status --html;"
            f" the same figures: <a href=\"{escape(twin)}\">JSON</a>.</p>\n</body>\n</html>\n")


def _table(caption: str, headers: list[str], rows: list[list], numeric: set[int] = frozenset(),
           ident: str = "") -> str:
    """A table of ROWS (HTML already), named by its CAPTION (text)."""
    def cell(tag, i, value):
        cls = ' class="n"' if i in numeric else ""
        return f"<{tag}{cls}>{value}</{tag}>"
    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(headers))
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    idattr = f' id="{ident}"' if ident else ""
    return (f'<div class="scroll"><table{idattr}>\n<caption>{escape(caption)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>")


def _overview(data: dict) -> str:
    states = _table("Packages per state (every profile's, a shared build once)",
                    ["state", "packages"],
                    [[(f'<i class="swatch" style="color:{COLORS[s]}" aria-hidden="true">■</i> '
                       f"{escape(s)}"),
                      f'<span data-state="{escape(s)}">{data["states"][s]:,}</span>']
                     for s in STATES] + [["retired", f"{data['retired']:,}"]],
                    numeric={1}, ident="states")
    scan, sync = data["last_scan"], data["last_sync"]
    age = data["oldest_received_seconds"]
    waits = data["waiting"]
    facts = [
        ("staging", f'<span id="staging-bytes">{data["staging_bytes"]:,}</span> bytes waiting'
         + (f", oldest received {age:,} s ago" if age is not None else "")
         + (' <span class="warn">BACKLOG: is swarm-sync running from cron?</span>'
            if data["backlog"] else "")),
        ("last scan", f"{escape(scan['at'])}: {scan['rows']:,} rows, {scan['added']:,} added, "
                      f"{scan['requeued']:,} requeued, {scan['retired']:,} retired"
         if scan else "never"),
        ("last sync", f"{escape(sync['at'])}: {sync.get('published', 0):,} published"
         if sync else "never"),
        ("channels", ", ".join(f"{escape(c['channel'])} → {escape(c['release'])} (since "
                               f"{escape(c['since'])})" for c in data["channels"] if c["release"])
         or "none pinned (swarm-release)"),
        ("waiting", (f"{waits['on_dependencies']:,} for dependencies to be published "
                     f"({waits['on_failure']:,} of them on a failed build)")),
    ]
    return ("<h2>Overview</h2>\n" + states + "\n<dl>\n" +
            "\n".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in facts) + "\n</dl>")


def _profiles(data: dict) -> str:
    rows = []
    for name, share in data["profiles"].items():
        states = ", ".join(f"{share['states'][s]:,} {s}" for s in STATES if share["states"][s])
        recorded = share["profile"]
        built_with = (f"<code>{escape(recorded['digest'][:12])}</code> ({escape(recorded['chost'])}"
                      f", {escape(recorded['arch'])})" if recorded
                      else '<span class="muted">not recorded: no scan ran emerge yet</span>')
        trees = "<br>".join(f"{escape(repo)} <code>{escape(state[:30])}</code>"
                            for repo, state in sorted(recorded["tree"].items())) if recorded else "-"
        waits = share["waiting"]
        rows.append([escape(name), escape(share["binhost"]), f"{share['packages']:,}",
                     escape(states) or "-", f"{share['retired']:,}",
                     f"{waits['on_dependencies']:,} ({waits['on_failure']:,} on a failure)",
                     built_with, trees])
    return ("<h2>Profiles</h2>\n" + _table(
        "Build profiles: what each wants, where it publishes, and what drones build it with",
        ["profile", "binhost", "packages", "by state", "retired", "waiting for dependencies",
         "configuration (digest, CHOST, ARCH)", "repositories as scanned"],
        rows, numeric={2, 4}, ident="profiles")
        + '\n<p class="muted">A build that two profiles on one binhost want with the same '
          "identity is built once and counted in both.</p>")


def _drones(data: dict) -> str:
    rows = []
    for d in data["drones"]:
        rate = "n/a" if d["success_rate"] is None else f"{d['success_rate']:.0%}"
        building = "<br>".join(f"{escape(b['cpv'])} <span class=\"muted\">since "
                               f"{escape(_when(b['since']) if b['since'] else '?')}</span>"
                               for b in d["building_packages"]) or "-"
        online = "yes" if d["online"] else '<span class="warn">no</span>'
        if d["grounded_until"]:
            online += f" (grounded until {escape(d['grounded_until'])})"
        if d["drift"]:  # a drone left on an old version or config
            online += "".join(f'<br><span class="warn">{escape(item)}</span>'
                              for item in d["drift"])
        heard = _when(d["last_heartbeat"]) if d["last_heartbeat"] else "never"
        rows.append([escape(d["drone"]), online, escape(heard),
                     building, f"{d['built']:,}", f"{d['failed']:,}", rate,
                     f"{d['dependency_waits']:,}", f"{d['drone_trouble']:,}",
                     _builds_in(d["isolation"]),
                     "-" if not d["speed"] else f"{d['speed']:.2f}×"])
    if not rows:
        return "<h2>Drones</h2>\n<p>No drone known yet.</p>"
    return ("<h2>Drones</h2>\n" + _table(
        "Drones: what each builds now, and how its reported builds went",
        ["drone", "online", "last heartbeat", "building", "built", "failed", "success",
         "waited for dependencies", "drone trouble", "builds in", "speed (×)"],
        rows, numeric={4, 5, 6, 7, 8, 10}, ident="drones")
        + '\n<p class="muted" id="speed-note">Success counts the package\'s own failures '
          "(build, stalled); a dependency not yet published and a drone's trouble (a full "
          "disk, a failed fetch) are counted apart. Speed: how fast a drone builds beside the "
          "others, from the packages both built: 2.00× builds them in half the time the others "
          "take, 0.50× in twice the time (drones.NAME.speed in the config, where set; - not "
          "known yet). Long chains go to the fastest drones first.</p>")


def _queue_chart(data: dict) -> str:
    history = data["queue_history"]
    stamps, series = history["at"], history["states"]
    if not stamps:
        return "<h2>Queue over time</h2>\n<p>No history yet.</p>"
    lines = [charts.Series(
        state, f"{state}: {values[-1]:,} now", values, COLORS[state],
        [f"{state}: {v:,} at {_short(at)} UTC" for v, at in zip(values, stamps)],
        [{"state": state, "at": at, "value": v} for v, at in zip(values, stamps)])
        for state, values in series.items()]
    now = ", ".join(f"{s} {values[-1]:,}" for s, values in series.items())
    then = ", ".join(f"{s} {values[0]:,}" for s, values in series.items())
    return ("<h2>Queue over time</h2>\n<figure>\n"
            + charts.panels("queue-chart", "packages per state over time", "queue-words",
                            "line", lines, (_short(stamps[0]), _short(stamps[-1])),
                            "time (UTC)", "packages")
            + f'\n<figcaption id="queue-words">{escape(_short(stamps[0]))} UTC: {then}. '
              f"Now: {now}.</figcaption>\n</figure>")


def _builds_chart(data: dict) -> str:
    per_hour = data["builds_per_hour"]
    hours, drones = per_hour["hours"], per_hour["drones"]
    if not any(v for values in drones.values() for v in values):
        return (f"<h2>Builds per hour</h2>\n<p>No build reported in the last {BUILD_HOURS} "
                "hours.</p>")
    bars = [charts.Series(
        drone, f"{drone}: {sum(values):,} built", values, DRONE_COLORS[i % len(DRONE_COLORS)],
        [f"{drone}: {v:,} built in the hour from {_short(hour)} UTC"
         for v, hour in zip(values, hours)],
        [{"drone": drone, "hour": hour, "value": v} for v, hour in zip(values, hours)])
        for i, (drone, values) in enumerate(drones.items())]
    words = ", ".join(f"{escape(d)} {sum(v):,}" for d, v in drones.items())
    return ("<h2>Builds per hour</h2>\n<figure>\n"
            + charts.panels("builds-chart", "builds per hour per drone", "builds-words", "bar",
                            bars, (_short(hours[0]), _short(hours[-1])),
                            "hour beginning (UTC)", "builds per hour")
            + f'\n<figcaption id="builds-words">Built in the last {BUILD_HOURS} hours: {words}.'
              "</figcaption>\n</figure>")


def _longest_chart(data: dict) -> str:
    builds = data["longest_builds"]
    if not builds:
        return f"<h2>Longest builds</h2>\n<p>No build reported in the last {HISTORY_DAYS} days.</p>"
    items = [(b["cpv"], b["seconds"], (f"{b['cpv']} on {b['drone']}: {_duration(b['seconds'])},"
                                       f" reported {_short(b['at'])} UTC"),
              {"cpv": b["cpv"], "drone": b["drone"]}) for b in builds]
    words = "; ".join(f"{escape(b['cpv'])} {_duration(b['seconds'])}" for b in builds)
    return ("<h2>Longest builds</h2>\n<figure>\n"
            + charts.hbars("longest-chart", "longest builds", "longest-words", items, _duration,
                           "time from claim to report", BAR_COLOR)
            + f'\n<figcaption id="longest-words">Claim to report, last {HISTORY_DAYS} days: '
              f"{words}.</figcaption>\n</figure>")


def _path_chart(data: dict) -> str:
    chain = data["critical_path"]
    if not chain:
        return ("<h2>Critical path</h2>\n<p>Nothing left to build on a resolved chain "
                "(or swarm-resolve has not run).</p>")
    items = [(c["cpv"], c["expected_seconds"],
              f"{c['cpv']} ({c['status']}): expected {_duration(c['expected_seconds'])}",
              {"cpv": c["cpv"], "status": c["status"]}) for c in chain]
    return ("<h2>Critical path</h2>\n<figure>\n"
            + charts.hbars("path-chart", "critical path", "path-words", items, _duration,
                           "expected build time", BAR_COLOR)
            + f'\n<figcaption id="path-words">The longest chain still to go: {len(chain)} '
              f"package(s), about {_duration(chain[0]['to_go_seconds'])} of builds one after "
              f"another, first {escape(chain[0]['cpv'])}.</figcaption>\n</figure>")


def _failures(data: dict) -> str:
    items = data["failures"]
    if not items:
        return "<h2>Failures</h2>\n<p>No package is failed now.</p>"
    rows = [[escape(f["cpv"]), escape(f["at"]), escape(f["drone"] or "?"), escape(f["kind"] or ""),
             escape(f["detail"]), f'<a href="{escape(f["log_url"])}">log</a>' if f["log_url"] else "-"]
            for f in items]
    more = data["states"][State.FAILED] - len(items)
    return ("<h2>Failures</h2>\n" + _table("Failed packages, the newest failure first",
                                           ["package", "at", "drone", "kind", "why", "log"], rows,
                                           ident="failures")
            + (f"\n<p>and {more:,} more: swarm-status --packages --state failed</p>" if more > 0
               else ""))


def _kept(data: dict) -> str:
    counts = {rule: n for rule, n in data["blocked"].items() if n}
    if not counts:
        return "<h2>Waiting</h2>\n<p>Nothing is kept back: every needed package can be handed out.</p>"
    rows = [[escape(k["cpv"]), escape(", ".join(k["rules"]))] for k in data["kept_back"]]
    words = ", ".join(f"{escape(rule)} {n:,}" for rule, n in counts.items())
    return ("<h2>Waiting</h2>\n"
            f"<p id=\"kept-counts\">Needed packages kept back, by what keeps them: {words}. "
            "<code>swarm-status --why PACKAGE</code> says more.</p>\n"
            + _table("Needed packages kept back, first in priority order",
                     ["package", "kept by"], rows, ident="kept"))


def _builds_in(isolation: str | None) -> str:
    # (isolation = none: its builds see, and change, the drone's own system)
    if isolation == "none":
        return '<span class="warn">its live system (isolation = none)</span>'
    return "a throw-away root" if isolation else '<span class="muted">not known yet</span>'


def _when(stamp: str) -> str:
    """A moment to the second, in UTC, for people."""
    return f"{clock.parse(stamp).astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _short(stamp: str) -> str:
    return stamp[:16].replace("T", " ")


def _duration(seconds: int) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
