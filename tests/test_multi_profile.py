"""Several build profiles: what each wants, builds shared on one binhost, split on two.

Scans are saved emerge output (--from) here; tests/test_profiles.py runs the
same with the real emerge and drones.
"""

import json
import sqlite3

import pytest
from conftest import HandDrone, add_drones, database_at

from swarmtools import db
from swarmtools.config import edit
from swarmtools.errors import ConfigError


def scan(*rows: tuple[str, str]) -> str:
    """emerge --pretend --verbose output of (cpv, USE) rows."""
    lines = ["", "These are the packages that would be merged, in order:", "",
             "Calculating dependencies... done!"]
    for cpv, use in rows:
        lines.append(f'[ebuild  N     ] {cpv}::swarm-example  USE="{use}" 0 KiB')
    total = f"Total: {len(rows)} packages ({len(rows)} new), Size of downloads: 0 KiB"
    return "\n".join([*lines, "", total, ""])


PLAIN = ("app-misc/plain-1", "")
WITH = ("app-misc/flavour-1", "feature")
WITHOUT = ("app-misc/flavour-1", "-feature")


def fresh(swarm, profile: str, text: str, code: int = 0) -> dict:
    r = swarm.run("swarm-fresh", "--profile", profile, "--from", "-", "--json", input=text)
    assert r.returncode == code, r.stderr
    return json.loads(r.stdout)


def two_profiles(swarm, tmp_path, second_binhost: bool = False) -> None:
    add_drones(swarm.config, {name: {"transport": "local"} for name in ("d1", "d2", "d3", "d4")})
    changes = {"profiles": {"main": {}, "twin": {}}}
    if second_binhost:
        (tmp_path / "binhost-other").mkdir()
        changes["binhosts"] = {"other": {"path": str(tmp_path / "binhost-other"),
                                         "url": "http://127.0.0.1:9/other"}}
        changes["profiles"]["twin"] = {"binhost": "other"}
    edit(swarm.config, changes)


def builds(swarm) -> list[tuple]:
    return swarm.query("SELECT binhost, cpv, use, active FROM packages"
                       " ORDER BY binhost, cpv, use, active")


def test_profiles_sharing_a_binhost_share_a_build_of_the_same_identity(swarm, tmp_path):
    two_profiles(swarm, tmp_path)
    assert fresh(swarm, "main", scan(PLAIN, WITH))["added"] == 2
    counts = fresh(swarm, "twin", scan(WITH, PLAIN))
    assert (counts["added"], counts["shared"]) == (0, 2)
    assert builds(swarm) == [("default", "app-misc/flavour-1", "feature", 1),
                             ("default", "app-misc/plain-1", "", 1)]
    assert sorted(swarm.query("SELECT profile, count(*) FROM wants WHERE active = 1"
                              " GROUP BY profile")) == [("main", 2), ("twin", 2)]
    # One build serves both: a drone builds each once.
    done = HandDrone(swarm, tmp_path).claim(), HandDrone(swarm, tmp_path, "d2").claim()
    assert sorted(done) == ["app-misc/flavour-1", "app-misc/plain-1"]
    assert HandDrone(swarm, tmp_path, "d3").claim() is None
    shares = json.loads(swarm.run("swarm-status", "--json").stdout)["profiles"]
    assert {name: (s["binhost"], s["packages"], s["states"]["delegated"])
            for name, s in shares.items()} == {"main": ("default", 2, 2),
                                               "twin": ("default", 2, 2)}
    # One profile dropping a shared build keeps it for the other.
    counts = fresh(swarm, "twin", scan(PLAIN))
    assert counts["retired"] == 0
    assert [r[3] for r in builds(swarm)] == [1, 1]
    assert swarm.query("SELECT e.event FROM events e JOIN packages p ON p.id = e.package_id"
                       " WHERE p.cpv = 'app-misc/flavour-1' ORDER BY e.id") == [
        ("added",), ("wanted",), ("claimed",), ("unwanted",)]
    # ...until the last profile wanting it drops it.
    assert fresh(swarm, "main", scan(PLAIN))["retired"] == 1
    assert [r[3] for r in builds(swarm)] == [0, 1]


