"""The whole delegation path for real: sshd with forced commands, two drones, rsync.

sshd listens on a loopback port with its own host key; each drone's key is
pinned in authorized_keys to `swarm-delegate gateway --drone NAME`. Two
drones, each a Portage prefix, run swarm-drone over that ssh until the queue
is empty.
"""

import json
import socket
import subprocess
import threading
import time

import pytest
from conftest import DroneSwarm, HandDrone, script
from sshd import start_sshd

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test


def ssh_swarm_with(tmp_path, settings=(), delegate=None, world=None):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, delegate=delegate or {"heartbeat_seconds": 2, "poll_seconds": 1},
                       publish=True, world=world)
    gateway = script("swarm-delegate")
    server = start_sshd(tmp_path / "sshd", {
        name: f"{gateway} gateway --drone {name} --config {swarm.config}" for name in ("d1", "d2")},
        settings)
    from swarmtools.config import edit

    edit(swarm.config, {"orchestrator": {"ssh": server.destination},
                        "drones": {name: {"transport": "ssh", "ssh_command": server.ssh_command(name)}
                                   for name in ("d1", "d2")}})
    swarm.server = server
    return swarm


# example-app and what it needs (build-time, runtime, a USE-conditional one): two
# drones build these over ssh (the whole world is built by two local drones in
# tests/test_drone.py, with the same code on their side of the transport).
APP = {"app-misc/example-app-1.0", "dev-libs/libbar-2.0", "dev-libs/libfoo-1.2",
       "sys-apps/example-base-1.0", "dev-libs/libcompress-0.5", "dev-lang/example-lang-2.3",
       "dev-build/example-make-3.1"}


@pytest.fixture
def ssh_swarm(tmp_path):
    swarm = ssh_swarm_with(tmp_path, world=["app-misc/example-app"])
    yield swarm
    swarm.server.stop()
    swarm.stop()


def test_two_drones_over_ssh_build_everything_exactly_once(ssh_swarm):
    ssh_swarm.scan(resolve=True)
    procs = [ssh_swarm.drone(name, "--drain", "-v") for name in ("d1", "d2")]
    results = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ssh_swarm.wait_for("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM packages WHERE status != 'synced')",
                       timeout=60)
    rows = ssh_swarm.query("SELECT cpv, status, drone, file FROM packages")
    expected = APP
    assert {r[0] for r in rows} == expected
    assert {r[1] for r in rows} == {"synced"}
    for cpv, _, drone, file in rows:
        assert file.startswith(f"{drone}/")  # uploaded by its builder, through the gateway
    claims = ssh_swarm.query("SELECT p.cpv, count(*) FROM events e JOIN packages p"
                             " ON p.id = e.package_id WHERE e.event = 'claimed' GROUP BY p.cpv")
    assert {c for _, c in claims} == {1} and len(claims) == len(expected)
    # It really went through sshd and the gateway: a session per verb and upload,
    # over one multiplexed connection a drone (a new one only if a master ended).
    log = ssh_swarm.server.log_text()
    assert log.count("Starting session: forced-command") >= 3 * len(expected)
    assert 2 <= log.count("Accepted publickey") <= 4


@pytest.mark.xdist_group("lease-timing")  # counts sessions over seconds of back-off
def test_a_build_costs_three_sessions_and_an_idle_drone_one_a_claim(tmp_path):
    """Counted in sshd's log: the heartbeat rides on the claim, and idle waits back off."""
    swarm = ssh_swarm_with(tmp_path, delegate={"lease_seconds": 600, "poll_seconds": 1,
                                               "idle_max_seconds": 4})
    from swarmtools.config import edit

    # Without multiplexing every session is a login: sshd's "Accepted publickey".
    edit(swarm.config, {"drones": {"d1": {"ssh_command": [
        *swarm.server.ssh_command("d1"), "-o", "ControlMaster=no"]}}})

    def logins():
        return swarm.server.log_text().count("Accepted publickey")
    try:
        empty = tmp_path / "empty.txt"
        empty.write_text("\nTotal: 0 packages, Size of downloads: 0 KiB\n")
        swarm.scan(source=str(empty))
        before = logins()  # an empty queue: one claim, one session, the facts recorded
        drone = swarm.drone("d1", "--once")
        _out, err = drone.communicate(timeout=120)
        assert drone.returncode == 0 and logins() - before == 1, err
        facts = json.loads(swarm.query("SELECT facts FROM drones WHERE name = 'd1'")[0][0])
        assert facts["building"] == [] and facts["version"] and facts["chost"]

        before = logins()  # as a service: asks after about 1, 2, 4, 4... s, not every second
        proc = swarm.drone("d1", "-vv")
        time.sleep(10)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert 2 <= logins() - before <= 6, err  # every second: about 9

        swarm.scan(resolve=True)
        # The first build also fetches the build profile (once a digest).
        before = logins()  # a build: claim (the heartbeat with it), profile, upload, report
        _out, err = swarm.drone("d1", "--once", "-v").communicate(timeout=300)
        assert "reported" in err, err
        assert swarm.query("SELECT count(*) FROM events WHERE event = 'built'") == [(1,)]
        assert logins() - before == 4, err
        before = logins()  # the next: claim, upload, report
        _out, err = swarm.drone("d1", "--once", "-v").communicate(timeout=300)
        assert "reported" in err, err
        assert swarm.query("SELECT count(*) FROM events WHERE event = 'built'") == [(2,)]
        assert logins() - before == 3, err
    finally:
        swarm.server.stop()
        swarm.stop()


