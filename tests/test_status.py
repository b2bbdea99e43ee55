"""swarm-status: figures derived from the database, table and JSON."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from conftest import EMERGE_DATA, database_at, promtool_check

from swarmtools import db, packages


def test_status_counts_states_drones_and_success_rate(swarm):
    swarm.scan(source=str(EMERGE_DATA / "varieties-15.txt"))
    conn = db.connect(swarm.db)
    now = datetime.now(UTC)
    with db.write(conn):
        # Facts as swarm-delegate will write them: two heartbeats, three outcomes.
        conn.execute("INSERT INTO drones (name, last_heartbeat, facts) VALUES (?, ?, ?)",
                     ("local", now.isoformat(), json.dumps({"arch": "amd64"})))
        conn.execute("INSERT INTO drones (name, last_heartbeat) VALUES (?, ?)",
                     ("gone", (now - timedelta(hours=1)).isoformat()))
        conn.execute("UPDATE packages SET status = 'delegated', drone = 'local'"
                     " WHERE cp = 'app-misc/binme'")
        conn.execute("UPDATE packages SET status = 'synced' WHERE cp = 'sys-apps/reinst'")
        for drone, event in (("local", "built"), ("local", "built"), ("gone", "build-failed")):
            packages.record(conn, 1, event, drone, now.isoformat(), "delegated", "received")
    conn.close()

    figures = json.loads(swarm.run("swarm-status", "--json").stdout)
    assert figures["states"] == {"needed": 5, "delegated": 1, "received": 0, "synced": 1, "failed": 0}
    assert (figures["drones_online"], figures["drones_known"]) == (1, 2)
    assert (figures["builds_ok"], figures["builds_failed"], figures["success_rate"]) == (2, 1, 0.6667)
    drones = {d["drone"]: d for d in figures["drones"]}
    assert drones["local"]["online"] and drones["local"]["building"] == 1
    assert drones["local"]["facts"] == {"arch": "amd64"}
    assert not drones["gone"]["online"] and not drones["gone"]["configured"]
    assert figures["last_scan"]["added"] == 7

    table = swarm.run("swarm-status").stdout
    assert "drones online: 1/2" in table and "66.7%" in table
    assert "needed 5" in table and "local" in table


def test_packages_ndjson_filtered_by_state(swarm):
    swarm.scan(source=str(EMERGE_DATA / "varieties-04.txt"))
    swarm.scan(source=str(EMERGE_DATA / "varieties-01.txt"))
    lines = swarm.run("swarm-status", "--packages", "--state", "needed").stdout.splitlines()
    assert [json.loads(l)["cpv"] for l in lines] == [
        "app-misc/testing-1", "app-misc/ask-1", "media-video/fetchme-8", "dev-lang/slotty-2.1",
        "app-misc/newpkg-1.0"]
    everything = swarm.run("swarm-status", "--packages", "--retired").stdout.splitlines()
    assert json.loads(everything[-1]) | {} and json.loads(everything[-1])["active"] is False
    r = swarm.run("swarm-status", "--state", "needed")
    assert r.returncode == 2 and "--packages" in r.stderr


def test_status_without_a_database_says_what_to_do(swarm):
    r = swarm.run("swarm-status")
    assert r.returncode == 2 and "run 'swarm-fresh' first" in r.stderr
    assert not swarm.db.exists()


def one_row_scan(tmp_path, cpv: str) -> str:
    """A saved scan whose world is one package, CPV."""
    path = tmp_path / f"{cpv.replace('/', '_')}.txt"
    path.write_text(f"[ebuild  N     ] {cpv}::gentoo  0 KiB\n\nTotal: 1 packages (1 new), Size of"
                    " downloads: 0 KiB\n")
    return str(path)


def build_by_hand(swarm, drone: str, cpv: str, build_id: int = 1) -> str:
    """Claim CPV for DRONE and report it built, with a stand-in file in staging."""
    r = swarm.run("swarm-delegate", "claim", "--drone", drone, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cpv"] == cpv, (r.stdout, r.stderr)
    category, pf = cpv.split("/")
    pn = pf.rsplit("-", 1)[0]
    relative = f"{category}/{pn}/{pf}-{build_id}.gpkg.tar"
    target = swarm.root / "state" / "staging" / drone / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not a gpkg")
    r = swarm.run("swarm-delegate", "report", "--drone", drone, cpv, "--ok", "--file", relative)
    assert r.returncode == 0, r.stderr
    return relative


def test_history_names_the_version_each_event_was_about(swarm, tmp_path):
    old, new = "app-misc/example-docs-1.0", "app-misc/example-docs-1.1"
    swarm.scan(source=one_row_scan(tmp_path, old))
    first = build_by_hand(swarm, "local", old)
    swarm.scan(source=one_row_scan(tmp_path, new))
    build_by_hand(swarm, "local", new)

    lines = swarm.run("swarm-status", "--history", "app-misc/example-docs").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    built = [(e["cpv"], e["detail"].split()[0]) for e in events if e["event"] == "built"]
    assert built == [(old, f"local/{first}"),
                     (new, "local/app-misc/example-docs/example-docs-1.1-1.gpkg.tar")]
    assert [(e["event"], e["cpv"]) for e in events] == [
        ("added", old), ("claimed", old), ("built", old),
        ("requeued", new), ("claimed", new), ("built", new)]
    # One version's history, by its CPV: the build of 1.0 is found after 1.1 took its row.
    lines = swarm.run("swarm-status", "--history", old).stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["added", "claimed", "built"]

    from swarmtools import clock, page

    conn = db.connect(swarm.db, writer=False)
    longest = page.longest_builds(conn, clock.utcnow())
    assert sorted(b["cpv"] for b in longest) == [old, new]
    conn.close()


def test_the_migration_gives_old_events_the_version_their_history_proves(tmp_path):
    """Events written before they kept their CPV: the migration reads it from the history."""

    path = tmp_path / "old.db"
    conn = database_at(path, 10)  # the schema before events kept their CPV
    rows = "INSERT INTO packages (id, cp, slot, cpv, status, active, first_seen, updated_at)" \
           " VALUES (?, ?, '0', ?, ?, 1, 't', 't')"
    conn.execute(rows, (1, "app-misc/docs", "app-misc/docs-1.2", "received"))
    conn.execute(rows, (2, "app-misc/back", "app-misc/back-3", "needed"))
    conn.execute(rows, (3, "app-misc/lost", "app-misc/lost-2", "delegated"))
    history = [  # (package, event, from, to, detail): as the code before wrote them
        (1, "added", None, "needed", ""),
        (1, "claimed", "needed", "delegated", "lease until t"),
        (1, "built", "delegated", "received", ("d1/app-misc/docs/docs-1.0-4.gpkg.tar (3 bytes, "
                                               "sha256 x)")),
        (1, "synced", "received", "synced", "published as app-misc/docs/docs-1.0-4.gpkg.tar"),
        (1, "requeued", "synced", "needed", "cpv app-misc/docs-1.0 -> app-misc/docs-1.1"),
        (1, "requeued", "needed", "needed", "use - -> doc"),  # a USE change: still 1.1
        (1, "claimed", "needed", "delegated", "lease until t"),
        (1, "requeued", "delegated", "needed", ("cpv app-misc/docs-1.1 -> app-misc/docs-1.2; "
                                                "use doc -> -")),
        (1, "claimed", "needed", "delegated", "lease until t"),
        (1, "built", "delegated", "received", ("d2/app-misc/docs/docs-1.2-1.gpkg.tar (3 bytes, "
                                               "sha256 y)")),
        # Retired, then back with another version: the event says not which it was.
        (2, "added", None, "needed", ""),
        (2, "claimed", "needed", "delegated", "lease until t"),
        (2, "built", "delegated", "received", ("d1/app-misc/back/back-1-2.gpkg.tar (3 bytes, "
                                               "sha256 z)")),
        (2, "retired", "received", "received", "no longer in the merge list"),
        (2, "added", "received", "needed", "back in the merge list"),
        (2, "claimed", "needed", "delegated", "lease until t"),
        (2, "released", "delegated", "needed", ""),
        # The same, but no file name says which version it was: not known.
        (3, "added", None, "needed", ""),
        (3, "claimed", "needed", "delegated", "lease until t"),
        (3, "retired", "delegated", "needed", "no longer in the merge list; lease of d1 ended"),
        (3, "added", "needed", "needed", "back in the merge list"),
        (3, "claimed", "needed", "delegated", "lease until t"),
        (None, "grounded", None, None, "d1 failed 8 builds in a row"),
    ]
    for number, (package_id, event, before, after, detail) in enumerate(history):
        conn.execute("INSERT INTO events (package_id, at, actor, event, from_status, to_status,"
                     " detail) VALUES (?, ?, 'x', ?, ?, ?, ?)",
                     (package_id, f"2026-01-01T00:00:{number:02d}", event, before, after, detail))
    conn.close()

    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    found = [r[0] for r in conn.execute("SELECT cpv FROM events ORDER BY id")]
    assert found == ["app-misc/docs-1.0"] * 4 + ["app-misc/docs-1.1"] * 3 + \
        ["app-misc/docs-1.2"] * 3 + ["app-misc/back-1"] * 4 + ["app-misc/back-3"] * 3 + \
        [None] * 3 + ["app-misc/lost-2"] * 2 + [None]
    # What history shows of them: a version not known is not guessed.
    from swarmtools import status

    assert [e["cpv"] for e in status.history(conn, "app-misc/lost")] == \
        ["app-misc/lost"] * 3 + ["app-misc/lost-2"] * 2
    # Still append-only.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET cpv = 'x'")
    conn.close()


def test_the_success_rate_counts_only_the_packages_own_failures(swarm):
    """As in the held-out run: 8 built, 1 failed for real, 4 waited for a dependency. Then
    a full disk and a failed fetch, the drone's trouble. The rate is 8 of 9."""
    from conftest import synthetic_scan

    swarm.scan(synthetic_scan(15))
    reports = [["--ok"]] * 8 + [["--failed", "--kind", "build"]] + \
        [["--failed", "--kind", "missing-binary-dependency"]] * 4 + \
        [["--failed", "--kind", "environment"], ["--failed", "--kind", "fetch"]]
    for report in reports:
        r = swarm.run("swarm-delegate", "claim", "--drone", "local", "--json")
        cpv = json.loads(r.stdout)["cpv"]
        if report == ["--ok"]:
            category, pf = cpv.split("/")
            relative = f"{category}/x/{pf}-1.gpkg.tar"
            target = swarm.root / "state" / "staging" / "local" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not a gpkg")
            report = ["--ok", "--file", relative]
        r = swarm.run("swarm-delegate", "report", "--drone", "local", cpv, *report)
        assert r.returncode == 0, r.stderr

    figures = json.loads(swarm.run("swarm-status", "--json").stdout)
    assert (figures["builds_ok"], figures["builds_failed"], figures["success_rate"]) == \
        (8, 1, 0.8889)
    assert (figures["builds_dependency_waits"], figures["builds_drone_trouble"]) == (4, 2)
    assert figures["failures_by_kind"] == {"build": 1, "stalled": 0,
                                           "missing-binary-dependency": 4, "environment": 1,
                                           "fetch": 1}
    (local,) = figures["drones"]
    assert (local["built"], local["failed"], local["success_rate"], local["dependency_waits"],
            local["drone_trouble"]) == (8, 1, 0.8889, 4, 2)
    assert local["failures_by_kind"] == figures["failures_by_kind"]

    table = swarm.run("swarm-status").stdout
    assert "88.9% (8 built, 1 failed; apart: 4 waited for dependencies, 2 drone trouble)" \
        in table, table

    from swarmtools import page

    assert "88.9% success rate (8/9) (apart: 4 waited for dependencies, 2 drone trouble)" in \
        page.headline(figures)

    from prometheus_client.parser import text_string_to_metric_families

    text = swarm.run("swarm-status", "--prometheus").stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    builds = {labels[1][1]: value for (name, labels), value in samples.items()
              if name == "swarm_builds_total"}
    assert builds == {"ok": 8, "failed": 1, "dependency_wait": 4, "drone_trouble": 2}
    kinds = {labels[1][1]: value for (name, labels), value in samples.items()
             if name == "swarm_build_failures_total"}
    assert kinds == figures["failures_by_kind"]
    promtool(text)