def test_other_use_on_a_shared_binhost_is_a_second_build_beside_the_first(swarm, tmp_path):
    two_profiles(swarm, tmp_path)
    fresh(swarm, "main", scan(PLAIN, WITH))
    counts = fresh(swarm, "twin", scan(PLAIN, WITHOUT))
    assert (counts["added"], counts["shared"]) == (1, 1)
    assert builds(swarm) == [("default", "app-misc/flavour-1", "", 1),
                             ("default", "app-misc/flavour-1", "feature", 1),
                             ("default", "app-misc/plain-1", "", 1)]
    wanted = swarm.query("SELECT w.profile, p.cpv, p.use FROM wants w JOIN packages p"
                         " ON p.id = w.package_id WHERE w.active = 1 ORDER BY w.profile, p.cpv, p.use")
    assert wanted == [("main", "app-misc/flavour-1", "feature"), ("main", "app-misc/plain-1", ""),
                      ("twin", "app-misc/flavour-1", ""), ("twin", "app-misc/plain-1", "")]
    r = swarm.run("swarm-status", "--why", "app-misc/flavour", "--json")
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted((a["use"], a["binhost"], a["profiles"]) for a in answers) == [
        ("", "default", ["twin"]), ("feature", "default", ["main"])]
    text = swarm.run("swarm-status", "--why", "app-misc/flavour").stdout
    assert 'app-misc/flavour-1: needed (binhost default, USE="feature", wanted by main)' in text
    # Rescans change nothing; twin taking main's USE again shares main's build.
    assert fresh(swarm, "main", scan(PLAIN, WITH))["unchanged"] == 2
    assert fresh(swarm, "twin", scan(PLAIN, WITHOUT))["unchanged"] == 2
    counts = fresh(swarm, "twin", scan(PLAIN, WITH))
    assert (counts["shared"], counts["retired"]) == (1, 1)
    assert builds(swarm) == [("default", "app-misc/flavour-1", "", 0),
                             ("default", "app-misc/flavour-1", "feature", 1),
                             ("default", "app-misc/plain-1", "", 1)]
    # A profile alone on a build changes it in place (its history stays in one row).
    fresh(swarm, "twin", scan(PLAIN))
    assert fresh(swarm, "main", scan(PLAIN, WITHOUT))["requeued"] == 1
    assert builds(swarm) == [("default", "app-misc/flavour-1", "", 0),
                             ("default", "app-misc/flavour-1", "", 1),
                             ("default", "app-misc/plain-1", "", 1)]


def test_other_use_on_a_binhost_of_its_own_builds_twice(swarm, tmp_path):
    two_profiles(swarm, tmp_path, second_binhost=True)
    fresh(swarm, "main", scan(PLAIN, WITH))
    counts = fresh(swarm, "twin", scan(PLAIN, WITHOUT))
    assert (counts["added"], counts["shared"]) == (2, 0)
    assert builds(swarm) == [("default", "app-misc/flavour-1", "feature", 1),
                             ("default", "app-misc/plain-1", "", 1),
                             ("other", "app-misc/flavour-1", "", 1),
                             ("other", "app-misc/plain-1", "", 1)]
    # Each claim says which binhost the build is for (the drone's PORTAGE_BINHOST).
    claims = []
    for name in ("d1", "d2", "d3", "d4"):
        r = swarm.run("swarm-delegate", "claim", "--drone", name, "--json")
        assert r.returncode == 0, r.stderr
        claims.append(json.loads(r.stdout))
    assert sorted((c["cpv"], c["use"], c["binhost"]["name"], c["binhost"]["url"]) for c in claims) == [
        ("app-misc/flavour-1", "", "other", "http://127.0.0.1:9/other"),
        ("app-misc/flavour-1", "feature", "default", "http://127.0.0.1:8080"),
        ("app-misc/plain-1", "", "default", "http://127.0.0.1:8080"),
        ("app-misc/plain-1", "", "other", "http://127.0.0.1:9/other")]
    metrics = swarm.run("swarm-status", "--prometheus").stdout
    assert 'swarm_packages{profile="twin",state="delegated"} 2' in metrics
    assert 'swarm_packages{profile="main",state="delegated"} 2' in metrics
    # A profile taken out of the config wants nothing: its builds retire at the next scan.
    edit(swarm.config, {"profiles": {"twin": None}})
    assert fresh(swarm, "main", scan(PLAIN, WITH))["forgotten"] == 2
    assert [r[3] for r in builds(swarm)] == [1, 1, 0, 0]


