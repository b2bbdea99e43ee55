"""Faults and hostile input: every one ends in one line, the documented exit code, the log.

Config values that would break invariants, missing or empty databases,
oversized or deep input from drones, a broken disk or index, state owned by
another user, and a gateway environment that tries to move the drone's
staging area. Each runs through the installed console scripts.
"""

import json
import os
import shutil
import subprocess

import pytest
from conftest import Swarm, add_drones, one_line_error, script, synthetic_scan


def scanned(swarm: Swarm, count: int = 3) -> Swarm:
    assert swarm.run("swarm-fresh", "-q", "--from", "-", input=synthetic_scan(count)).returncode == 0
    return swarm


@pytest.mark.parametrize("text, key", [
    ("[delegate]\nlease_seconds = 0\n", "delegate.lease_seconds"),
    ("[delegate]\nlease_seconds = 30\nheartbeat_seconds = 30\n", "delegate.heartbeat_seconds"),
    ("[delegate]\nlease_seconds = 99999999999999999999\n", "delegate.lease_seconds"),
    ("[delegate]\nidle_max_seconds = 600\nonline_seconds = 600\n", "delegate.online_seconds"),
    ("[delegate]\npoll_seconds = 60\nidle_max_seconds = 30\n", "delegate.poll_seconds"),
    ("[orchestrator]\nstate_dir = ''\n", "orchestrator.state_dir"),
    ("[scan]\ncommand = []\n", "scan.command"),
    ('[orchestrator]\nlog_file = "a\\u0000b"\n', "orchestrator.log_file"),
])
def test_config_values_that_break_invariants_are_refused(swarm, text, key):
    swarm.config.write_text(text)
    for command in (["swarm-config", "check"], ["swarm-status"], ["swarm-delegate", "expire"]):
        r = swarm.run(*command)
        assert r.returncode == 2, (command, r.stderr)
        one_line_error(r, command[0])
        assert key in r.stderr


@pytest.mark.parametrize("variable, value", [("SWARM_DELEGATE_LEASE_SECONDS", "-5"),
                                             ("SWARM_DELEGATE_POLL_SECONDS", "0"),
                                             ("SWARM_ORCHESTRATOR_STATE_DIR", "")])
def test_the_environment_is_checked_like_the_file(swarm, variable, value):
    r = swarm.run("swarm-config", "check", env={**swarm.env, variable: value})
    assert r.returncode == 2
    one_line_error(r, "swarm-config")
    assert variable in r.stderr


@pytest.mark.parametrize("command", [
    ("swarm-delegate", "claim", "--drone", "local"), ("swarm-delegate", "expire"),
    ("swarm-delegate", "heartbeat", "--drone", "local"), ("swarm-sync",), ("swarm-status",)])
def test_only_swarm_fresh_creates_the_database(swarm, command):
    for empty in (False, True):
        if empty:
            swarm.db.touch()
        r = swarm.run(*command, input="{}")
        assert r.returncode == 2, r.stderr
        one_line_error(r, command[0])
        assert ("empty file" if empty else "no database") in r.stderr
        assert swarm.db.exists() == empty and (not empty or swarm.db.stat().st_size == 0)


def test_an_oversized_heartbeat_is_refused_and_stored_nowhere(swarm):
    scanned(swarm)
    size = swarm.db.stat().st_size
    r = swarm.run("swarm-delegate", "heartbeat", "--drone", "local",
                  input=json.dumps({"junk": "x" * (50 << 20)}))
    assert r.returncode == 2 and "larger than" in r.stderr
    one_line_error(r, "swarm-delegate", swarm.log)
    assert swarm.db.stat().st_size == size


def test_json_nested_beyond_reason_is_refused(swarm):
    scanned(swarm)
    r = swarm.run("swarm-delegate", "heartbeat", "--drone", "local", input="[" * 60000)
    assert r.returncode == 2 and "not JSON" in r.stderr
    one_line_error(r, "swarm-delegate", swarm.log)


