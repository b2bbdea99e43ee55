"""swarm-status --html, --prometheus and --history; swarm-sync's progress line.

The page is loaded in a real headless Chromium (Debian's chromium, driven
by Playwright without a browser download) and served by a real HTTP server.
"""

import json
import os
import pty
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import EMERGE_DATA, HttpServer, one_line_error, promtool_check, script

from swarmtools import page
from swarmtools.output import write_atomic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("SWARM_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))


def strict_html(text: str) -> None:
    """Parse TEXT as HTML5 with html5lib in strict mode: any parse error fails."""
    import html5lib

    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


def browser():
    """A headless Chromium; the test is skipped where Debian's chromium is not installed."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    return sync_api.sync_playwright()


def stage_dummy(swarm, drone: str, cpv: str) -> str:
    """A file in DRONE's staging area named as CPV's package (no gpkg: nothing syncs it here)."""
    category, pf = cpv.split("/")
    relative = f"{category}/x/{pf}-1.gpkg.tar"
    target = swarm.root / "state" / "staging" / drone / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not a gpkg " * 100)
    return relative


@pytest.fixture
def busy(swarm):
    """A queue from a real emerge output with builds reported and one failure with its log."""
    swarm.scan(source=str(EMERGE_DATA / "varieties-15.txt"))
    done = []
    for n in range(3):
        r = swarm.run("swarm-delegate", "claim", "--drone", "local", "--json")
        assert r.returncode == 0 and r.stdout, r.stderr
        cpv = json.loads(r.stdout)["cpv"]
        if n == 0:
            log = swarm.root / "state" / "staging" / "local" / "logs" / "fail.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("x" * (page.LOG_TAIL_BYTES + 10) + "\n * ERROR: the build died here\n")
            r = swarm.run("swarm-delegate", "report", "--drone", "local", cpv, "--failed",
                          "--log", "logs/fail.log")
        else:
            r = swarm.run("swarm-delegate", "report", "--drone", "local", cpv, "--ok",
                          "--file", stage_dummy(swarm, "local", cpv))
        assert r.returncode == 0, r.stderr
        done.append(cpv)
    swarm.failed, swarm.received = done[0], done[1:]
    return swarm


def test_prometheus_text_parses_and_matches_json(busy):
    from prometheus_client.parser import text_string_to_metric_families

    figures = json.loads(busy.run("swarm-status", "--json").stdout)
    text = busy.run("swarm-status", "--prometheus").stdout
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for state, count in figures["states"].items():
        assert samples[("swarm_packages", (("profile", "default"), ("state", state)))] == count
    assert figures["states"]["failed"] == 1 and figures["states"]["received"] == 2
    assert samples[("swarm_drones_online", ())] == figures["drones_online"]
    assert samples[("swarm_drones_known", ())] == figures["drones_known"]
    for d in figures["drones"]:
        assert samples[("swarm_builds_total", (("drone", d["drone"]), ("result", "ok")))] == d["built"]
        assert samples[("swarm_builds_total", (("drone", d["drone"]), ("result", "failed")))] == d["failed"]
    assert samples[("swarm_staging_bytes", ())] == figures["staging_bytes"] > 0
    # An age: the two commands ran a moment apart.
    assert 0 <= samples[("swarm_oldest_received_seconds", ())] - figures["oldest_received_seconds"] <= 5
    for rule, n in figures["blocked"].items():
        assert samples[("swarm_packages_kept_back", (("profile", "default"), ("rule", rule)))] == n
    from swarmtools import clock

    assert samples[("swarm_last_scan_timestamp_seconds", ())] == \
        clock.parse(figures["last_scan"]["at"]).timestamp()
    assert ("swarm_last_sync_timestamp_seconds", ()) not in samples  # never ran: no sample
    assert promtool_check(text) == ""


def test_promtool_finds_the_metrics_clean(busy):
    # node_exporter serves a family promtool finds no help text for as untyped.
    assert promtool_check(busy.run("swarm-status", "--prometheus").stdout) == ""


@pytest.mark.slow
def test_promtool_finds_every_family_of_a_real_swarm_clean(example_swarm):
    """Every family (the last sync's too) of a swarm that built and published the example world."""
    assert example_swarm.run("swarm-sync").returncode == 0
    text = example_swarm.run("swarm-status", "--prometheus").stdout
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert {"swarm_builds_total", "swarm_last_scan_timestamp_seconds",
            "swarm_last_sync_timestamp_seconds"} <= families
    assert promtool_check(text) == ""


def test_page_is_strict_html5_with_twin_and_failure_log(busy, tmp_path):
    out = tmp_path / "www" / "index.html"
    out.parent.mkdir()
    r = busy.run("swarm-status", "--html", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    text = out.read_text()
    strict_html(text)
    twin = json.loads(out.with_suffix(".json").read_text())
    figures = json.loads(busy.run("swarm-status", "--json").stdout)
    assert twin["states"] == figures["states"] and twin["headline"] in text
    (failure,) = twin["failures"]
    assert failure["cpv"] == busy.failed and failure["kind"] == "build"
    published = out.parent / failure["log_url"]
    assert f'href="{failure["log_url"]}"' in text
    # Its end, capped: where emerge says what went wrong.
    assert published.read_text().endswith(" * ERROR: the build died here\n")
    assert published.stat().st_size < page.LOG_TAIL_BYTES + 200
    assert "left out" in published.read_text().splitlines()[0]
    # Once the package is no longer failed, its log leaves the web root.
    assert busy.run("swarm-fresh", "-q", "--force", "--from",
                    str(EMERGE_DATA / "varieties-01.txt")).returncode == 0  # retires it
    assert busy.run("swarm-status", "--html", str(out)).returncode == 0
    assert not published.exists() and json.loads(out.with_suffix(".json").read_text())["failures"] == []


@pytest.mark.slow
def test_a_failure_and_its_log_are_one_click_apart_in_a_browser(busy, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    assert busy.run("swarm-status", "--html", str(www / "index.html")).returncode == 0
    with HttpServer(www) as http, browser() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = chromium.new_page()
        tab.goto(f"{http.url}/index.html")
        assert busy.failed in tab.inner_text("#failures") and "build" in tab.inner_text("#failures")
        with tab.expect_navigation():
            tab.click("#failures a")
        assert tab.inner_text("body").rstrip().endswith("ERROR: the build died here")
        chromium.close()


def test_page_into_a_missing_directory_names_the_directory(busy, tmp_path):
    missing = tmp_path / "www"
    r = busy.run("swarm-status", "--html", str(missing / "index.html"))
    assert r.returncode == 2, r.stderr
    one_line_error(r, "swarm-status")
    assert f"{missing} is not a directory" in r.stderr and "mkdir -p" in r.stderr, r.stderr
    assert not missing.exists()  # nothing written by halves (the failure's log neither)
    (tmp_path / "file").write_text("")
    r = busy.run("swarm-status", "--html", str(tmp_path / "file" / "index.html"))
    assert r.returncode == 2 and f"{tmp_path / 'file'} is not a directory" in r.stderr, r.stderr


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    target = tmp_path / "gone" / "index.html"
    with pytest.raises(FileNotFoundError) as failed:
        write_atomic(target, "<html>")
    assert failed.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_page_options_refuse_to_mix(busy, tmp_path):
    r = busy.run("swarm-status", "--html", str(tmp_path / "x.html"), "--prometheus")
    assert r.returncode == 2 and "do not go together" in r.stderr
    r = busy.run("swarm-status", "--prometheus", "--json")
    assert r.returncode == 2 and "--json" in r.stderr


@pytest.mark.slow
def test_writing_the_page_while_a_browser_fetches_it_never_shows_half(busy, tmp_path, monkeypatch):
    from swarmtools import clock, config, db

    # Padded to 4 MB, a page takes long enough to write that the browser
    # would catch a writer that wrote it in place instead of renaming it.
    padding = "<!--" + "x" * 4_000_000 + "-->"
    plain = page.render
    monkeypatch.setattr(page, "render", lambda data, twin: plain(data, twin).replace(
        "</body>", padding + "</body>"))
    www = tmp_path / "www"
    www.mkdir()
    out = www / "index.html"
    settings = config.load(busy.config)
    stop = threading.Event()
    writes = []

    def writer():
        conn = db.connect(busy.db, writer=False)
        while not stop.is_set():
            page.write(conn, settings, clock.utcnow(), out)
            writes.append(out.stat().st_size)
        conn.close()

    bodies = []
    writer_thread = threading.Thread(target=writer)
    page.write(db.connect(busy.db, writer=False), settings, clock.utcnow(), out)
    writes.append(out.stat().st_size)
    with HttpServer(www) as http, browser() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = chromium.new_page()
        writer_thread.start()
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                # (A file that shrinks as it is served leaves the browser waiting.)
                response = tab.goto(f"{http.url}/index.html", timeout=10_000)
                bodies.append((response.status, response.text()))
        finally:
            stop.set()
            writer_thread.join()
            chromium.close()
    assert len(writes) >= 10 and len(bodies) >= 5, (len(writes), len(bodies))
    for status, body in bodies:
        size = len(body.encode())
        assert status == 200 and size in set(writes) and body.endswith("</html>\n"), size
        assert body.startswith("<!DOCTYPE html>") and 'id="headline"' in body


def test_history_prints_the_latest_events_oldest_first(busy):
    lines = busy.run("swarm-status", "--history", "--last", "3").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["built", "claimed", "built"]
    assert events[-1]["cpv"] == busy.received[-1] and events[0]["at"] <= events[-1]["at"]
    one = [json.loads(line) for line in
           busy.run("swarm-status", "--history", busy.failed).stdout.splitlines()]
    assert [e["event"] for e in one] == ["added", "claimed", "build-failed"]
    assert "log" in one[-1]["detail"]


def run_on_terminal(args: list[str], env: dict) -> str:
    """Run ARGS with stdout and stderr on a pseudo-terminal (as a person would); its output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        out += chunk
    proc.wait()
    os.close(leader)
    return out.decode(errors="replace")


def test_sync_shows_progress_at_a_terminal_and_never_in_a_pipe(busy):
    # The dummy files are quarantined (not gpkgs): every package is still checked.
    shown = run_on_terminal([script("swarm-sync")], busy.env)
    assert "swarm-sync: checking 1/2" in shown and "checking 2/2" in shown, shown
    assert "quarantined 2 package(s)" in shown
    again = busy.run("swarm-delegate", "claim", "--drone", "local", "--json")
    cpv = json.loads(again.stdout)["cpv"]
    busy.run("swarm-delegate", "report", "--drone", "local", cpv, "--ok",
             "--file", stage_dummy(busy, "local", cpv))
    piped = busy.run("swarm-sync")
    assert "checking" not in piped.stderr and "quarantined 1 package(s)" in piped.stderr
    quiet = run_on_terminal([script("swarm-sync"), "--quiet"], busy.env)
    assert "checking" not in quiet


@pytest.mark.slow
def test_the_page_of_a_real_swarm_in_a_real_browser(example_swarm, tmp_path):
    """Two drones built the example world with the real emerge; the page shows what
    swarm-status --json says, its charts hold the history, and nothing is fetched from
    anywhere but the page itself."""
    swarm = example_swarm
    assert swarm.run("swarm-sync").returncode == 0  # the last sync, on the page
    www = tmp_path / "www"
    www.mkdir()
    r = swarm.run("swarm-status", "--html", str(www / "index.html"))
    assert r.returncode == 0, r.stderr
    figures = json.loads(swarm.run("swarm-status", "--json").stdout)
    twin = json.loads((www / "index.json").read_text())
    assert figures["states"]["synced"] >= 10 and figures["builds_ok"] >= 10
    strict_html((www / "index.html").read_text())
    assert (www / "index.html").stat().st_size < 200_000

    with HttpServer(www) as http, browser() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = chromium.new_page(viewport={"width": 390, "height": 844})  # a phone
        requests = []
        tab.on("request", lambda req: requests.append(req.url))
        tab.goto(f"{http.url}/index.html")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

        # The figures shown are swarm-status --json's.
        assert tab.inner_text("#headline") == page.headline(figures)
        for state, count in figures["states"].items():
            assert tab.inner_text(f'#states [data-state="{state}"]') == f"{count:,}"
        rows = tab.eval_on_selector_all("#drones tbody tr", "rs => rs.map(r =>"
                                        " Array.from(r.cells, c => c.innerText))")
        assert {(r[0], r[4], r[5]) for r in rows} == {
            (d["drone"], str(d["built"]), str(d["failed"])) for d in figures["drones"]}
        assert tab.inner_text("#staging-bytes") == f"{figures['staging_bytes']:,}"
        assert figures["last_sync"]["at"] in tab.inner_text("body")

        # Each chart: its data points are the history's.
        points = tab.eval_on_selector_all(
            "#queue-chart circle.point",
            "cs => cs.map(c => [c.dataset.state, c.dataset.at, Number(c.dataset.value)])")
        history = twin["queue_history"]
        assert sorted(points) == sorted([s, at, v] for s, values in history["states"].items()
                                        for at, v in zip(history["at"], values))
        assert {s: v[-1] for s, v in history["states"].items()} == figures["states"]
        # The queue filled, then drained: the chart holds the build, not only its end.
        assert history["states"]["needed"][0] > 0 and history["states"]["needed"][-1] == 0
        assert history["states"]["synced"][0] < history["states"]["synced"][-1]
        bars = tab.eval_on_selector_all(
            "#builds-chart rect.bar", "rs => rs.map(r => [r.dataset.drone, Number(r.dataset.value)])")
        built = {}
        for drone, n in bars:
            built[drone] = built.get(drone, 0) + n
        assert built == {d["drone"]: d["built"] for d in figures["drones"] if d["built"]}
        longest = tab.eval_on_selector_all(
            "#longest-chart rect.bar", "rs => rs.map(r => [r.dataset.cpv, Number(r.dataset.value)])")
        assert longest == [[b["cpv"], b["seconds"]] for b in twin["longest_builds"]]
        assert len(longest) == min(page.LONGEST, figures["builds_ok"])
        chromium.close()
    assert requests == [f"{http.url}/index.html"], requests  # nothing else, nothing from elsewhere


# --- what the page must be to be read: contrast, captions, words for every figure ----------

def contrast(color: str, background: str = "#ffffff") -> float:
    """WCAG 2 contrast ratio of two colours (#rgb, #rrggbb or rgb(r, g, b))."""
    def luminance(text: str) -> float:
        text = text.strip().lower()
        if text.startswith("rgb"):
            channels = [int(c) for c in re.findall(r"\d+", text)[:3]]
        else:
            digits = text.lstrip("#")
            if len(digits) == 3:
                digits = "".join(c * 2 for c in digits)
            channels = [int(digits[i:i + 2], 16) for i in (0, 2, 4)]
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4
                  for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    lighter, darker = sorted((luminance(color), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_contrast_is_computed_as_wcag_does():
    assert round(contrast("#000"), 1) == 21.0 and round(contrast("#fff"), 1) == 1.0
    assert round(contrast("#767676"), 2) == 4.54  # the lightest grey that passes 4.5:1
    assert round(contrast("#d98e04"), 1) == 2.7  # the page's old 'needed', as the issue says


def test_the_pages_colours_contrast_with_its_background_and_every_table_has_a_caption(busy, tmp_path):
    out = tmp_path / "index.html"
    assert busy.run("swarm-status", "--html", str(out)).returncode == 0
    text = out.read_text()
    # The background the colours are measured against is the page's own.
    assert re.search(r"body\{[^}]*background:#fff", text)
    css = re.search(r"<style>(.*?)</style>", text, re.DOTALL).group(1)
    # Text: 4.5:1 (WCAG 1.4.3); the marks of the charts and the state swatches: 3:1 (1.4.11).
    # Borders between table rows only separate: they are not measured.
    text_colors = set(re.findall(r"(?<![-\w])(?:color|fill):(#[0-9a-fA-F]{3,6})", css))
    marks = set(re.findall(r'(?:fill|stroke)="(#[0-9a-fA-F]{3,6})"', text)) | \
        set(re.findall(r'style="color:(#[0-9a-fA-F]{3,6})"', text))
    assert text_colors and len(marks) >= 5
    low = {c: round(contrast(c), 2) for c in text_colors if contrast(c) < 4.5}
    low |= {c: round(contrast(c), 2) for c in marks if contrast(c) < 3}
    assert not low, f"colours below their contrast on white: {low}"
    for color in [*page.COLORS.values(), *page.DRONE_COLORS]:
        assert contrast(color) >= 3, color

    import html5lib

    document = html5lib.parse(text, namespaceHTMLElements=False)
    tables = document.findall(".//table")
    assert len(tables) >= 4
    for table in tables:
        caption = table.find("caption")
        assert caption is not None and "".join(caption.itertext()).strip(), \
            html5lib.serialize(table)[:200]
    # Words for what the JSON, the table and the metrics already said: the profiles, and
    # what a drone's speed means.
    profiles = document.find(".//table[@id='profiles']")
    assert profiles is not None
    words = " ".join(profiles.itertext())
    assert "default" in words and "binhost" in words
    (speed,) = [th for th in document.findall(".//table[@id='drones']//th")
                if "speed" in "".join(th.itertext())]
    assert "×" in "".join(speed.itertext())
    note = "".join(document.find(".//*[@id='speed-note']").itertext())
    assert "half the time" in note
    # Every chart names its axes, and a time axis its time zone.
    for chart in ("queue-chart", "builds-chart", "longest-chart"):
        svg = document.find(f".//*[@id='{chart}']")
        titles = ["".join(t.itertext()) for t in svg.iter()  # (SVG's namespace)
                  if str(t.tag).endswith("text") and "axis-title" in t.get("class", "")]
        assert titles, chart
        if chart != "longest-chart":
            assert any("UTC" in t for t in titles), (chart, titles)


def chart_geometry(tab) -> list[dict]:
    """Each chart's text as drawn: its effective font size (CSS px) and box, and the chart's."""
    return tab.eval_on_selector_all("figure svg", """svgs => svgs.map(svg => {
        const box = svg.getBoundingClientRect();
        const scale = box.width / svg.viewBox.baseVal.width;
        return {id: svg.id, box: [box.left, box.top, box.right, box.bottom],
                texts: Array.from(svg.querySelectorAll('text'), t => {
                    const r = t.getBoundingClientRect();
                    return {text: t.textContent,
                            px: parseFloat(getComputedStyle(t).fontSize) * scale,
                            box: [r.left, r.top, r.right, r.bottom]};
                })};
    })""")


def overlap(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def accessible_names(tab) -> list[str]:
    """Every name in Chromium's accessibility tree (what a screen reader can reach)."""
    session = tab.context.new_cdp_session(tab)
    nodes = session.send("Accessibility.getFullAXTree")["nodes"]
    return [n.get("name", {}).get("value", "") for n in nodes if not n.get("ignored")]


@pytest.mark.slow
def test_the_page_reads_at_390_and_1280_px_in_a_real_browser(example_swarm, tmp_path, capsys):
    """The page of a real swarm, at a phone's width and a desktop's: chart text of a readable
    size that neither overlaps nor leaves its chart, nothing wider than the screen, text and
    marks that contrast, each series told by its name, every point reachable by a screen
    reader. Screenshots of both are kept (their paths are printed)."""
    swarm = example_swarm
    www = tmp_path / "www"
    www.mkdir()
    assert swarm.run("swarm-status", "--html", str(www / "index.html")).returncode == 0
    figures = json.loads((www / "index.json").read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with HttpServer(www) as http, browser() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for width in (390, 1280):
            tab = chromium.new_page(viewport={"width": width, "height": 900})
            tab.goto(f"{http.url}/index.html")
            shot = tmp_path / f"status-page-{width}px.png"
            tab.screenshot(path=str(shot), full_page=True)
            shutil.copy(shot, ARTIFACTS / shot.name)
            with capsys.disabled():  # shown however pytest captures output
                print(f"\nscreenshot at {width} px: {ARTIFACTS / shot.name} (and {shot})")

            assert tab.evaluate("document.documentElement.scrollWidth") <= width
            charts = chart_geometry(tab)
            assert {c["id"] for c in charts} >= {"queue-chart", "builds-chart", "longest-chart"}
            for chart in charts:
                for t in chart["texts"]:
                    assert t["px"] >= 11, (width, chart["id"], t)
                    left, top, right, bottom = chart["box"]
                    assert (t["box"][0] >= left - 1 and t["box"][2] <= right + 1
                            and t["box"][1] >= top - 1 and t["box"][3] <= bottom + 1), \
                        (width, chart["id"], t)
                for i, a in enumerate(chart["texts"]):
                    for b in chart["texts"][i + 1:]:
                        assert overlap(a["box"], b["box"]) < 1, (width, chart["id"], a, b)

            # Contrast as drawn: text 4.5:1, the charts' marks 3:1, on the page's background.
            assert tab.evaluate("getComputedStyle(document.body).backgroundColor") == \
                "rgb(255, 255, 255)"
            colors = tab.evaluate("""() => {
                const found = [];
                for (const el of document.querySelectorAll('body *')) {
                    const own = Array.from(el.childNodes).some(
                        n => n.nodeType === 3 && n.textContent.trim());
                    const style = getComputedStyle(el);
                    // (A swatch is a glyph hidden from screen readers: a mark, not words.)
                    if (own && el.getClientRects().length)
                        found.push([el.closest('[aria-hidden=true]') ? 'mark' : 'text',
                                    el.tagName,
                                    el instanceof SVGElement ? style.fill : style.color]);
                    if (el.matches('.point, .bar, .series, .axis'))
                        for (const paint of [style.fill, style.stroke])
                            if (paint.startsWith('rgb')) found.push(['mark', el.tagName, paint]);
                }
                return found;
            }""")
            low = {(kind, tag, color) for kind, tag, color in colors
                   if contrast(color) < (4.5 if kind == "text" else 3)}
            assert not low, (width, low)
            tab.close()

        # Each series is told by its name, not by its colour alone.
        tab = chromium.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(f"{http.url}/index.html")
        labels = tab.eval_on_selector_all("#queue-chart .series-label",
                                          "ts => ts.map(t => t.dataset.series)")
        assert sorted(labels) == sorted(figures["states"])
        labels = tab.eval_on_selector_all("#builds-chart .series-label",
                                          "ts => ts.map(t => t.dataset.series)")
        assert sorted(labels) == sorted(figures["builds_per_hour"]["drones"])
        # Every point's words reach a screen reader, not only a mouse.
        titles = tab.eval_on_selector_all(
            "#queue-chart .point title, #builds-chart .bar title, #longest-chart .bar title",
            "ts => ts.map(t => t.textContent)")
        names = set(accessible_names(tab))
        assert titles and not [t for t in titles if t not in names], \
            [t for t in titles if t not in names][:5]
        # The profiles, as the JSON has them.
        profiles = tab.inner_text("#profiles")
        for name, share in figures["profiles"].items():
            assert name in profiles and share["binhost"] in profiles
            assert share["profile"]["digest"][:12] in profiles
        chromium.close()
