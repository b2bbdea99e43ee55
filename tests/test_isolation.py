"""Clean-room builds with the real emerge: each build in its throw-away root, never in the
drone's own system (real overlayfs and namespaces: root on this machine)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import DroneSwarm, HttpServer, build_root_digest, drone_emerge_log, ebuild, script

from swarmtools.config import edit
from swarmtools.prefix import create_prefix

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="throw-away roots need root")]


def installed_file(package: Path, name: str) -> str:
    """The content of NAME (a path ending) in a gpkg's image: what a client would install."""
    with tarfile.open(package) as gpkg:
        member = next(m for m in gpkg.getmembers() if m.name.endswith("/image.tar.zst"))
        compressed = gpkg.extractfile(member).read()
    image = subprocess.run(["zstd", "-dc"], input=compressed, capture_output=True,
                           check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(image)) as tar:
        found = next(m for m in tar.getmembers() if m.name.endswith(name))
        return tar.extractfile(found).read().decode()


def published(swarm: DroneSwarm, cpv: str, binhost: str = "default") -> Path:
    """The published file of CPV's build on BINHOST."""
    (path,) = swarm.query("SELECT binhost_path FROM packages WHERE cpv = ? AND binhost = ?"
                          " AND status = 'synced'", (cpv, binhost))[0]
    root = swarm.root / ("binhost" if binhost == "default" else f"binhost-{binhost}")
    return root / path


def drain(swarm: DroneSwarm, name: str) -> None:
    d = swarm.drone(name, "--drain", "-v")
    _out, err = d.communicate(timeout=600)
    assert d.returncode == 0, err
    r = swarm.sync()
    assert r.returncode == 0, r.stderr


def test_the_example_world_leaves_each_drones_system_as_it_was(example_swarm):
    swarm = example_swarm  # two drones built the whole world, each build in its own root
    digests, mounts = swarm.before
    assert [r[0] for r in swarm.drone_results] == [0, 0], swarm.drone_results
    for name in ("d1", "d2"):
        prefix = swarm.prefixes[name]
        assert build_root_digest(prefix) == digests[name]
        assert not any((prefix.root / "var/db/pkg").iterdir())  # nothing ever installed here
        # ... though the builds installed their dependencies, as binaries, in their rooms.
        log = drone_emerge_log(prefix, name)
        assert re.search(r"\(\d+ of \d+\) Merging Binary", log), log[-2000:]
        assert not list((prefix.root / "var/tmp/swarmtools" / name / "builds").iterdir())
    assert Path("/proc/self/mountinfo").read_text() == mounts


AUTOMAGIC = {
    # The profile's @system: what swarm-drone --base installs into a clean base.
    "profiles/default/linux/packages": "*sys-apps/example-base\n",
    # In the drone's own system, a package no build depends on leaves a file...
    "app-misc/marker/marker-1.ebuild": ebuild(
        'src_install() { insinto /usr/share/marker; echo here > "${T}/present";'
        ' doins "${T}/present"; }\n'),
    # ... that this package's build finds if it lies in its root (an automagic dependency).
    "app-misc/automagic/automagic-1.ebuild": ebuild(
        'src_compile() { if [ -e "${EPREFIX}/usr/share/marker/present" ]; then echo found;'
        ' else echo absent; fi > automagic.txt; }\n'
        'src_install() { insinto /usr/share/automagic; doins automagic.txt; }\n'),
}


def test_a_clean_base_keeps_automagic_dependencies_out_and_live_builds_show_them(tmp_path):
    swarm = DroneSwarm(tmp_path, extra_ebuilds=AUTOMAGIC, world=["app-misc/automagic"],
                       publish=True)
    try:
        d1, d2 = swarm.prefixes["d1"], swarm.prefixes["d2"]
        for prefix in (d1, d2):  # each drone's own system has the marker
            r = prefix.run(["emerge", "--oneshot", "--color=n", "app-misc/marker"])
            assert r.returncode == 0, r.stdout[-2000:]
        # d2 builds on a clean base: seeded as a stage3 would be (here: an empty
        # prefix at d2's EPREFIX inside it), then kept by swarm-drone --base.
        base = tmp_path / "base"
        create_prefix(base / str(d2.root).lstrip("/"), world=[])
        edit(swarm.config, {"drones": {"d1": {"isolation": "none"},
                                       "d2": {"build_root": str(base)}}})
        swarm.scan(resolve=True)
        assert swarm.run("swarm-exclude", "add", "app-misc/automagic", "--drone", "d1",
                         "--reason", "d2 first").returncode == 0
        drain(swarm, "d2")
        clean = published(swarm, "app-misc/automagic-1")
        assert installed_file(clean, "automagic.txt") == "absent\n"
        # The base from the binhost: the profile's @system, as binaries.
        r = swarm.run("swarm-drone", "--drone", "d2", "--base")
        assert r.returncode == 0, r.stderr
        vdb = base / str(d2.root).lstrip("/") / "var/db/pkg"
        assert [p.name for p in vdb.glob("*/*")] == ["example-base-1.0"]
        assert not (d2.root / "var/db/pkg/sys-apps").exists()  # not in d2's own system
        # The same package built in d1's live system (isolation = "none") finds it.
        for prefix in swarm.prefixes.values():
            ebuilds = prefix.repo / "app-misc/automagic"
            shutil.copy(ebuilds / "automagic-1.ebuild", ebuilds / "automagic-1-r1.ebuild")
        assert swarm.run("swarm-exclude", "remove", "app-misc/automagic").returncode == 0
        assert swarm.run("swarm-exclude", "add", "app-misc/automagic", "--drone", "d2",
                         "--reason", "d1 now").returncode == 0
        swarm.scan(resolve=True)
        drain(swarm, "d1")
        live = published(swarm, "app-misc/automagic-1-r1")
        assert installed_file(live, "automagic.txt") == "found\n"
    finally:
        swarm.stop()