def test_a_build_only_a_removed_profile_wants_is_retired_not_claimed(swarm, tmp_path):
    two_profiles(swarm, tmp_path, second_binhost=True)
    fresh(swarm, "main", scan(PLAIN))
    fresh(swarm, "twin", scan(WITHOUT))
    edit(swarm.config, {"profiles": {"twin": None}, "binhosts": {"other": None}})
    # Before any scan: the claim retires twin's build instead of handing it out.
    first = json.loads(swarm.run("swarm-delegate", "claim", "--drone", "d1", "--json").stdout)
    assert (first["cpv"], first["binhost"]["name"]) == ("app-misc/plain-1", "default")
    assert swarm.run("swarm-delegate", "claim", "--drone", "d2", "--json").stdout == ""
    assert swarm.query("SELECT p.binhost, p.active, e.detail FROM packages p JOIN events e"
                       " ON e.package_id = p.id WHERE e.event = 'retired'") == [
        ("other", 0, "its binhost other is no longer in the config")]
    # A renamed profile: the old name's builds are forgotten before the scan,
    # and the new name's scan brings them back with their state and history.
    edit(swarm.config, {"profiles": {"main": None, "renamed": {}}})
    counts = fresh(swarm, "renamed", scan(PLAIN))
    assert (counts["forgotten"], counts["added"]) == (1, 1)
    assert swarm.query("SELECT cpv, status, active, drone FROM packages WHERE binhost = 'default'"
                       ) == [("app-misc/plain-1", "needed", 1, None)]
    assert swarm.query("SELECT e.event FROM events e JOIN packages p ON p.id = e.package_id"
                       " WHERE p.binhost = 'default' ORDER BY e.id") == [
        ("added",), ("claimed",), ("retired",), ("added",)]


def test_a_profile_moved_to_another_binhost_leaves_its_builds_without_force(swarm, tmp_path):
    many = [(f"app-misc/p{i}-1", "") for i in range(8)]
    two_profiles(swarm, tmp_path)
    fresh(swarm, "twin", scan(*many))
    (tmp_path / "binhost-other").mkdir()
    edit(swarm.config, {"binhosts": {"other": {"path": str(tmp_path / "binhost-other"),
                                               "url": "http://127.0.0.1:9/other"}},
                        "profiles": {"twin": {"binhost": "other"}}})
    counts = fresh(swarm, "twin", scan(*many))
    assert (counts["added"], counts["retired"]) == (8, 8)
    assert swarm.query("SELECT binhost, count(*) FROM packages WHERE active = 1"
                       " GROUP BY binhost") == [("other", 8)]


def test_a_database_of_one_profile_migrates_to_wants_and_binhosts(tmp_path):
    path = tmp_path / "old.db"
    conn = database_at(path, 9)  # the schema before profiles (version 9)
    conn.execute("INSERT INTO packages (id, cp, slot, cpv, status, active, scan_order, first_seen,"
                 " updated_at, binhost_path) VALUES (1, 'a/b', '0', 'a/b-1', 'synced', 1, 3, 't',"
                 " 't', 'a/b/b-1-1.gpkg.tar'), (2, 'a/c', '0', 'a/c-1', 'needed', 0, 0, 't', 't',"
                 " NULL)")
    conn.execute("INSERT INTO publications (path, cpv, build_id, package_id, at)"
                 " VALUES ('a/b/b-1-1.gpkg.tar', 'a/b-1', 1, 1, 't')")
    conn.execute("INSERT INTO superseded (path, since) VALUES ('a/b/b-0-1.gpkg.tar', 't')")
    conn.close()
    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert [tuple(r) for r in conn.execute("SELECT profile, package_id, scan_order, active"
                                           " FROM wants ORDER BY package_id")] == [
        ("default", 1, 3, 1), ("default", 2, 0, 0)]
    assert [tuple(r) for r in conn.execute("SELECT binhost FROM packages")] == [
        ("default",), ("default",)]
    assert [tuple(r) for r in conn.execute("SELECT binhost, path FROM publications")] == [
        ("default", "a/b/b-1-1.gpkg.tar")]
    assert [tuple(r) for r in conn.execute("SELECT binhost, path FROM superseded")] == [
        ("default", "a/b/b-0-1.gpkg.tar")]
    # One active row a build (binhost and identity): another USE is another build.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO packages (cp, slot, cpv, status, first_seen, updated_at)"
                     " VALUES ('a/b', '0', 'a/b-1', 'needed', 't', 't')")
    for binhost, use in (("other", ""), ("default", "x")):
        conn.execute("INSERT INTO packages (cp, slot, cpv, status, first_seen, updated_at, binhost,"
                     " use) VALUES ('a/b', '0', 'a/b-1', 'needed', 't', 't', ?, ?)", (binhost, use))
    conn.close()