def promtool(text: str) -> None:
    """promtool check metrics finds nothing to say of TEXT (skipped where it is not installed)."""
    assert promtool_check(text) == ""


def test_status_the_page_and_why_show_which_drones_build_in_their_live_system(swarm, tmp_path):
    from conftest import add_drones, synthetic_scan

    add_drones(swarm.config, {"d1": {"transport": "local"},
                              "d2": {"transport": "local", "isolation": "none"}})
    swarm.scan(synthetic_scan(1))
    for name, isolation in (("d1", "overlay"), ("d2", "none")):
        facts = {"isolation": isolation, "build_root": f"/var/lib/{name}"}
        r = swarm.run("swarm-delegate", "heartbeat", "--drone", name, input=json.dumps(facts))
        assert r.returncode == 0, r.stderr

    drones = {d["drone"]: d for d in json.loads(swarm.run("swarm-status", "--json").stdout)["drones"]}
    assert (drones["d1"]["isolation"], drones["d2"]["isolation"]) == ("overlay", "none")
    assert drones["d2"]["facts"]["build_root"] == "/var/lib/d2"

    rows = {line.split()[0]: line for line in swarm.run("swarm-status").stdout.splitlines()
            if line.startswith(("d1 ", "d2 "))}
    assert "throw-away root" in rows["d1"] and "live system" in rows["d2"], rows

    why = swarm.run("swarm-status", "--why", "app-test/pkg0-1.0").stdout
    assert "  d2: builds in its live system (isolation = none)" in why.splitlines(), why
    assert "d1: builds in" not in why
    answer = json.loads(swarm.run("swarm-status", "--why", "app-test/pkg0-1.0", "--json").stdout)
    assert {d["drone"]: d["isolation"] for d in answer["drones"]} == {"d1": "overlay",
                                                                      "d2": "none"}

    out = tmp_path / "index.html"
    assert swarm.run("swarm-status", "--html", str(out)).returncode == 0
    page_text = out.read_text()
    drones = page_text[page_text.index('id="drones"'):]
    assert "builds in" in drones and "its live system (isolation = none)" in drones
