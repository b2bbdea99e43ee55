"""Build profiles: drones build with the scan's Portage settings and tree (real emerge)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import DroneSwarm, HandDrone, HttpServer, add_drones, ebuild, one_line_error

from swarmtools.config import edit

pytestmark = pytest.mark.slow  # real emerge: seconds a test

def history(swarm, cpv):
    return [tuple(e) for e in swarm.query(
        "SELECT e.event, e.kind, e.detail FROM events e JOIN packages p ON p.id = e.package_id"
        " WHERE p.cpv = ? ORDER BY e.id", (cpv,))]


def index_entries(binhost: Path) -> dict[str, dict]:
    blocks = (binhost / "Packages").read_text().split("\n\n")[1:]
    entries = [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks
               if block.strip()]
    return {e["CPV"]: e for e in entries}


def test_a_drone_builds_with_the_profiles_use_not_its_own(tmp_path):
    pytest.importorskip("portage")
    # One package of one flag, no dependencies: the suite's time goes to what is tested.
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/flavour"], publish=True,
                       extra_ebuilds={"app-misc/flavour/flavour-1.ebuild": ebuild('IUSE="+feature"\n')})
    try:
        # The drone's own /etc/portage turns off what the scan's enables (IUSE="+feature").
        own = swarm.prefixes["d1"].root / "etc" / "portage"
        (own / "package.use").write_text("app-misc/flavour -feature\n")
        (own / "make.conf").write_text((own / "make.conf").read_text() + 'USE="-feature"\n')
        swarm.scan()
        (digest,) = swarm.query("SELECT digest FROM profiles WHERE name = 'default'")[0]
        shown = json.loads(swarm.run("swarm-status", "--json").stdout)["profile"]
        assert (shown["digest"], shown["chost"], list(shown["tree"])) == (
            digest, "x86_64-pc-linux-gnu", ["swarm-example"])
        assert f"profile:       default {digest[:12]} (x86_64-pc-linux-gnu, amd64; " \
               "swarm-example files:" in swarm.run("swarm-status").stdout
        drone = swarm.drone("d1", "--drain")
        _out, err = drone.communicate(timeout=300)
        assert drone.returncode == 0, err
        assert swarm.sync().returncode == 0
        assert swarm.query("SELECT cpv, status FROM packages") == [("app-misc/flavour-1", "synced")]
        assert "feature" in index_entries(swarm.root / "binhost")["app-misc/flavour-1"]["USE"].split()
        assert not swarm.query("SELECT * FROM events WHERE event = 'quarantined'")
        # It fetched the bundle once, and says which one it built with.
        tmpdir = swarm.prefixes["d1"].root / "var" / "tmp" / "swarmtools" / "d1"
        assert (tmpdir / f"{digest}.tar").is_file()
        (facts,) = swarm.query("SELECT facts FROM drones WHERE name = 'd1'")[0]
        assert json.loads(facts)["profile_digest"] == digest
    finally:
        swarm.stop()


def test_a_drone_behind_the_scans_tree_syncs_or_gives_the_package_back(tmp_path):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, world=["app-misc/bumped"],
                       extra_ebuilds={"app-misc/bumped/bumped-1.ebuild": ebuild()})
    scanned = swarm.prefixes["orchestrator"].repo
    shutil.copy(scanned / "app-misc/bumped/bumped-1.ebuild", scanned / "app-misc/bumped/bumped-2.ebuild")
    # d1's sync cannot run; d2 syncs from the orchestrator's repository.
    d2_repo = swarm.prefixes["d2"].repo
    edit(swarm.config, {"drones": {"d1": {"sync_command": ["/nonexistent/sync"]},
                                   "d2": {"sync_command": [
                                       "rsync", "-a", "--delete", f"{scanned}/", f"{d2_repo}/"]}}})
    swarm.scan()
    assert swarm.query("SELECT cpv, status FROM packages") == [("app-misc/bumped-2", "needed")]

    d1 = swarm.drone("d1", "--once")
    _, err = d1.communicate(timeout=120)
    assert d1.returncode == 1 and "giving app-misc/bumped-2 back" in err, err
    assert "cannot run /nonexistent/sync" in err
    assert swarm.query("SELECT status, attempts FROM packages") == [("needed", 0)]
    (released,) = [e for e in history(swarm, "app-misc/bumped-2") if e[0] == "released"]
    assert "its ebuild repositories are not the scan's" in released[2]
    assert "swarm-example" in released[2]
    assert not swarm.query("SELECT * FROM events WHERE event = 'build-failed'")
    assert swarm.query("SELECT drone FROM holds") == [("d1",)]

    d2 = swarm.drone("d2", "--once")
    _, err = d2.communicate(timeout=300)
    assert d2.returncode == 0, err
    assert (d2_repo / "app-misc/bumped/bumped-2.ebuild").is_file()
    assert swarm.query("SELECT cpv, status, drone FROM packages") == [
        ("app-misc/bumped-2", "received", "d2")]
    assert not swarm.query("SELECT * FROM events WHERE event = 'build-failed'")


def counting_emerge(tmp_path: Path) -> tuple[Path, Path]:
    """An emerge that records each call, then runs the real one."""
    calls = tmp_path / "emerge-calls"
    wrapper = tmp_path / "emerge-counted"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec emerge "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, calls


def test_if_changed_scans_after_a_world_change_and_not_otherwise(emerge_swarm, prefix, tmp_path):
    from swarmtools.config import load

    wrapper, calls = counting_emerge(tmp_path)
    command = load(emerge_swarm.config).scan.command
    edit(emerge_swarm.config, {"scan": {"command": [str(wrapper), *command[1:]]}})
    world = prefix.root / "var" / "lib" / "portage" / "world"
    world.write_text("app-misc/example-docs\n")

    def fresh():
        r = emerge_swarm.run("swarm-fresh", "--if-changed", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert fresh()["added"] >= 1
    assert len(calls.read_text().splitlines()) == 1
    before = emerge_swarm.dump()
    assert fresh() == {"scanned": False}
    assert len(calls.read_text().splitlines()) == 1  # emerge did not run at all
    assert emerge_swarm.dump() == before

    world.write_text(world.read_text() + "sys-apps/example-utils\n")
    assert fresh()["added"] >= 1
    assert len(calls.read_text().splitlines()) == 2
    assert emerge_swarm.query("SELECT status FROM packages WHERE cp = 'sys-apps/example-utils'"
                              ) == [("needed",)]
    # A change to the Portage configuration is a change too.
    (prefix.root / "etc/portage/package.use").write_text("app-misc/example-app -compress\n")
    assert "scanned" not in fresh()
    assert len(calls.read_text().splitlines()) == 3


def test_overlapping_if_changed_scans_run_one(emerge_swarm, prefix, tmp_path):
    from filelock import FileLock

    with FileLock(str(emerge_swarm.root / "state" / "swarm-fresh.lock")):
        r = emerge_swarm.run("swarm-fresh", "--if-changed")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    assert not emerge_swarm.query("SELECT * FROM packages")


def test_a_bump_and_the_postsync_hook_requeue_exactly_that_package(
        emerge_swarm, prefix, built_packages):
    add_drones(emerge_swarm.config, {"d1": {"transport": "local"}})
    http = HttpServer(emerge_swarm.root / "binhost")  # the scan asks it what is built
    edit(emerge_swarm.config, {"binhost": {"url": http.url}})
    try:
        bump_and_hook(emerge_swarm, prefix, built_packages)
    finally:
        http.stop()


def bump_and_hook(emerge_swarm, prefix, built_packages):
    emerge_swarm.scan()
    HandDrone(emerge_swarm, built_packages).build_all()
    r = emerge_swarm.sync()
    assert r.returncode == 0, r.stderr
    synced = emerge_swarm.query("SELECT cpv FROM packages WHERE status = 'synced'")
    assert len(synced) >= 5 and emerge_swarm.query(
        "SELECT count(*) FROM packages WHERE status != 'synced'") == [(0,)]
    before = {cpv: history(emerge_swarm, cpv) for (cpv,) in synced}

    docs = prefix.repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    (docs / "example-docs-1.0.ebuild").unlink()
    # The hook as swarm-config renders it for this install, run as emerge --sync runs
    # it (as root: it goes through su to the owner of the state).
    hook = emerge_swarm.root / "swarm-fresh"
    hook.write_text(emerge_swarm.run("swarm-config", "render", "postsync").stdout)
    hook.chmod(0o755)
    r = subprocess.run([str(hook)], env=emerge_swarm.env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "", r
    assert emerge_swarm.query("SELECT cpv, status FROM packages WHERE status != 'synced'") == [
        ("app-misc/example-docs-1.1", "needed")]
    for cpv, events in before.items():
        if not cpv.startswith("app-misc/example-docs-"):
            assert history(emerge_swarm, cpv) == events, cpv
    # The hook always scans (cron's --if-changed does not): nothing changes.
    (scans,), = emerge_swarm.query("SELECT count(*) FROM scans")
    dump = emerge_swarm.dump()[:-scans]  # packages and events
    assert subprocess.run([str(hook)], env=emerge_swarm.env).returncode == 0
    assert emerge_swarm.query("SELECT count(*) FROM scans") == [(scans + 1,)]
    assert emerge_swarm.dump()[:-(scans + 1)] == dump


def test_config_check_remote_names_the_drone_key_and_values_that_differ(tmp_path):
    """Over real ssh (a drone host's login runs what it is asked, as root would) and HTTP."""
    pytest.importorskip("portage")
    from conftest import BIN
    from sshd import start_sshd

    swarm = DroneSwarm(tmp_path, drones=("d1",), publish=True)
    login = tmp_path / "drone-login"  # d1's shell: swarm-drone on its PATH, its config in place
    login.write_text(f'#!/bin/sh\nexport SWARM_CONFIG="{swarm.config}" PATH="{BIN}:$PATH"\n'
                     'exec sh -c "$SSH_ORIGINAL_COMMAND"\n')
    login.chmod(0o755)
    server = start_sshd(tmp_path / "sshd", {"check": str(login)})
    make_conf = swarm.prefixes["d1"].root / "etc" / "portage" / "make.conf"
    plain = make_conf.read_text()
    try:
        edit(swarm.config, {"drones": {"d1": {
            "check_command": [*server.ssh_command("check"), server.destination]}}})
        swarm.scan()
        assert swarm.sync().returncode == 0
        make_conf.write_text(plain + f'PORTAGE_BINHOST="{swarm.http.url}"\n')
        r = swarm.run("swarm-config", "check", "--remote", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        findings = json.loads(r.stdout)
        checked = {(f["host"], f["key"]) for f in findings}
        assert {("d1", "PORTAGE_BINHOST"), ("d1", "CHOST"), ("d1", "config digest"),
                ("binhost", "reachable")} <= checked
        # As root here, d1 builds in throw-away roots, as its config says.
        assert {"host": "d1", "key": "isolation", "expected": "overlay", "found": "overlay",
                "ok": True} in findings
        assert "Accepted publickey" in server.log_text()

        wrong = swarm.http.url.rsplit(":", 1)[0] + ":1"
        make_conf.write_text(plain + f'PORTAGE_BINHOST="{wrong}"\n')
        r = swarm.run("swarm-config", "check", "--remote", "--json")
        assert r.returncode == 1
        drifted = [f for f in json.loads(r.stdout) if not f["ok"]]
        assert drifted == [{"host": "d1", "key": "PORTAGE_BINHOST", "expected": swarm.http.url,
                            "found": wrong, "ok": False}]
        assert "1 value(s) differ" in r.stderr
        table = swarm.run("swarm-config", "check", "--remote")
        assert table.returncode == 1 and "DRIFT" in table.stdout and wrong in table.stdout

        swarm.http.stop()
        r = swarm.run("swarm-config", "check", "--remote", "--json")
        unreachable = [f for f in json.loads(r.stdout) if f["host"] == "binhost"]
        assert r.returncode == 1 and unreachable[0]["found"].startswith("unreachable")
    finally:
        server.stop()
        swarm.stop()


def test_status_flags_a_drone_on_another_version_or_config(swarm):
    from conftest import emerge_files

    swarm.scan(source=str(emerge_files()[0]))
    facts = {"version": "0.0.1", "config_digest": "0" * 64, "chost": "", "arch": ""}
    r = swarm.run("swarm-delegate", "heartbeat", "--drone", "local", input=json.dumps(facts))
    assert r.returncode == 0, r.stderr
    (drone,) = json.loads(swarm.run("swarm-status", "--json").stdout)["drones"]
    assert [d.split()[0:2] for d in drone["drift"]] == [["config", "digest"],
                                                         ["swarmtools", "version"]]
    assert "0.0.1" in swarm.run("swarm-status").stdout
    metrics = swarm.run("swarm-status", "--prometheus").stdout
    assert 'swarm_drone_drifted{drone="local"} 2' in metrics
    from swarmtools import __version__
    from swarmtools.config import load

    facts = {"version": __version__, "config_digest": load(swarm.config).digest()}
    swarm.run("swarm-delegate", "heartbeat", "--drone", "local", input=json.dumps(facts))
    (drone,) = json.loads(swarm.run("swarm-status", "--json").stdout)["drones"]
    assert drone["drift"] == []


def test_packages_go_only_to_drones_of_the_profiles_chost_and_arch(emerge_swarm):
    add_drones(emerge_swarm.config, {"arm": {"transport": "local"}, "x86": {"transport": "local"}})
    emerge_swarm.scan()

    def claim(drone, facts):
        r = emerge_swarm.run("swarm-delegate", "claim", "--drone", drone, "--json",
                             "--heartbeat", input=json.dumps(facts))
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert claim("arm", {"arch": "arm64", "chost": "aarch64-unknown-linux-gnu"}) == ""
    why = emerge_swarm.run("swarm-status", "--why", "app-misc/example-docs").stdout
    assert ("arm lacks arch:amd64 (the profile's ARCH), chost:x86_64-pc-linux-gnu "
            "(the profile's CHOST)") in why
    job = json.loads(claim("x86", {"arch": "amd64", "chost": "x86_64-pc-linux-gnu"}))
    assert job["cpv"] and job["profile"]["chost"] == "x86_64-pc-linux-gnu"


def test_a_profile_that_cannot_be_recorded_changes_nothing(emerge_swarm, prefix):
    emerge_swarm.scan()
    before = emerge_swarm.dump()
    (prefix.root / "etc/portage/package.use").write_text("app-misc/example-app -compress\n")
    (prefix.root / "etc/portage/env").mkdir()
    (prefix.root / "etc/portage/env/huge").write_bytes(os.urandom(9 << 20))
    r = emerge_swarm.run("swarm-fresh")
    assert r.returncode == 1 and "cannot be recorded as the build profile" in r.stderr, r.stderr
    assert "nothing was changed" in r.stderr
    assert emerge_swarm.dump() == before


def test_two_profiles_build_a_shared_package_once_and_other_use_again(tmp_path):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/flavour", "app-misc/plain"],
                       extra_ebuilds={"app-misc/flavour/flavour-1.ebuild": ebuild('IUSE="+feature"\n'),
                                      "app-misc/plain/plain-1.ebuild": ebuild()}, publish=True)
    other = HttpServer(tmp_path / "binhost-other")

    def scan_and_build(builds: int) -> dict:
        """Scan, build BUILDS packages one claim at a time, then one swarm-sync."""
        r = swarm.run("swarm-fresh", "--json")
        assert r.returncode == 0, r.stderr
        for _ in range(builds):
            drone = swarm.drone("d1", "--once")
            _, err = drone.communicate(timeout=120)
            assert drone.returncode == 0, err
        assert swarm.query("SELECT count(*) FROM packages WHERE status = 'needed'") == [(0,)]
        assert swarm.sync().returncode == 0
        return json.loads(r.stdout)["profiles"]

    def built() -> list[tuple]:
        return swarm.query("SELECT p.binhost, p.cpv, p.use FROM events e JOIN packages p"
                           " ON p.id = e.package_id WHERE e.event = 'built'"
                           " ORDER BY p.binhost, p.cpv, p.use")

    def flavours(binhost: Path) -> list[str]:
        blocks = (binhost / "Packages").read_text().split("\n\n")[1:]
        entries = [dict(line.split(": ", 1) for line in b.splitlines()) for b in blocks if b.strip()]
        return sorted(e.get("USE", "") for e in entries if e["CPV"] == "app-misc/flavour-1")

    try:
        # main has the scan's settings; twin a copy of them with the flag off.
        twin = tmp_path / "twin"
        shutil.copytree(swarm.prefixes["orchestrator"].root / "etc", twin / "etc", symlinks=True)
        (twin / "etc/portage/package.use").write_text("app-misc/flavour -feature\n")
        # One swarm-sync publishes both new builds of flavour-1 at once.
        edit(swarm.config, {"profiles": {"main": {}, "twin": {"config_root": str(twin)}},
                            "binhost": {"publish_on_report": False}})
        counts = scan_and_build(3)
        assert (counts["main"]["added"], counts["twin"]["added"], counts["twin"]["shared"]) == (2, 1, 1)
        # plain-1 is built once for both; flavour-1 twice, both published side by side.
        assert built() == [("default", "app-misc/flavour-1", ""),
                           ("default", "app-misc/flavour-1", "feature"),
                           ("default", "app-misc/plain-1", "")]
        assert flavours(swarm.root / "binhost") == ["", "feature"]
        assert not swarm.query("SELECT * FROM events WHERE event IN ('quarantined', 'build-failed')")
        shares = json.loads(swarm.run("swarm-status", "--json").stdout)["profiles"]
        assert {n: s["states"]["synced"] for n, s in shares.items()} == {"main": 2, "twin": 2}
        # A release holds both, and verifies (each is a build the queue wants).
        for args in (("create", "2026.01.01"), ("promote", "2026.01.01")):
            r = swarm.run("swarm-release", *args)
            assert r.returncode == 0, r.stderr
        # Each profile's scan finds its own build on the binhost (Portage's verdict).
        r = swarm.run("swarm-fresh", "--json")
        counts = json.loads(r.stdout)["profiles"]
        assert (counts["main"]["unchanged"], counts["twin"]["unchanged"]) == (2, 2), counts
        assert swarm.query("SELECT count(*) FROM packages WHERE status != 'synced' AND active = 1"
                           ) == [(0,)]

        # On a binhost of its own, twin gets builds of its own there.
        edit(swarm.config, {"binhosts": {"other": {"path": str(tmp_path / "binhost-other"),
                                                   "url": other.url}},
                            "profiles": {"twin": {"binhost": "other"}}})
        counts = scan_and_build(2)
        assert (counts["main"]["unchanged"], counts["twin"]["added"], counts["twin"]["retired"]
                ) == (2, 2, 1)
        assert sorted(swarm.query("SELECT binhost, cpv, use, status FROM packages WHERE active = 1")) == [
            ("default", "app-misc/flavour-1", "feature", "synced"),
            ("default", "app-misc/plain-1", "", "synced"),
            ("other", "app-misc/flavour-1", "", "synced"),
            ("other", "app-misc/plain-1", "", "synced")]
        assert flavours(tmp_path / "binhost-other") == [""]
        assert "app-misc/plain-1" in index_entries(tmp_path / "binhost-other")
    finally:
        other.stop()
        swarm.stop()


def test_profiles_of_one_binhost_must_build_with_the_same_compiler_flags(emerge_swarm, prefix,
                                                                         tmp_path):
    # A binhost's clients pick a build by USE, never by CFLAGS: two profiles
    # sharing builds must mean the same flags, or generic clients get znver4 code.
    twin = tmp_path / "twin"
    shutil.copytree(prefix.root / "etc", twin / "etc", symlinks=True)
    edit(emerge_swarm.config, {"profiles": {"main": {}, "twin": {"config_root": str(twin)}}})
    plain = (prefix.root / "etc/portage/make.conf").read_text()

    def flags(where: Path, cflags: str) -> None:
        (where / "etc/portage/make.conf").write_text(plain + f'CFLAGS="{cflags}"\n')

    flags(prefix.root, "-O2 -pipe")
    flags(twin, "-O3  -march=znver4")
    r = emerge_swarm.run("swarm-fresh")
    assert r.returncode == 1, r.stderr
    one_line_error(r, "swarm-fresh")
    assert ('profile main builds with CFLAGS "-O2 -pipe" but profile twin, on the same binhost '
            'default, with CFLAGS "-O3 -march=znver4"') in r.stderr
    assert "by USE, never by compiler flags" in r.stderr
    assert emerge_swarm.query("SELECT * FROM profiles") == []
    assert emerge_swarm.query("SELECT * FROM packages") == []
    # The same flags: both are scanned, and their flags recorded.
    flags(twin, "-O2 -pipe")
    emerge_swarm.scan()
    recorded = dict(emerge_swarm.query("SELECT name, flags FROM profiles"))
    assert json.loads(recorded["main"])["CFLAGS"] == "-O2 -pipe" == json.loads(recorded["twin"])["CFLAGS"]
    shown = json.loads(emerge_swarm.run("swarm-status", "--json").stdout)["profile"]
    assert shown["flags"]["CFLAGS"] == "-O2 -pipe"
    # Both changed at once: one run scans both (each against the other's new flags).
    flags(prefix.root, "-O3 -pipe")
    flags(twin, "-O3 -pipe")
    r = emerge_swarm.run("swarm-fresh", "-q")
    assert r.returncode == 0, r.stderr
    # One changed alone, scanned alone: against the other's last scan.
    flags(twin, "-O3 -march=znver4")
    r = emerge_swarm.run("swarm-fresh", "--profile", "twin")
    assert r.returncode == 1 and 'with CFLAGS "-O3 -pipe"' in r.stderr, r.stderr
    # On a binhost of its own, twin may build as it likes.
    (tmp_path / "binhost-twin").mkdir()
    edit(emerge_swarm.config, {"binhosts": {"twin": {"path": str(tmp_path / "binhost-twin"),
                                                     "url": "http://127.0.0.1:9/twin"}},
                               "profiles": {"twin": {"binhost": "twin"}}})
    r = emerge_swarm.run("swarm-fresh", "-q")
    assert r.returncode == 0, r.stderr
