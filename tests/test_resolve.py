"""swarm-resolve: the graph equals Portage's, claims wait for dependencies, drones compile
nothing they did not claim. Real emerge throughout."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DroneSwarm, HandDrone, HttpServer, drone_emerge_log

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

FAST = {"lease_seconds": 60, "heartbeat_seconds": 2, "poll_seconds": 1, "retry_seconds": 600}


@pytest.fixture
def scanned(tmp_path):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, delegate=FAST, publish=True)
    swarm.scan()
    yield swarm
    swarm.stop()


def resolve_json(swarm):
    r = swarm.run("swarm-resolve", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def edges(swarm):
    return {(a, b, kinds) for a, b, kinds in swarm.query(
        "SELECT p.cpv, d.cpv, e.kinds FROM edges e JOIN packages p ON p.id = e.package_id"
        " JOIN packages d ON d.id = e.dep_id")}


def test_the_edges_are_those_of_portages_own_depgraph(scanned):
    resolve_json(scanned)
    prefix = scanned.prefixes["orchestrator"]
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "depgraph_edges.py")],
                       env=prefix.env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    portage_edges = {(e["dependent"], e["dependency"], e["buildtime"], e["runtime"], e["post"])
                     for e in map(json.loads, r.stdout.splitlines())}
    ours = {(a, b, bool({"DEPEND", "BDEPEND"} & set(k.split())),
             bool({"RDEPEND", "IDEPEND"} & set(k.split())), "PDEPEND" in k.split())
            for a, b, k in edges(scanned)}
    assert ours == portage_edges
    assert len(ours) >= 14  # the example repository's: a chain four deep among them


def test_a_bump_recomputes_that_package_only(scanned):
    first = resolve_json(scanned)
    assert (first["recomputed"], first["cached"]) == (12, 0)
    assert resolve_json(scanned)["recomputed"] == 0
    docs = scanned.prefixes["orchestrator"].repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    scanned.scan()
    after = resolve_json(scanned)
    assert (after["recomputed"], after["cached"]) == (1, 11)


def test_a_package_whose_dependencies_are_not_published_is_never_claimed(scanned):
    resolve_json(scanned)
    # Packages need the profile's ARCH and CHOST: the drone says its own in a heartbeat first.
    arch, chost = scanned.query("SELECT arch, chost FROM profiles")[0]
    assert arch == scanned.query("SELECT value FROM resolve_state WHERE key = 'arch'")[0][0]
    r = scanned.run("swarm-delegate", "heartbeat", "--drone", "d1",
                    input=json.dumps({"arch": arch, "chost": chost}))
    assert r.returncode == 0, r.stderr
    r = scanned.run("swarm-delegate", "claim", "--drone", "d1", "--json", "--limit", "100")
    claimed = [json.loads(line)["cpv"] for line in r.stdout.splitlines()]
    # Only packages with no build-time dependency: runtime ones need not be
    # on the binhost to build (the drone builds with --buildpkgonly).
    assert set(claimed) == {"sys-apps/example-base-1.0", "dev-build/example-make-3.1",
                            "app-misc/example-docs-1.0", "sys-apps/example-utils-1.0",
                            "app-misc/example-suite-1.0"}
    why = scanned.run("swarm-delegate", "claim", "--drone", "d2", "--json", "--idle-info")
    # Builds in progress may make more eligible: ask again soon (poll_seconds here).
    assert json.loads(why.stdout) == {"cpv": None, "in_progress": 5, "retry_soon": 0,
                                      "ask_again_seconds": 1}
    figures = json.loads(scanned.run("swarm-status", "--json").stdout)
    assert figures["waiting"] == {"on_dependencies": 7, "on_failure": 0}
    # A failed build: what waits on it, directly or not, is counted, not retried.
    r = scanned.run("swarm-delegate", "report", "--drone", "d1", "sys-apps/example-base-1.0",
                    "--failed")
    assert r.returncode == 0, r.stderr
    figures = json.loads(scanned.run("swarm-status", "--json").stdout)
    assert figures["waiting"] == {"on_dependencies": 7, "on_failure": 7}  # all need it
    assert "7 of them on a failed build" in scanned.run("swarm-status").stdout


def claim_all(swarm, drone: str) -> set[str]:
    """Every package DRONE may claim now (it says its ARCH and CHOST first)."""
    arch, chost = swarm.query("SELECT arch, chost FROM profiles")[0]
    r = swarm.run("swarm-delegate", "claim", "--drone", drone, "--json", "--limit", "100",
                  "--heartbeat", input=json.dumps({"arch": arch, "chost": chost}))
    assert r.returncode == 0, r.stderr
    return {json.loads(line)["cpv"] for line in r.stdout.splitlines()}


def test_a_plain_scan_resolves_so_the_queue_is_gated_from_its_first_claim(tmp_path):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, delegate=FAST)
    # A new admin's config (swarm-config init), which says nothing of resolving.
    from swarmtools.config import edit

    edit(swarm.config, {"scan": {"resolve": None}})
    # swarm-fresh as typed: the scan, then swarm-resolve.
    swarm.scan()
    # Only packages with no build-time dependency are handed out before anything is built.
    assert claim_all(swarm, "d1") == {
        "sys-apps/example-base-1.0", "dev-build/example-make-3.1", "app-misc/example-docs-1.0",
        "sys-apps/example-utils-1.0", "app-misc/example-suite-1.0"}
    assert swarm.query("SELECT count(*) FROM packages WHERE resolved IS NULL") == [(0,)]
    # The way out, for those who resolve on their own: a bump is left unresolved.
    docs = swarm.prefixes["orchestrator"].repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    swarm.scan(resolve=False)
    assert swarm.query("SELECT cpv FROM packages WHERE resolved IS NULL") == [
        ("app-misc/example-docs-1.1",)]


def compiled(prefix, drone: str) -> list[str]:
    """What a drone's builds compiled (their emerge.log), not what they took as binaries."""
    return re.findall(r"=== \(\d+ of \d+\) Compiling/\w+ \(([^:]+)::",
                      drone_emerge_log(prefix, drone))