def test_a_corrupt_database_is_one_line(swarm):
    scanned(swarm, 2000)
    swarm.query("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    data = bytearray(swarm.db.read_bytes())
    for page in range(2, len(data) // 4096, 3):  # every third page of the tables
        data[page * 4096:(page + 1) * 4096] = b"\xff" * 4096
    swarm.db.write_bytes(bytes(data))
    r = swarm.run("swarm-status", "--packages")
    assert r.returncode in (1, 2)
    one_line_error(r, "swarm-status")
    assert "malformed" in r.stderr or "not a database" in r.stderr


def test_a_scan_command_that_cannot_run_is_one_line(swarm, tmp_path):
    scanned(swarm)
    notexec = tmp_path / "emerge"
    notexec.write_text("#!/bin/sh\n")
    from swarmtools.config import edit

    edit(swarm.config, {"scan": {"command": [str(notexec), "-p"]}})
    r = swarm.run("swarm-fresh")
    assert r.returncode == 1 and "Permission denied" in r.stderr
    one_line_error(r, "swarm-fresh", swarm.log)


def test_a_drone_without_portageq_says_so(swarm):
    add_drones(swarm.config, {"d1": {"transport": "local"}})
    env = {**swarm.env, "PATH": "/nonexistent"}
    r = subprocess.run([script("swarm-drone"), "--drone", "d1", "--once"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "portageq" in r.stderr
    one_line_error(r, "swarm-drone")


@pytest.mark.parametrize("garbage", [
    "this is not an index\n",
    "VERSION: 0\nTIMESTAMP: soon\nPACKAGES: 0\n\n",
    "TIMESTAMP: 1700000000\nPACKAGES: 0\n\n",
    "VERSION: 0\nTIMESTAMP: 1700000000\nPACKAGES: 2\n\nCPV: a/b-1\nPATH: a/b/b-1-1.gpkg.tar\n",
])
def test_an_index_that_cannot_be_trusted_is_never_overwritten(swarm, garbage):
    scanned(swarm)
    index = swarm.root / "binhost" / "Packages"
    index.write_text(garbage)
    before = swarm.dump()
    for command in (["swarm-sync"], ["swarm-fresh", "--from", "-"]):
        r = swarm.run(*command, input=synthetic_scan(3))
        assert r.returncode == 1, r.stderr
        one_line_error(r, command[0], swarm.log)
        assert "cannot be trusted" in r.stderr
    assert index.read_text() == garbage and swarm.dump() == before


def test_a_missing_binhost_directory_is_not_made_silently(swarm):
    scanned(swarm)
    shutil.rmtree(swarm.root / "binhost")
    r = swarm.run("swarm-sync", "-q")
    assert r.returncode == 1 and "does not exist" in r.stderr
    one_line_error(r, "swarm-sync", swarm.log)
    assert not (swarm.root / "binhost").exists()


def mounted_tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs ({r.stderr.strip()}), which the test "
                    "needs to make a full or read-only disk for real")
    return path


@pytest.fixture
def received_on_a_small_disk(tmp_path):
    """A swarm with one received package whose binhost is a 64 KiB tmpfs."""
    swarm = Swarm(tmp_path / "swarm")
    add_drones(swarm.config, {"d1": {"transport": "local"}})
    scanned(swarm, 1)
    binhost = mounted_tmpfs(tmp_path / "small", "size=64k")
    from swarmtools.config import edit

    edit(swarm.config, {"binhost": {"path": str(binhost)}})
    job = json.loads(swarm.run("swarm-delegate", "claim", "--drone", "d1", "--json").stdout)
    staged = swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0"
    staged.mkdir(parents=True)
    (staged / "pkg0-1.0-1.gpkg.tar").write_bytes(os.urandom(200 << 10))
    r = swarm.run("swarm-delegate", "report", "--drone", "d1", job["cpv"], "--ok", "--file",
                  "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    assert r.returncode == 0, r.stderr
    yield swarm, binhost
    subprocess.run(["umount", str(binhost)])


def test_a_full_disk_is_one_line_and_loses_nothing(received_on_a_small_disk):
    swarm, _binhost = received_on_a_small_disk
    r = swarm.run("swarm-sync", "-q")
    assert r.returncode == 1
    one_line_error(r, "swarm-sync", swarm.log)
    assert "No space left on device" in r.stderr
    assert swarm.query("SELECT status FROM packages") == [("received",)]
    assert (swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0" /
            "pkg0-1.0-1.gpkg.tar").exists()


def test_a_read_only_binhost_is_one_line(received_on_a_small_disk):
    swarm, binhost = received_on_a_small_disk
    subprocess.run(["mount", "-o", "remount,ro", str(binhost)], check=True)
    r = swarm.run("swarm-sync", "-q")
    assert r.returncode == 1
    one_line_error(r, "swarm-sync", swarm.log)
    assert "Read-only file system" in r.stderr
    assert swarm.query("SELECT status FROM packages") == [("received",)]


def test_state_of_another_user_is_not_written_by_root(swarm):
    scanned(swarm)
    state = swarm.root / "state"
    for path in [state, *state.rglob("*")]:
        os.chown(path, 65534, 65534)  # nobody: the swarm user of a real host
    before = swarm.dump()
    for command in (["swarm-fresh", "--from", "-"], ["swarm-sync"], ["swarm-delegate", "expire"]):
        r = swarm.run(*command, input=synthetic_scan(3))
        assert r.returncode == 2, r.stderr
        one_line_error(r, command[0], swarm.log if (state / "swarm.log").exists() else None)
        assert "run this command as" in r.stderr
    assert not [p for p in state.rglob("*") if p.stat().st_uid == 0]
    assert swarm.dump() == before
    assert swarm.run("swarm-status").returncode == 0  # reading is fine


def test_the_gateway_ignores_swarm_variables(swarm, tmp_path):
    add_drones(swarm.config, {"d1": {"transport": "ssh"}})
    scanned(swarm)
    elsewhere = tmp_path / "elsewhere"
    other = tmp_path / "other.toml"
    other.write_text(f"[orchestrator]\nstaging_dir = '{elsewhere}'\n[drones.d1]\n")
    source = tmp_path / "pkg0-1.0-1.gpkg.tar"
    source.write_bytes(b"binary package")
    fake_ssh = tmp_path / "gateway-as-ssh"
    # Stands in for ssh + sshd (test_e2e_ssh.py has the real ones): the forced
    # command with what the client asked for, in an environment it chose.
    fake_ssh.write_text(
        "#!/bin/sh\nshift\nexport SSH_ORIGINAL_COMMAND=\"$*\"\n"
        f"export SWARM_ORCHESTRATOR_STAGING_DIR={elsewhere} SWARM_CONFIG={other}\n"
        f"exec {script('swarm-delegate')} gateway --drone d1 --config {swarm.config}\n")
    fake_ssh.chmod(0o755)
    r = subprocess.run(["rsync", "-t", "-e", str(fake_ssh), str(source),
                        "orchestrator:app-test/pkg0/pkg0-1.0-1.gpkg.tar"],
                       env=swarm.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0" /
            "pkg0-1.0-1.gpkg.tar").read_bytes() == b"binary package"
    assert not elsewhere.exists()


def gateway_upload(swarm, tmp_path, size: int, flags: str = "-t") -> subprocess.CompletedProcess:
    source = tmp_path / "pkg0-1.0-1.gpkg.tar"
    source.write_bytes(os.urandom(size))
    fake_ssh = tmp_path / "gateway-as-ssh"
    fake_ssh.write_text(  # stands in for ssh + sshd, as above
        "#!/bin/sh\nshift\nexport SSH_ORIGINAL_COMMAND=\"$*\"\n"
        f"exec {script('swarm-delegate')} gateway --drone d1 --config {swarm.config}\n")
    fake_ssh.chmod(0o755)
    return subprocess.run(["rsync", *flags.split(), "-e", str(fake_ssh), str(source),
                           "orchestrator:app-test/pkg0/pkg0-1.0-1.gpkg.tar"],
                          env=swarm.env, capture_output=True, text=True)


def test_a_drone_cannot_fill_the_disk_beyond_its_quota(swarm, tmp_path):
    from swarmtools.config import edit

    add_drones(swarm.config, {"d1": {"transport": "ssh"}})
    edit(swarm.config, {"delegate": {"staging_quota_mib": 1}})
    landed = swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0" / "pkg0-1.0-1.gpkg.tar"
    gateway_upload(swarm, tmp_path, 2 << 20)  # rsync skips what --max-size forbids
    assert not landed.exists()
    assert gateway_upload(swarm, tmp_path, 600 << 10, "-tv").returncode == 0  # -v is allowed
    assert landed.stat().st_size == 600 << 10
    (landed.parent / "other.gpkg.tar").write_bytes(b"x" * (500 << 10))  # the area is full
    r = gateway_upload(swarm, tmp_path, 10)
    assert r.returncode != 0 and "is full" in r.stderr


def test_staging_leftovers_are_swept_and_empty_folders_removed(swarm):
    from swarmtools.config import edit

    scanned(swarm)
    edit(swarm.config, {"delegate": {"lease_seconds": 2, "heartbeat_seconds": 1}})
    area = swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0"
    area.mkdir(parents=True)
    (area / ".pkg0-1.0-1.gpkg.tar.Xy12Ab").write_bytes(b"half an upload")  # rsync's temporary
    (swarm.root / "state" / "staging" / "d1" / "app-test" / "empty").mkdir()
    import time

    time.sleep(2.5)  # the grace a drone gets between upload and report
    r = swarm.run("swarm-sync", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["orphans"] == ["d1/app-test/pkg0/.pkg0-1.0-1.gpkg.tar.Xy12Ab"]
    assert not (swarm.root / "state" / "staging" / "d1" / "app-test").exists()
    kept = list((swarm.root / "state" / "staging" / "quarantine" / "orphans").rglob("*Xy12Ab"))
    assert len(kept) == 1


def test_an_upload_whose_folder_swarm_sync_removed_meanwhile_is_made_again(swarm, tmp_path):
    """swarm-sync drops empty folders in staging; one made for an upload may go before
    rsync enters it. The drone's upload makes it again and retries (real rsync)."""
    from swarmtools import config as config_mod
    from swarmtools import staging
    from swarmtools.transport import LocalTransport

    config = config_mod.load(swarm.config)

    class RacedTransport(LocalTransport):
        prepared = 0

        def _prepare_upload(self, relative):
            super()._prepare_upload(relative)
            self.prepared += 1
            if self.prepared == 1:  # swarm-sync's cleanup runs right now
                staging.remove_empty_dirs(config)

    package = tmp_path / "pkg0-1.0-1.gpkg.tar"
    package.write_bytes(b"a build")
    transport = RacedTransport(config, "local", sleep=lambda seconds: None)
    transport.upload(package, "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    assert transport.prepared == 2  # the first attempt found no folder
    arrived = swarm.root / "state" / "staging" / "local" / "app-test" / "pkg0" / "pkg0-1.0-1.gpkg.tar"
    assert arrived.read_bytes() == b"a build"


def test_drones_multiplex_ssh_each_over_its_own_private_socket():
    from swarmtools.transport import control_directory, with_multiplexing

    base = ["ssh", "-o", "BatchMode=yes"]
    d1, d2 = with_multiplexing(base, "d1"), with_multiplexing(base, "d2")
    path = next(w for w in d1 if w.startswith("ControlPath="))
    # Never one connection for two drones on one host: the key names the drone.
    assert path.endswith("/d1-%C") and path != next(w for w in d2 if w.startswith("ControlPath="))
    assert "ControlMaster=auto" in d1 and "ControlPersist=60" in d1 and d1[-2:] == base[1:]
    assert oct(control_directory().stat().st_mode & 0o777) == "0o700"
    # The admin's own choice wins.
    assert with_multiplexing([*base, "-o", "ControlMaster=no"], "d1") == [*base, "-o",
                                                                         "ControlMaster=no"]
    assert "ControlPersist=60" not in with_multiplexing([*base, "-o", "ControlPersist=5"], "d1")
