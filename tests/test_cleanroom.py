"""The throw-away root itself (swarmtools.cleanroom), without emerge: real namespaces,
real overlayfs, real bind mounts (root on this machine; skipped, with the reason, elsewhere)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmtools import cleanroom
from swarmtools.cleanroom import Bind, Room

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")


def mountinfo() -> list[str]:
    """The host's mount table (mount ids and all): a build must leave it as it was."""
    return Path("/proc/self/mountinfo").read_text().splitlines()


@pytest.fixture
def system(tmp_path):
    """A drone's system: a Portage root with a repository, PKGDIR and a work directory."""
    root = tmp_path / "system"
    for path in ("var/db/pkg/sys-apps/own-1", "var/db/repos/test/app-misc", "var/cache/binpkgs",
                 "var/tmp/swarmtools/d1/configroot/etc/portage", "usr/share"):
        (root / path).mkdir(parents=True)
    (root / "usr/share/own-file").write_text("the drone's own\n")
    (root / "var/tmp/swarmtools/d1/configroot/etc/portage/make.conf").write_text("USE=x\n")
    return root


def room_in(system: Path, name: str = "b1", **kw) -> Room:
    work = system / "var/tmp/swarmtools/d1"
    binds = (Bind(str(system / "var/cache/binpkgs"), True), Bind(str(system / "var/db/repos/test")),
             Bind(str(work / "configroot")))
    return Room(str(system), str(system), str(work / "builds" / name), kw.pop("binds", binds),
                (str(work),), **kw)


