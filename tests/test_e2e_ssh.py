"""The whole delegation path for real: sshd with forced commands, two drones, rsync.

sshd listens on a loopback port with its own host key; each drone's key is
pinned in authorized_keys to `swarm-delegate gateway --drone NAME`. Two
drones, each a Portage prefix, run swarm-drone over that ssh until the queue
is empty.
"""

import json
import subprocess

import pytest

from conftest import DroneSwarm, add_drones, script
from sshd import start_sshd
from swarmtools.prefix import EXAMPLE_REPO

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test


@pytest.fixture
def ssh_swarm(tmp_path):
    pytest.importorskip("portage")
    swarm = DroneSwarm(tmp_path, delegate={"heartbeat_seconds": 2, "poll_seconds": 1})
    gateway = script("swarm-delegate")
    server = start_sshd(tmp_path / "sshd", {
        name: f"{gateway} gateway --drone {name} --config {swarm.config}" for name in ("d1", "d2")})
    from swarmtools.config import edit

    edit(swarm.config, {"orchestrator": {"ssh": server.destination},
                        "drones": {name: {"transport": "ssh", "ssh_command": server.ssh_command(name)}
                                   for name in ("d1", "d2")}})
    swarm.server = server
    yield swarm
    server.stop()


def test_two_drones_over_ssh_build_everything_exactly_once(ssh_swarm):
    assert ssh_swarm.run("swarm-fresh", "-q").returncode == 0
    procs = [ssh_swarm.drone(name, "--drain", "-v") for name in ("d1", "d2")]
    results = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    rows = ssh_swarm.query("SELECT cpv, status, drone, file FROM packages")
    expected = {f"{p.parent.parent.name}/{p.stem}" for p in EXAMPLE_REPO.glob("*/*/*.ebuild")}
    assert {r[0] for r in rows} == expected
    assert {r[1] for r in rows} == {"received"}
    for cpv, _, drone, file in rows:
        assert file.startswith(f"{drone}/")
        assert (ssh_swarm.root / "state" / "staging" / file).is_file()
    claims = ssh_swarm.query("SELECT p.cpv, count(*) FROM events e JOIN packages p"
                             " ON p.id = e.package_id WHERE e.event = 'claimed' GROUP BY p.cpv")
    assert {c for _, c in claims} == {1} and len(claims) == len(expected)
    # It really went through sshd and the gateway: one connection per verb and upload.
    log = ssh_swarm.server.log_text()
    assert log.count("Accepted publickey") >= 3 * len(expected)


def test_a_drone_key_cannot_claim_as_another_over_ssh(ssh_swarm):
    assert ssh_swarm.run("swarm-fresh", "-q").returncode == 0
    server = ssh_swarm.server
    r = subprocess.run([*server.ssh_command("d1"), server.destination,
                        "swarm-delegate claim --drone d2 --json"], capture_output=True, text=True)
    assert r.returncode == 2 and "may not act as 'd2'" in r.stderr
    r = subprocess.run([*server.ssh_command("d1"), server.destination, "cat /etc/shadow"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    r = subprocess.run([*server.ssh_command("d1"), server.destination,
                        "swarm-delegate claim --json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["cpv"]
    assert ssh_swarm.query("SELECT drone FROM packages WHERE status = 'delegated'") == [("d1",)]
