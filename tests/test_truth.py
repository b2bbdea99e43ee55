"""'synced' means a client can install it: Portage's verdict is the truth.

Real emerge throughout: drones and the orchestrator are Portage prefixes,
the binhost is served over HTTP, clients fetch its index with Portage's own
code.
"""

import json
import time

import pytest
from conftest import DroneSwarm, HandDrone, HttpServer, ebuild, one_line_error

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

FAST = {"lease_seconds": 20, "heartbeat_seconds": 1, "poll_seconds": 1, "retry_seconds": 600}
FOO = {"app-misc/foo/foo-1.1.ebuild": ebuild('IUSE="+flag"\n')}


@pytest.fixture
def foo_swarm(tmp_path):
    """app-misc/foo (USE flag on by default) and two drones; d1 has flag off in package.use."""
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, extra_ebuilds=FOO, world=["app-misc/foo"], delegate=FAST)
    (swarm.prefixes["d1"].root / "etc" / "portage" / "package.use").write_text("app-misc/foo -flag\n")
    swarm.http = HttpServer(swarm.root / "binhost")
    from swarmtools.config import edit

    edit(swarm.config, {"binhost": {"url": swarm.http.url}})
    yield swarm
    swarm.http.stop()


def drone_once(swarm, name):
    proc = swarm.drone(name, "--once")
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode in (0, 1), err
    return err