def run_in(room: Room, script: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(room.command(["sh", "-c", script]), capture_output=True, text=True,
                          **kw)


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.is_dir(), p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_a_build_writes_only_its_upper_layer_and_what_is_passed_through(system):
    room = room_in(system)
    before, mounts = snapshot(system), mountinfo()
    r = run_in(room, f"""
        echo changed > {system}/usr/share/own-file
        echo new > {system}/usr/share/installed-by-the-build
        rm -r {system}/var/db/pkg/sys-apps/own-1
        echo binary > {system}/var/cache/binpkgs/pkg-1.gpkg.tar
        echo x > {system}/var/db/repos/test/written 2>/dev/null || echo repo read-only
        cat {system}/var/tmp/swarmtools/d1/configroot/etc/portage/make.conf
        cat {system}/usr/share/own-file""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["repo", "read-only", "USE=x", "changed"]
    after = snapshot(system)
    # Only PKGDIR changed (and the build's own layers, until removed)...
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert {k for k in changed if not k.startswith("var/tmp/swarmtools/d1/builds")} == {
        "var/cache/binpkgs/pkg-1.gpkg.tar"}
    # ... and every other write is in the upper layer, thrown away with it.
    upper = Path(room.layers) / "upper1"
    assert (upper / "usr/share/installed-by-the-build").read_text() == "new\n"
    cleanroom.remove(room.layers)
    assert snapshot(system) == {**before, "var/cache/binpkgs/pkg-1.gpkg.tar": (False, b"binary\n"),
                                "var/tmp/swarmtools/d1/builds": (True, None)}
    assert mountinfo() == mounts


def test_no_build_sees_the_work_directory_or_another_builds_layers(system):
    first = room_in(system, "first")
    assert run_in(first, f"echo mine > {system}/usr/share/first-was-here").returncode == 0
    second = room_in(system, "second")
    r = run_in(second, f"""
        ls -A {system}/var/tmp/swarmtools/d1
        [ -e {system}/usr/share/first-was-here ] && echo SEES THE FIRST BUILD
        [ -e {first.layers}/upper1/usr/share/first-was-here ] && echo SEES ITS LAYER
        true""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["configroot"]  # only what is passed through, read-only
    assert (Path(first.layers) / "upper1/usr/share/first-was-here").is_file()  # it is there


def test_the_helper_reports_what_it_could_not_set_up(system):
    room = room_in(system, binds=(Bind(str(system / "no/such/dir")),))
    r = run_in(room, "true")
    assert r.returncode == cleanroom.UNAVAILABLE
    assert cleanroom.failure(r.stderr) == (f"cannot pass {system}/no/such/dir through to the "
                                           "build: it does not exist")
    r = run_in(room_in(system), "exit 3")  # the command's own code is passed on
    assert r.returncode == 3 and cleanroom.failure(r.stderr) is None


def test_the_probe_names_why_a_host_cannot_isolate(system, tmp_path):
    assert cleanroom.probe(room_in(system)) is None
    assert not Path(room_in(system).layers).exists()  # the probe leaves nothing
    bare = tmp_path / "bare"
    bare.mkdir()
    assert "is not a Portage root (no var/db/pkg)" in cleanroom.probe(
        Room(str(bare), str(bare), str(tmp_path / "layers")))
    # Not root: the probe asked by an unprivileged user says so, touching nothing.
    script = (f"from swarmtools.cleanroom import Room, probe; "
              f"print(probe(Room({str(system)!r}, {str(system)!r}, '/nonexistent/layers')))")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", script], capture_output=True, text=True,
                       cwd="/", env={**os.environ, "PYTHONPATH": str(Path(cleanroom.__file__)
                                                                    .parents[1])})
    assert r.stdout.strip() == "not root (a build root needs mount namespaces and overlayfs)", (
        r.stdout + r.stderr)


def test_a_chrooted_root_has_its_own_proc_dev_and_the_passed_paths(tmp_path):
    # The layout of a Gentoo host (EROOT /): the root is mounted apart and
    # chrooted into. A stage here is a shell and its libraries.
    stage, shared = tmp_path / "stage", tmp_path / "shared"
    (stage / "var/db/pkg").mkdir(parents=True)
    shared.mkdir()
    for program in ("/bin/sh", "/bin/cat"):
        for path in [program, *_libraries(program)]:
            target = stage / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    room = Room(str(stage), "/", str(tmp_path / "layers"), (Bind(str(shared), True),),
                (str(tmp_path / "layers"),))
    r = run_in(room, f"""
        echo built > {shared}/out
        echo mine > /new-file
        [ -e /proc/1/stat ] && echo own-proc; [ -c /dev/null ] && echo dev
        [ -e {tmp_path}/layers/upper1 ] && echo SEES ITS LAYERS
        cat /proc/1/comm""")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["own-proc", "dev"]
    assert r.stdout.split()[2].startswith("python")  # PID 1: the namespace's own init
    assert (shared / "out").read_text() == "built\n"
    assert not (stage / "new-file").exists()
    assert (tmp_path / "layers/upper1/new-file").is_file()


def _libraries(program: str) -> list[str]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    return [word for word in out.split() if word.startswith("/")]


def test_a_root_spanning_two_file_systems_gets_an_overlay_for_each(system, tmp_path):
    # usr/share/extra is a mount of its own (as a separate /usr or /var is):
    # the build sees its files, and its writes there land in an upper layer.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "data").write_text("on another file system\n")
    (system / "usr/share/extra").mkdir()
    room = room_in(system)
    build = room.command(["sh", "-c", (f"cat {system}/usr/share/extra/data;"
                                      f" echo new > {system}/usr/share/extra/data")])
    script = (f"import subprocess; subprocess.run(['mount', '--bind', {str(extra)!r}, "
              f"{str(system / 'usr/share/extra')!r}], check=True); "
              f"raise SystemExit(subprocess.run({build!r}).returncode)")
    # The bind mount is made in a namespace of the test's own: the host never sees it.
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                        script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "on another file system\n"
    assert (extra / "data").read_text() == "on another file system\n"
    assert (Path(room.layers) / "upper2/data").read_text() == "new\n"


def test_a_killed_drone_takes_its_build_and_its_mounts_with_it(system, tmp_path):
    mounts = mountinfo()
    beat = tmp_path / "beat"
    room = room_in(system)
    # A "drone": starts the build as swarm-drone does, then is SIGKILLed.
    drone = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, time
from swarmtools import cleanroom
from swarmtools.cleanroom import Room
room = Room.from_json({room.command([])[3]!r})
subprocess.Popen(room.command(["sh", "-c", "while :; do touch {beat}; sleep 0.1; done"]),
                 start_new_session=True, preexec_fn=cleanroom.die_with_parent)
time.sleep(3600)"""])
    deadline = time.monotonic() + 30
    while not beat.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(drone.pid, signal.SIGKILL)
    drone.wait()
    time.sleep(1)
    stopped = beat.stat().st_mtime_ns
    time.sleep(1)
    assert beat.stat().st_mtime_ns == stopped  # the build is gone with the drone
    assert mountinfo() == mounts
    assert cleanroom.clear_stale(Path(room.layers).parent) == ["b1"]
    assert not Path(room.layers).exists()