def test_a_drone_key_cannot_claim_as_another_over_ssh(ssh_swarm):
    ssh_swarm.scan()
    server = ssh_swarm.server
    r = subprocess.run([*server.ssh_command("d1"), server.destination,
                        "swarm-delegate claim --drone d2 --json"], capture_output=True, text=True)
    assert r.returncode == 2 and "may not act as 'd2'" in r.stderr
    r = subprocess.run([*server.ssh_command("d1"), server.destination, "cat /etc/shadow"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    r = subprocess.run([*server.ssh_command("d1"), server.destination,
                        "swarm-delegate claim --json --heartbeat"], capture_output=True, text=True,
                       input=json.dumps(HandDrone.FACTS))  # its CHOST and ARCH: the profile's
    assert r.returncode == 0 and json.loads(r.stdout)["cpv"]
    assert ssh_swarm.query("SELECT drone FROM packages WHERE status = 'delegated'") == [("d1",)]


def test_drones_lose_no_build_when_sshd_drops_connections(tmp_path):
    """sshd's MaxStartups drops connections in a burst; drones retry, nothing is lost."""
    # A chain of three packages (libbar needs libfoo needs example-base); every
    # session a login of its own (no shared connection), so drops reach the drones.
    swarm = ssh_swarm_with(tmp_path, ("MaxStartups 1:100:1",),  # a second at once is dropped
                           world=["dev-libs/libbar"])
    from swarmtools.config import edit

    edit(swarm.config, {"drones": {name: {"ssh_command": [
        *swarm.server.ssh_command(name), "-o", "ControlMaster=no"]} for name in ("d1", "d2")}})
    try:
        swarm.scan(resolve=True)
        stop = threading.Event()

        def burst():  # other hosts knocking: each unauthenticated connection takes the slot
            while not stop.wait(0.4):
                try:
                    with socket.create_connection(("127.0.0.1", swarm.server.port), timeout=2):
                        time.sleep(0.2)
                except OSError:
                    pass
        knockers = [threading.Thread(target=burst) for _ in range(2)]
        for thread in knockers:
            thread.start()
        # As services (no --drain): a drone that cannot reach the orchestrator waits.
        procs = [swarm.drone(name, "-v") for name in ("d1", "d2")]
        done = None
        try:
            done = swarm.wait_for("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM packages"
                                  " WHERE status != 'synced')", timeout=400)
        except AssertionError:
            pass  # what the drones said is the story: below
        finally:
            stop.set()
            for proc in procs:
                proc.terminate()
            results = [p.communicate(timeout=60) for p in procs]
            for thread in knockers:
                thread.join()
        assert done, [(p.returncode, err[-4000:]) for p, (_, err) in zip(procs, results)]
        assert [p.returncode for p in procs] == [0, 0], results
        claims = swarm.query("SELECT count(*), count(DISTINCT package_id) FROM events"
                             " WHERE event = 'claimed'")
        assert claims[0][0] == claims[0][1]  # no package handed out twice, none built twice
        assert swarm.query("SELECT count(*) FROM events WHERE event = 'built'") == [(claims[0][0],)]
        retried = "".join(err for _, err in results).count("again in")
        dropped = swarm.server.log_text().count("past MaxStartups")
        assert retried > 0 and dropped > 0, (retried, dropped)  # it really happened
    finally:
        swarm.server.stop()
        swarm.stop()


RSYNC_MIRROR = """#!/bin/sh
# Forced command of the mirror key: rsync into {root}, nothing else.
case "$SSH_ORIGINAL_COMMAND" in
  "rsync --server "*) cd {root} && exec $SSH_ORIGINAL_COMMAND ;;
  *) echo "only rsync" >&2; exit 1 ;;
esac
"""


def test_the_binhost_is_mirrored_over_ssh(tmp_path, built_packages):
    from swarmtools.config import edit

    swarm = DroneSwarm(tmp_path, drones=("d1",))
    swarm.scan()
    cpvs = HandDrone(swarm, built_packages).build_all()
    web = tmp_path / "web"
    web.mkdir()
    forced = tmp_path / "mirror-only"
    forced.write_text(RSYNC_MIRROR.format(root=web))
    forced.chmod(0o755)
    server = start_sshd(tmp_path / "sshd", {"mirror": str(forced)})
    try:
        edit(swarm.config, {"binhost": {"rsync_target": f"{server.destination}:binhost",
                                        "rsync_ssh_command": server.ssh_command("mirror")}})
        r = swarm.sync()
        assert r.returncode == 0, r.stderr
        mirrored = web / "binhost"
        assert (mirrored / "Packages").read_bytes() == (swarm.root / "binhost" / "Packages").read_bytes()
        assert len(list(mirrored.rglob("*.gpkg.tar"))) == len(cpvs)
        assert server.log_text().count("Accepted publickey") == 3  # files, index, deletions
    finally:
        server.stop()
