"""swarm-drone with the real emerge: builds, failures, dead drones, SIGTERM."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DroneSwarm, build_root_digest, ebuild, script

from swarmtools.build import STOP_GRACE_SECONDS
from swarmtools.prefix import EXAMPLE_REPO

# Real emerge, seconds a test; leases of seconds: these run one after the
# other on one xdist worker (make test runs --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lease-timing")]

FAST = {"lease_seconds": 4, "heartbeat_seconds": 1, "poll_seconds": 1}


def example_cpvs():
    return {f"{p.parent.parent.name}/{p.stem}" for p in EXAMPLE_REPO.glob("*/*/*.ebuild")}


def held(tmp_path, compile_first=""):
    """One package, app-misc/held-1, whose build waits while a hold file exists."""
    pytest.importorskip("portage")
    hold, compiling = tmp_path / "hold", tmp_path / "compiling"
    hold.touch()
    # While held, it touches COMPILING: a build that still runs is seen.
    body = (f'src_compile() {{ {compile_first} touch "{compiling}";'
            f' while [ -e "{hold}" ]; do touch "{compiling}"; sleep 0.2; done; }}\n')
    swarm = DroneSwarm(tmp_path, extra_ebuilds={"app-misc/held/held-1.ebuild": ebuild(body)},
                       world=["app-misc/held"], delegate=FAST)
    swarm.scan()
    swarm.hold, swarm.compiling = hold, compiling
    yield swarm
    hold.unlink(missing_ok=True)  # lets any orphaned emerge end


@pytest.fixture
def held_swarm(tmp_path):
    yield from held(tmp_path)


@pytest.fixture
def stubborn_swarm(tmp_path):
    """held-1 whose build ignores SIGTERM, like a hung tool or one that traps it."""
    yield from held(tmp_path, "trap '' TERM;")


def events(swarm, cpv):
    return [tuple(e) for e in swarm.query(
        "SELECT e.actor, e.event FROM events e JOIN packages p ON p.id = e.package_id"
        " WHERE p.cpv = ? ORDER BY e.id", (cpv,))]


def test_two_local_drones_build_the_example_world(example_swarm):
    swarm = example_swarm  # fresh --resolve, then two drones --drain, publishing as they go
    assert [r[0] for r in swarm.drone_results] == [0, 0], swarm.drone_results
    rows = swarm.query("SELECT cpv, status, drone, binhost_path FROM packages")
    assert {r[0] for r in rows} == example_cpvs()
    assert {r[1] for r in rows} == {"synced"}
    assert {r[2] for r in rows} == {"d1", "d2"}  # both worked
    for cpv, _, drone, path in rows:
        published = swarm.root / "binhost" / path
        assert published.is_file() and published.name.startswith(cpv.split("/")[1])
    assert swarm.query("SELECT count(*), count(DISTINCT package_id) FROM events WHERE event = 'claimed'"
                       ) == [(len(rows), len(rows))]
    figures = json.loads(swarm.run("swarm-status", "--json").stdout)
    assert figures["builds_ok"] == len(rows) and figures["drones_online"] == 2
    facts = figures["drones"][0]["facts"]
    assert facts["arch"] == "amd64" and facts["chost"] == "x86_64-pc-linux-gnu"


def test_a_killed_drone_loses_its_lease_and_another_builds(held_swarm):
    d1 = held_swarm.drone("d1", "--once")
    held_swarm.wait_for("SELECT 1 FROM packages WHERE status = 'delegated' AND drone = 'd1'")
    time.sleep(1.5)  # mid-build: heartbeats flow
    beats = held_swarm.query("SELECT last_heartbeat FROM drones WHERE name = 'd1'")
    os.killpg(d1.pid, signal.SIGKILL)
    d1.wait()
    time.sleep(FAST["lease_seconds"] + 1.5)
    held_swarm.hold.unlink()
    d2 = held_swarm.drone("d2", "--once")
    _out, err = d2.communicate(timeout=120)
    assert d2.returncode == 0, err
    assert held_swarm.query("SELECT status, drone FROM packages") == [("received", "d2")]
    assert events(held_swarm, "app-misc/held-1") == [
        ("swarm-fresh", "added"), ("d1", "claimed"), ("swarm-delegate", "expired"),
        ("d2", "claimed"), ("d2", "built")]
    assert beats  # d1 had sent heartbeats before it died


def test_a_drone_killed_mid_build_leaves_its_system_and_the_mounts_as_they_were(held_swarm):
    prefix = held_swarm.prefixes["d1"]
    before, mounts = build_root_digest(prefix), Path("/proc/self/mountinfo").read_text()
    d1 = held_swarm.drone("d1")
    deadline = time.monotonic() + 60
    while not held_swarm.compiling.exists():
        assert time.monotonic() < deadline and d1.poll() is None, d1.communicate()
        time.sleep(0.1)
    os.kill(d1.pid, signal.SIGKILL)  # the drone alone, as the OOM killer would
    d1.wait()
    time.sleep(1.5)
    stamp = held_swarm.compiling.stat().st_mtime_ns
    time.sleep(1)
    assert held_swarm.compiling.stat().st_mtime_ns == stamp  # its build died with it
    assert Path("/proc/self/mountinfo").read_text() == mounts
    assert build_root_digest(prefix) == before
    builds = prefix.root / "var/tmp/swarmtools/d1/builds"
    (stale,) = builds.iterdir()  # the killed build's layers, until the next start
    held_swarm.hold.unlink()
    d1 = held_swarm.drone("d1", "--once")
    _out, err = d1.communicate(timeout=120)
    assert d1.returncode == 0, err
    assert held_swarm.query("SELECT status, drone FROM packages") == [("received", "d1")]
    assert not stale.exists() and not any(builds.iterdir())
    assert build_root_digest(prefix) == before


def test_sigterm_stops_the_build_and_releases(held_swarm):
    d1 = held_swarm.drone("d1")
    held_swarm.wait_for("SELECT 1 FROM packages WHERE status = 'delegated'")
    time.sleep(1)
    # A service ignores SIGPIPE: an ssh that sshd dropped before it read the
    # request must be a retried error, not the drone's death (seen in CI).
    ignored = int(_proc_status(d1.pid)["SigIgn"], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1))
    d1.send_signal(signal.SIGTERM)
    _out, err = d1.communicate(timeout=60)
    assert d1.returncode == 0, err
    assert "releasing app-misc/held-1" in err
    assert held_swarm.query("SELECT status, drone FROM packages") == [("needed", None)]
    assert events(held_swarm, "app-misc/held-1")[-1] == ("d1", "released")


def test_a_build_that_ignores_sigterm_is_killed_and_released(stubborn_swarm):
    d1 = stubborn_swarm.drone("d1")
    deadline = time.monotonic() + 60
    while not stubborn_swarm.compiling.exists():
        assert time.monotonic() < deadline and d1.poll() is None, d1.communicate()
        time.sleep(0.1)
    d1.send_signal(signal.SIGTERM)
    _out, err = d1.communicate(timeout=90)
    assert d1.returncode == 0, err
    assert f"still running {STOP_GRACE_SECONDS} s after SIGTERM: killing it" in err
    assert "releasing app-misc/held-1" in err
    assert stubborn_swarm.query("SELECT status, drone FROM packages") == [("needed", None)]


def _proc_status(pid):
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_a_long_build_keeps_its_lease_through_heartbeats(held_swarm):
    d1 = held_swarm.drone("d1", "--once")
    held_swarm.wait_for("SELECT 1 FROM packages WHERE status = 'delegated'")
    time.sleep(FAST["lease_seconds"] * 2)  # twice the lease, still building
    assert held_swarm.run("swarm-delegate", "expire", "--json").stdout.strip() == \
        '{"expired": 0, "retried": 0}'
    held_swarm.hold.unlink()
    _out, err = d1.communicate(timeout=120)
    assert d1.returncode == 0, err
    assert held_swarm.query("SELECT status, drone FROM packages") == [("received", "d1")]


def test_a_failed_build_is_reported_with_its_log(tmp_path):
    pytest.importorskip("portage")
    body = 'src_compile() { die "this package does not build"; }\n'
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/broken"], delegate=FAST,
                       extra_ebuilds={"app-misc/broken/broken-1.ebuild": ebuild(body)})
    swarm.scan()
    d1 = swarm.drone("d1", "--once")
    _out, _err = d1.communicate(timeout=120)
    assert d1.returncode == 1
    (status, attempts, retry_after), = swarm.query("SELECT status, attempts, retry_after FROM packages")
    assert (status, attempts) == ("failed", 1) and retry_after
    detail, kind = swarm.query("SELECT detail, kind FROM events WHERE event = 'build-failed'")[0]
    log_path = detail.split("log ")[1]
    kept = Path(log_path).read_text()
    assert "this package does not build" in kept and kind == "build"
    # Portage's own build log (PORTAGE_LOG_FILE), not only emerge's console.
    assert "==> build log app-misc:broken-1" in kept and ">>> Unpacking source" in kept
    assert not list((swarm.root / "state" / "staging" / "d1" / "logs").rglob("*.log"))


def test_emerges_idle_trickle_of_cpu_is_no_progress_but_a_silent_compiler_is():
    from swarmtools.build import CLOCK_TICKS, _busy

    # emerge waiting for a hung phase wakes now and then: 5 ticks in 15 s, measured (counted
    # as progress, it kept a hung build running for 14 to 133 s instead of 3).
    assert not _busy(1, 3.0) and not _busy(5, 15.0)
    # A compiler or linker that writes nothing: a core, or a tenth of one.
    assert _busy(3 * CLOCK_TICKS, 3.0) and _busy(int(0.1 * 3 * CLOCK_TICKS), 3.0)


def test_a_build_that_shows_no_progress_is_stopped_as_stalled(tmp_path):
    pytest.importorskip("portage")
    body = 'src_compile() { sleep 600; }\n'  # no output, no CPU: a hung test suite, say
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/hung"],
                       delegate={**FAST, "max_silent_seconds": 3},
                       extra_ebuilds={"app-misc/hung/hung-1.ebuild": ebuild(body)})
    swarm.scan()
    started = time.monotonic()
    d1 = swarm.drone("d1", "--once")
    _out, err = d1.communicate(timeout=120)
    assert d1.returncode == 1 and time.monotonic() - started < 60, err
    (status, attempts), = swarm.query("SELECT status, attempts FROM packages")
    assert (status, attempts) == ("failed", 1)
    detail, kind = swarm.query("SELECT detail, kind FROM events WHERE event = 'build-failed'")[0]
    assert kind == "stalled"
    assert "no output and (almost) no CPU time for 3 s" in Path(detail.split("log ")[1]).read_text()


def test_a_drain_does_not_end_while_a_dependency_is_being_published(tmp_path, built_packages):
    """The held-out race, made certain: a draining drone asks for work while the one
    dependency its last package waits for is received; the publication commits after the
    claim found nothing and before the answer is made. The answer must keep it draining."""
    from conftest import HandDrone

    swarm = DroneSwarm(tmp_path, world=["dev-libs/libfoo"], delegate=FAST)
    swarm.scan(resolve=True)
    hand = HandDrone(swarm, built_packages, "d1")
    base = "sys-apps/example-base-1.0"
    assert hand.claim() == base  # libfoo waits for it
    hand.report(base, hand.stage(base))  # received: being published
    # d2 asks (its claim paused after it found nothing); meanwhile swarm-sync publishes.
    claim = subprocess.Popen(
        [script("swarm-delegate"), "claim", "--drone", "d2", "--json", "--idle-info",
         "--heartbeat"], env={**swarm.env, "SWARM_DELEGATE_TEST_HOOK": "claimed:pause=6"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    claim.stdin.write(json.dumps(HandDrone.FACTS))
    claim.stdin.close()
    swarm.wait_for("SELECT 1 FROM drones WHERE name = 'd2'", timeout=20)
    time.sleep(1)  # the claim's transaction, right after its heartbeat
    sync = swarm.run("swarm-sync")
    assert sync.returncode == 0, sync.stderr
    assert swarm.query("SELECT status FROM packages WHERE cpv = ?", (base,)) == [("synced",)]
    answer = json.loads(claim.stdout.read())
    assert claim.wait(timeout=30) == 0, claim.stderr.read()
    assert answer["cpv"] is None  # the claim ran before the publication...
    # ...so its answer tells of the publication in progress, and the drone asks again.
    assert answer["in_progress"] == 1, answer
    assert hand.claim() == "dev-libs/libfoo-1.2"


def test_a_drain_waits_for_a_back_off_about_to_end(tmp_path):
    """A package waits a moment after a drone found a dependency missing; a draining
    drone alone in the swarm waits for it and builds it, rather than leave it needed."""
    pytest.importorskip("portage")
    # A wait of 2 * poll_seconds: longer than the drone takes to start.
    swarm = DroneSwarm(tmp_path, world=["app-misc/example-docs"], publish=True,
                       delegate={**FAST, "poll_seconds": 5, "idle_max_seconds": 30})
    swarm.scan()
    docs = "app-misc/example-docs-1.0"
    arch, chost = swarm.query("SELECT arch, chost FROM profiles")[0]
    facts = json.dumps({"arch": arch, "chost": chost})
    r = swarm.run("swarm-delegate", "claim", "--drone", "d1", "--json", "--heartbeat",
                  input=facts)
    assert json.loads(r.stdout)["cpv"] == docs, r.stderr
    r = swarm.run("swarm-delegate", "report", "--drone", "d1", docs, "--failed", "--kind",
                  "missing-binary-dependency")
    assert r.returncode == 0, r.stderr
    (retry_after,), = swarm.query("SELECT retry_after FROM packages")
    assert retry_after  # a moment, then it may be claimed again
    d2 = swarm.drone("d2", "--drain")
    try:
        _out, err = d2.communicate(timeout=180)
    finally:
        swarm.stop()
    assert d2.returncode == 0, err
    # (The drain waits for its build's publication too.)
    assert swarm.query("SELECT status, drone FROM packages") == [("synced", "d2")], err