def test_two_drones_build_the_chain_in_order_and_compile_only_what_they_claimed(example_swarm,
                                                                                  tmp_path):
    from swarmtools.prefix import create_prefix

    swarm = example_swarm  # swarm-fresh --resolve, then two drones --drain, publishing as they go
    assert [r[0] for r in swarm.drone_results] == [0, 0], swarm.drone_results
    for name in ("d1", "d2"):
        claimed = {cpv for (cpv,) in swarm.query(
            "SELECT p.cpv FROM events e JOIN packages p ON p.id = e.package_id"
            " WHERE e.event = 'claimed' AND e.drone = ?", (name,))}
        built = compiled(swarm.prefixes[name], name)
        assert built and set(built) <= claimed, (name, built, claimed)
    # Never claimed before all it needs was published.
    for (cpv,) in swarm.query("SELECT cpv FROM packages"):
        claimed_at = swarm.query(
            "SELECT min(e.id) FROM events e JOIN packages p ON p.id = e.package_id"
            " WHERE p.cpv = ? AND e.event = 'claimed'", (cpv,))[0][0]
        late = swarm.query(
            "SELECT d.cpv FROM requires r JOIN packages p ON p.id = r.package_id"
            " JOIN packages d ON d.id = r.dep_id WHERE p.cpv = ? AND NOT EXISTS"
            " (SELECT 1 FROM events s WHERE s.package_id = d.id AND s.event = 'synced'"
            "  AND s.id < ?)", (cpv, claimed_at))
        assert late == [], (cpv, late)
    assert swarm.query("SELECT count(*) FROM requires")[0][0] >= 10  # the gates were there
    with HttpServer(swarm.root / "binhost") as binhost:
        client = create_prefix(tmp_path / "client", binhost_url=binhost.url)
        r = client.run(["emerge", "--getbinpkgonly", "--color=n", "@world"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert ">>> Emerging (" not in r.stdout


def test_a_missing_binary_dependency_is_reported_not_built(scanned, built_packages):
    # Unresolved, the queue goes in merge order: d1 may claim libbar while
    # libfoo, which libbar needs to build, is not on the binhost.
    from swarmtools import db

    conn = db.connect(scanned.db)
    with db.write(conn):
        conn.execute("UPDATE packages SET active = 0 WHERE cp NOT IN"
                     " ('dev-libs/libbar', 'dev-libs/libfoo', 'sys-apps/example-base')")
        conn.execute("UPDATE packages SET priority = 9 WHERE cp = 'dev-libs/libbar'")
    conn.close()  # (edited by hand, test only: libbar first, the others retired)
    d1 = scanned.drone("d1", "--once")
    _out, err = d1.communicate(timeout=300)
    assert d1.returncode == 0, err
    (status, attempts, waits), = scanned.query(
        "SELECT status, attempts, waits_for FROM packages WHERE cp = 'dev-libs/libbar'")
    assert (status, attempts) == ("needed", 0)
    assert "dev-libs/libfoo-1.2" in json.loads(waits)
    kind, detail = scanned.query("SELECT kind, detail FROM events WHERE event = 'build-failed'")[0]
    assert kind == "missing-binary-dependency" and "dev-libs/libfoo-1.2" in detail
    assert "dev-libs/libbar" not in " ".join(compiled(scanned.prefixes["d1"], "d1"))
    # Once libfoo (and what it needs) is published (here: built elsewhere,
    # reported by d2), libbar is claimed and built; it waits until then.
    assert sorted(HandDrone(scanned, built_packages, "d2").build_all()) == [
        "dev-libs/libfoo-1.2", "sys-apps/example-base-1.0"]
    assert scanned.sync().returncode == 0
    # (A drain: libbar's short wait after the missing dependency may not be over yet.)
    d1 = scanned.drone("d1", "--drain")
    _out, err = d1.communicate(timeout=300)
    assert d1.returncode == 0, err
    scanned.wait_for("SELECT 1 FROM packages WHERE cp = 'dev-libs/libbar' AND status = 'synced'",
                     timeout=60)
    assert "dev-libs/libbar-2.0" in compiled(scanned.prefixes["d1"], "d1")


def test_a_build_only_dependency_stays_queued_and_published(example_swarm):
    swarm = example_swarm  # everything built and published
    assert swarm.query("SELECT DISTINCT status FROM packages") == [("synced",)]
    # Everything is a binary now; --with-bdeps=y keeps example-make in the list
    # (a scan that asks the binhost, served again: nothing changes with --dry-run).
    with HttpServer(swarm.root / "binhost") as binhost:
        r = swarm.run("swarm-fresh", "--dry-run", "--json",
                      env={**swarm.env, "SWARM_BINHOST_URL": binhost.url})
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert (counts["retired"], counts["unchanged"]) == (0, counts["total"]), counts
    assert swarm.query("SELECT active, status FROM packages WHERE cp = 'dev-build/example-make'"
                       ) == [(1, "synced")]