@pytest.mark.parametrize("changes, message", [
    ({"profiles": {"p": {"binhost": "nowhere"}}}, "'profiles.p.binhost' is 'nowhere'"),
    ({"binhosts": {"b": {"path": "binhost", "url": "http://x/"}}}, "both have path"),
    ({"binhosts": {"b": {"path": "/tmp/b"}}}, "'binhosts.b.url' must not be empty"),
    ({"binhosts": {"default": {"path": "/tmp/b", "url": "http://x/"}}}, "[binhosts.default]"),
])
def test_profile_and_binhost_mistakes_are_config_errors(swarm, changes, message):
    with pytest.raises(ConfigError, match=None) as caught:
        edit(swarm.config, changes)
    assert message in str(caught.value)


def test_unknown_profile_is_a_usage_error_before_any_scan(swarm):
    r = swarm.run("swarm-fresh", "--profile", "nope", "--from", "-", input=scan(PLAIN))
    assert r.returncode == 2 and "no profile 'nope'" in r.stderr
    assert not swarm.db.exists() or not swarm.query("SELECT * FROM packages")


def test_a_drone_holds_one_lease_a_cpv_so_its_report_lands_on_its_build(swarm, tmp_path):
    # A drone names a build by its CPV alone (heartbeat, report, release,
    # upload): with leases on two binhosts' builds of one CPV, its report
    # would land on either.
    two_profiles(swarm, tmp_path, second_binhost=True)
    fresh(swarm, "main", scan(PLAIN))
    fresh(swarm, "twin", scan(PLAIN))

    def claim(drone: str, building: list[str]) -> dict | None:
        r = swarm.run("swarm-delegate", "claim", "--drone", drone, "--json", "--heartbeat",
                      input=json.dumps({"building": building}))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout) if r.stdout else None

    first = claim("d1", [])
    assert first["cpv"] == "app-misc/plain-1"
    assert claim("d1", ["app-misc/plain-1"]) is None  # the other binhost's build waits
    why = json.loads(swarm.run("swarm-status", "--json").stdout)
    assert why["states"]["delegated"] == 1 and why["states"]["needed"] == 1
    second = claim("d2", [])
    assert second["cpv"] == "app-misc/plain-1"
    assert {first["binhost"]["name"], second["binhost"]["name"]} == {"default", "other"}
    for drone, content in (("d1", b"first"), ("d2", b"second")):
        relative = "app-misc/plain/plain-1-1.gpkg.tar"
        staged = swarm.root / "state" / "staging" / drone / relative
        staged.parent.mkdir(parents=True)
        staged.write_bytes(content)
        r = swarm.run("swarm-delegate", "report", "--drone", drone, "app-misc/plain-1", "--ok",
                      "--file", relative)
        assert r.returncode == 0, r.stderr
    assert sorted(swarm.query("SELECT binhost, status, drone, size FROM packages")) == sorted([
        (first["binhost"]["name"], "received", "d1", len(b"first")),
        (second["binhost"]["name"], "received", "d2", len(b"second"))])
