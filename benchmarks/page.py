"""The status page of a big swarm: its size, how long it takes to write, and to render.

A 2,000-package queue (synthetic scan) with 30 days of history made by the
real delegation code on a simulated clock: four drones claim, fail (about
one build in twenty, retried after the back-off) and report, and the
received packages are published day by day but the last (marked synced
directly: no files here); a third of the queue is requeued by a rescan on day 20. Then:
  - gather + render time in-process, and the whole `swarm-status --html`;
  - the page's size (target: under 200 KB) and its JSON twin's;
  - the load time in a real headless Chromium (target: under 1 s): median
    of 5 loads, from navigation start to the load event.
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from timing import init_config, timed

from swarmtools import clock, db, delegate, packages, page
from swarmtools import config as config_mod
from swarmtools.emerge import parse_merge_list
from swarmtools.packages import Event, State
from swarmtools.queue import apply_scan
from swarmtools.samples import synthetic_scan

PACKAGES = 2000
DAYS = 30
DRONES = ("d1", "d2", "d3", "d4")


def make_history(config) -> int:
    """Fill the queue and 30 days of its history; the number of events."""
    rng = random.Random(7)
    start = clock.utcnow() - timedelta(days=DAYS)
    conn = db.connect(config.database, create=True)
    scan = synthetic_scan(PACKAGES)
    apply_scan(conn, parse_merge_list(scan), "benchmark", start)
    for drone in DRONES:
        delegate.heartbeat(conn, config, drone, {"arch": "amd64"}, start)
    per_day = 90  # the rescan on day 20 leaves work undone at the end: every list has rows
    for day in range(DAYS):
        now = start + timedelta(days=day, hours=1)
        if day == 20:
            changed = scan.replace(" 0 KiB", ' USE="newflag" 0 KiB', PACKAGES // 3)
            apply_scan(conn, parse_merge_list(changed), "benchmark", now)
        for n in range(per_day):
            now += timedelta(seconds=rng.randint(20, 90))
            drone = DRONES[n % len(DRONES)]
            for d in DRONES:
                delegate.heartbeat(conn, config, d, {"arch": "amd64"}, now)
            job = delegate.claim(conn, config, drone, now, renew=False)
            if job is None:
                break
            built = now + timedelta(seconds=rng.randint(30, 3600))
            if rng.random() < 0.05:
                delegate.report_failed(conn, config, drone, job["cpv"], built)
                continue
            category, pf = job["cpv"].split("/")
            relative = f"{category}/x/{pf}-1.gpkg.tar"
            target = config.staging_dir / drone / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"x")
            delegate.report_built(conn, config, drone, job["cpv"], relative, built)
        if day < DAYS - 1:  # today's uploads wait in staging
            publish_day(conn, now + timedelta(hours=2))
    count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    return count


def publish_day(conn, at) -> None:
    """What swarm-sync would do with the day's uploads (files are not real here)."""
    with db.write(conn):
        for (pid,) in conn.execute("SELECT id FROM packages WHERE status = ?", (State.RECEIVED,)).fetchall():
            packages.move(conn, pid, expect=State.RECEIVED, to=State.SYNCED, event=Event.SYNCED,
                          actor="swarm-sync", at=clock.iso(at), detail="benchmark")


def browser_load(html: Path) -> float:
    """Median seconds from navigation start to the load event in headless Chromium."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page()
        for _ in range(5):
            tab.goto(html.as_uri())
            times.append(tab.evaluate(
                "() => { const t = performance.getEntriesByType('navigation')[0];"
                " return t.loadEventEnd - t.startTime; }") / 1000)
        browser.close()
    return statistics.median(times)


def main() -> None:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        path = init_config(tmp)
        config = config_mod.edit(path, {
            "drones": {d: {"transport": "local"} for d in DRONES},
            "delegate": {"retry_seconds": 3600, "policy": "first"}})
        started = time.perf_counter()
        events = make_history(config)
        print(f"history: {PACKAGES} packages, {events} events over {DAYS} days "
              f"(made in {time.perf_counter() - started:.1f} s)")
        conn = db.connect(config.database, writer=False)
        started = time.perf_counter()
        data = page.gather(conn, config, clock.utcnow())
        gathered = time.perf_counter() - started
        started = time.perf_counter()
        html = page.render(data)
        rendered = time.perf_counter() - started
        conn.close()
        out = Path(tmp) / "www" / "index.html"
        out.parent.mkdir()
        env = {**os.environ, "SWARM_CONFIG": str(path)}
        whole = timed([bindir / "swarm-status", "--html", str(out)], env)
        size, twin = out.stat().st_size, out.with_suffix(".json").stat().st_size
        load = browser_load(out) if shutil.which("chromium") else None
        print("states now: " + ", ".join(f"{k} {v}" for k, v in data["states"].items())
              + f"; lists: {len(data['failures'])} failures, {len(data['kept_back'])} kept back")
        print(f"gather {gathered:.3f} s, render {rendered:.3f} s in-process; "
              f"swarm-status --html {whole:.2f} s")
        print(f"page {size:,} bytes (target < 200,000: {'met' if size < 200_000 else 'NOT met'}); "
              f"JSON twin {twin:,} bytes; rendered in memory {len(html.encode()):,} bytes")
        if load is None:
            print("chromium not installed: no load time")
        else:
            print(f"headless Chromium load {load * 1000:.0f} ms (median of 5; target < 1 s: "
                  f"{'met' if load < 1 else 'NOT met'})")
        print(json.dumps({"packages": PACKAGES, "events": events, "page_bytes": size,
                          "json_bytes": twin, "gather_s": round(gathered, 3),
                          "render_s": round(rendered, 3), "command_s": round(whole, 2),
                          "browser_load_s": None if load is None else round(load, 3)}))


if __name__ == "__main__":
    main()