def test_a_drifted_drone_never_gets_a_build_published(foo_swarm):
    swarm = foo_swarm
    swarm.scan()
    assert swarm.query("SELECT cpv, use FROM packages") == [("app-misc/foo-1.1", "flag")]
    # swarm-drone builds with the scan's settings (test_profiles.py); d1 here
    # builds with its own, as a drone on an old swarmtools or a hand build would.
    own = swarm.prefixes["d1"]
    r = own.run(["emerge", "--buildpkgonly", "--oneshot", "--color=n", "=app-misc/foo-1.1"])
    assert r.returncode == 0, r.stdout[-2000:]
    hand = HandDrone(swarm, own.pkgdir, "d1")
    assert hand.claim() == "app-misc/foo-1.1"
    hand.report("app-misc/foo-1.1", hand.stage("app-misc/foo-1.1"))
    assert swarm.query("SELECT status, drone FROM packages") == [("received", "d1")]
    r = swarm.run("swarm-sync", "--json")
    assert r.returncode == 1, r.stderr
    (quarantined,) = json.loads(r.stdout)["quarantined"]
    # The reason names the drone and the flag; nothing is on the binhost.
    assert "built by d1" in quarantined["reason"] and "USE -flag" in quarantined["reason"]
    assert not list((swarm.root / "binhost").rglob("*.gpkg.tar"))
    history = swarm.run("swarm-status", "--history", "app-misc/foo", "--json").stdout
    assert any(json.loads(line)["event"] == "quarantined" and "USE -flag" in json.loads(line)["detail"]
               for line in history.splitlines())
    # The package's attempts are untouched; d1 may not take it again for a while.
    assert swarm.query("SELECT status, attempts FROM packages") == [("needed", 0)]
    drone_once(swarm, "d1")
    assert swarm.query("SELECT status FROM packages") == [("needed",)]
    # A drone whose settings match builds it, and that build is published.
    drone_once(swarm, "d2")
    r = swarm.run("swarm-sync", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["published"] == ["app-misc/foo-1.1"]
    index = (swarm.root / "binhost" / "Packages").read_text()
    assert "\nUSE: flag\n" in index


def test_portages_verdict_requeues_what_it_would_not_install(foo_swarm):
    swarm = foo_swarm
    swarm.scan()
    drone_once(swarm, "d2")
    assert swarm.sync().returncode == 0
    # The scan asks the binhost: the published build is what Portage would use.
    r = swarm.run("swarm-fresh", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["unchanged"] == 1
    # The ebuild's dependencies change in place (no revision bump): Portage
    # no longer takes the binary, although its identity did not change.
    tree = swarm.prefixes["orchestrator"].repo / "app-misc" / "foo" / "foo-1.1.ebuild"
    tree.write_text(tree.read_text() + 'RDEPEND="app-misc/example-docs"\n')
    r = swarm.run("swarm-fresh", "--json")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert (counts["requeued"], counts["added"]) == (1, 1)
    (status, detail), = swarm.query(
        "SELECT p.status, e.detail FROM events e JOIN packages p ON p.id = e.package_id"
        " WHERE e.event = 'requeued'")
    assert status == "needed" and "Portage would build it from source" in detail


def test_a_scan_that_does_not_ask_the_binhost_requeues_nothing_for_it(foo_swarm):
    swarm = foo_swarm
    swarm.scan()
    drone_once(swarm, "d2")
    assert swarm.sync().returncode == 0
    plain = swarm.prefixes["orchestrator"].run(
        ["emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "@world"]).stdout
    assert "[ebuild" in plain
    r = swarm.run("swarm-fresh", "--json", "--from", "-", input=plain)
    assert json.loads(r.stdout)["unchanged"] == 1
    assert swarm.query("SELECT status FROM packages") == [("synced",)]


def test_an_unreachable_binhost_changes_nothing(foo_swarm):
    swarm = foo_swarm
    swarm.scan()
    drone_once(swarm, "d2")
    assert swarm.sync().returncode == 0
    swarm.http.stop()
    before = swarm.dump()
    r = swarm.run("swarm-fresh", "-q")
    assert r.returncode == 1
    one_line_error(r, "swarm-fresh", swarm.log)
    assert "could not read the binhost's index" in r.stderr
    assert swarm.dump() == before


def test_a_binary_from_the_orchestrators_own_pkgdir_is_not_published(foo_swarm):
    swarm = foo_swarm
    orchestrator = swarm.prefixes["orchestrator"]
    r = orchestrator.run(["emerge", "--oneshot", "--buildpkgonly", "--color=n", "app-misc/foo"])
    assert r.returncode == 0, r.stdout[-2000:]
    r = swarm.run("swarm-fresh", "--json", "-v")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["binary"] == 0
    assert swarm.query("SELECT status FROM packages") == [("needed",)]


def test_a_client_that_cached_an_index_sees_the_next_one_a_second_later(tmp_path, built_packages):
    """Portage asks with If-Modified-Since = its cached TIMESTAMP + 5 s."""
    from swarmtools.prefix import create_prefix

    swarm = DroneSwarm(tmp_path, drones=("d1",))
    swarm.scan()
    hand = HandDrone(swarm, built_packages)
    with HttpServer(swarm.root / "binhost") as http:
        client = create_prefix(tmp_path / "client", binhost_url=http.url)
        pretend = ["emerge", "--pretend", "--getbinpkg", "--usepkg", "--color=n", "--oneshot"]
        first = hand.claim()
        hand.report(first, hand.stage(first))
        assert swarm.sync().returncode == 0
        r = client.run([*pretend, f"={first}"])
        assert "[binary" in r.stdout, r.stdout + r.stderr  # the client cached this index
        second = hand.claim()
        hand.report(second, hand.stage(second))
        time.sleep(1)
        assert swarm.sync().returncode == 0
        r = client.run([*pretend, f"={second}"])
        row = next(line for line in r.stdout.splitlines() if second.split("/")[1] in line)
        assert row.startswith("[binary"), r.stdout + r.stderr
        assert any("GET /Packages" in line and " 200 " in line for line in http.log[-8:])


def test_a_build_with_other_compiler_flags_is_quarantined_naming_drone_and_flags(tmp_path):
    pytest.importorskip("portage")
    # tuned: its ebuild adds flags itself (as flag-o-matic's append-flags does),
    # and the profile's package.env gives it a -march of its own.
    tuned = ebuild('src_configure() { export CFLAGS="${CFLAGS} -fno-strict-aliasing"; }\n')
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/plain", "app-misc/tuned"],
                       extra_ebuilds={"app-misc/plain/plain-1.ebuild": ebuild(),
                                      "app-misc/tuned/tuned-1.ebuild": tuned})
    orchestrator, d1 = swarm.prefixes["orchestrator"], swarm.prefixes["d1"]
    for prefix, cflags in ((orchestrator, "-O2 -pipe"), (d1, "-O3 -march=znver4")):
        make_conf = prefix.root / "etc" / "portage" / "make.conf"
        make_conf.write_text(make_conf.read_text() + f'CFLAGS="{cflags}"\nCXXFLAGS="${{CFLAGS}}"\n'
                             'LDFLAGS="-Wl,-O1"\n')
    etc = orchestrator.root / "etc" / "portage"
    (etc / "env").mkdir()
    (etc / "env" / "v2.conf").write_text('CFLAGS="-O2 -pipe -march=x86-64-v2"\n')
    (etc / "package.env").write_text("app-misc/tuned v2.conf\n")
    swarm.scan()
    # d1 builds plain with its own flags (a drone with CFLAGS in its environment would);
    # tuned is built as the profile says.
    for prefix, cpv in ((d1, "app-misc/plain-1"), (orchestrator, "app-misc/tuned-1")):
        r = prefix.run(["emerge", "--buildpkgonly", "--oneshot", "--color=n", f"={cpv}"])
        assert r.returncode == 0, r.stdout[-2000:]
    built_in = {"app-misc/plain-1": HandDrone(swarm, d1.pkgdir, "d1"),
                "app-misc/tuned-1": HandDrone(swarm, orchestrator.pkgdir, "d1")}
    while cpv := built_in["app-misc/plain-1"].claim():
        hand = built_in[cpv]
        hand.report(cpv, hand.stage(cpv))
    r = swarm.run("swarm-sync", "--json")
    assert r.returncode == 1, r.stderr
    answer = json.loads(r.stdout)
    assert answer["published"] == ["app-misc/tuned-1"]
    (quarantined,) = answer["quarantined"]
    assert quarantined["cpv"] == "app-misc/plain-1"
    assert ('built by d1 with other settings than the scan\'s: CFLAGS "-O3 -march=znver4" '
            '(the profile: "-O2 -pipe")') in quarantined["reason"]
    assert 'CXXFLAGS "-O3 -march=znver4"' in quarantined["reason"]
    assert "LDFLAGS" not in quarantined["reason"]
    assert swarm.query("SELECT cpv, status FROM packages ORDER BY cpv") == [
        ("app-misc/plain-1", "needed"), ("app-misc/tuned-1", "synced")]
