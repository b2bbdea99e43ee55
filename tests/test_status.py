"""swarm-status: figures derived from the database, table and JSON."""

import json
from datetime import UTC, datetime, timedelta

from conftest import EMERGE_DATA

from swarmtools import db, packages


def test_status_counts_states_drones_and_success_rate(swarm):
    assert swarm.run("swarm-fresh", "-q", "--from", str(EMERGE_DATA / "varieties-15.txt")).returncode == 0
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
    swarm.run("swarm-fresh", "-q", "--from", str(EMERGE_DATA / "varieties-04.txt"))
    swarm.run("swarm-fresh", "-q", "--from", str(EMERGE_DATA / "varieties-01.txt"))
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