FLAVOURS = {
    "dev-libs/flavour/flavour-1.ebuild": ebuild(
        'IUSE="+x"\n'
        'src_install() { insinto /usr/share/flavour; usex x yes no > "${T}/x"; doins "${T}/x"; }\n'),
    # Records, at build time, the USE of the flavour it was built against.
    "app-misc/consumer/consumer-1.ebuild": ebuild(
        'DEPEND="dev-libs/flavour"\n'
        'src_compile() { cat "${ESYSROOT}/usr/share/flavour/x" > consumer.txt || die; }\n'
        'src_install() { insinto /usr/share/consumer; doins consumer.txt; }\n'),
}


def test_two_profiles_on_one_drone_each_build_against_their_own_dependencies(tmp_path):
    # Profile "other" wants flavour without x, on a binhost of its own: one
    # drone builds both profiles' consumer, one after the other. In its live
    # system the second would find the first one's flavour installed.
    swarm = DroneSwarm(tmp_path, drones=("d1",), extra_ebuilds=FLAVOURS,
                       world=["app-misc/consumer"], publish=True)
    other = HttpServer(swarm.root / "binhost-other")
    try:
        orchestrator = swarm.prefixes["orchestrator"]
        config_root = tmp_path / "profile-other"
        shutil.copytree(orchestrator.root / "etc", config_root / "etc", symlinks=True)
        (config_root / "etc/portage/package.use").write_text("dev-libs/flavour -x\n")
        edit(swarm.config, {
            "profiles": {"default": {}, "other": {"config_root": str(config_root),
                                                  "binhost": "other"}},
            "binhosts": {"other": {"path": str(swarm.root / "binhost-other"), "url": other.url}}})
        before = build_root_digest(swarm.prefixes["d1"])
        swarm.scan(resolve=True)
        drain(swarm, "d1")
        swarm.wait_for("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM packages WHERE"
                       " status != 'synced')")
        assert installed_file(published(swarm, "app-misc/consumer-1"), "consumer.txt") == "yes\n"
        assert installed_file(published(swarm, "app-misc/consumer-1", "other"),
                              "consumer.txt") == "no\n"
        assert build_root_digest(swarm.prefixes["d1"]) == before
        # Interleaved: both consumers were built by d1 after both flavours.
        order = [cpv for (cpv,) in swarm.query(
            "SELECT p.cpv || '@' || p.binhost FROM events e JOIN packages p ON p.id ="
            " e.package_id WHERE e.event = 'built' ORDER BY e.id")]
        assert sorted(order[-2:]) == ["app-misc/consumer-1@default", "app-misc/consumer-1@other"]
    finally:
        other.stop()
        swarm.stop()


def test_a_drone_that_cannot_isolate_refuses_to_start_unless_told_to_build_live(tmp_path):
    # Root without CAP_SYS_ADMIN, as in an unprivileged container: no mount namespaces.
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["sys-apps/example-base"])
    swarm.scan()
    confined = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    r = subprocess.run([*confined, script("swarm-drone"), "--drone", "d1", "--once"],
                       env=swarm.env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "swarm-drone: error: drone d1 cannot build in a throw-away root: cannot make mount and"
        " PID namespaces: Operation not permitted (needs root with CAP_SYS_ADMIN, not an"
        " unprivileged container); set drones.d1.isolation = \"none\" to build in its live"
        " system\n")
    # swarm-config check --remote asks the drone (here: confined as above) and says so.
    edit(swarm.config, {"drones": {"d1": {"check_command": confined}}})
    (found,) = [f for f in json.loads(swarm.run("swarm-config", "check", "--remote",
                                                "--json").stdout) if f["key"] == "isolation"]
    assert (found["expected"], found["ok"]) == ("overlay", False)
    assert found["found"].startswith("overlay: cannot (cannot make mount and PID namespaces")
    edit(swarm.config, {"drones": {"d1": {"isolation": "none"}}})
    (found,) = [f for f in json.loads(swarm.run("swarm-config", "check", "--remote",
                                                "--json").stdout) if f["key"] == "isolation"]
    assert found == {"host": "d1", "key": "isolation", "expected": "none: builds in its live "
                     "system", "found": "none: builds in its live system", "ok": True}
    r = subprocess.run([*confined, script("swarm-drone"), "--drone", "d1", "--once", "-v"],
                       env=swarm.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "drone d1 started" in r.stderr
    assert swarm.query("SELECT cpv, status FROM packages") == [("sys-apps/example-base-1.0",
                                                                 "received")]
