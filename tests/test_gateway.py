"""The ssh forced command: a drone may use its own verbs and uploads, nothing else.

These run `swarm-delegate gateway` exactly as sshd does (SSH_ORIGINAL_COMMAND
in the environment); test_e2e_ssh.py goes through a real sshd.
"""

import json
import os
import subprocess

import pytest
from conftest import add_drones, script, synthetic_scan

CPV = "app-test/pkg0-1.0"


@pytest.fixture
def gate(swarm, tmp_path):
    """Run the gateway for drone d1 with a given SSH_ORIGINAL_COMMAND."""
    add_drones(swarm.config, {"d1": {"transport": "ssh"}, "d2": {"transport": "ssh"}})
    swarm.scan(synthetic_scan(3))

    def run(command: str, input: str | bytes | None = None, drone: str = "d1"):
        env = {**swarm.env, "SSH_ORIGINAL_COMMAND": command}
        return subprocess.run([script("swarm-delegate"), "gateway", "--drone", drone,
                               "--config", str(swarm.config)],
                              env=env, input=input, capture_output=True,
                              text=not isinstance(input, bytes), cwd=tmp_path)
    run.swarm = swarm
    return run


def claim(gate, drone="d1"):
    r = gate(f"swarm-delegate claim --json --drone {drone}", drone=drone)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["cpv"]


def test_own_verbs_pass(gate):
    r = gate("swarm-delegate heartbeat --json", input='{"arch": "amd64"}')
    assert r.returncode == 0 and json.loads(r.stdout)["drone"] == "d1"
    assert claim(gate) == CPV
    r = gate(f"swarm-delegate release --json {CPV}")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "needed"


@pytest.mark.parametrize("command, message", [
    ("swarm-delegate claim --drone d2", "may not act as 'd2'"),
    ("swarm-delegate claim --drone=d2", "may not act as 'd2'"),
    ("swarm-delegate claim --drone d1 --drone d2", "may not act as 'd2'"),
    ("swarm-delegate claim --config /tmp/other.toml", "not allowed"),
    ("swarm-delegate expire", "only the verbs"),
    ("swarm-delegate gateway --drone d2", "only the verbs"),
    ("swarm-fresh --from /etc/passwd", "is not allowed"),
    ("sh -c id", "is not allowed"),
    ("/bin/bash", "is not allowed"),
    ("", "no shell"),
    ("swarm-delegate release 'app-test/pkg0-1.0; touch /tmp/pwned'", "one CATEGORY/PF"),
    ("swarm-delegate release app-test/pkg0-1.0 $(touch /tmp/pwned)", "one CATEGORY/PF"),
    ("swarm-delegate report app-test/pkg0-1.0 --ok --file '`touch /tmp/pwned`'", "bad value"),
    ("swarm-delegate report app-test/pkg0-1.0 --ok --file ../d2/x.gpkg.tar", "bad value"),
    ("swarm-delegate claim 'unbalanced", "cannot parse"),
    ("swarm-delegate release 'app-test/pkg0-1.0\n'", "one CATEGORY/PF"),
    ("swarm-delegate report app-test/pkg0-1.0 --failed --log app-test/pkg0/pkg0-1.0-1.gpkg.tar",
     "build logs go under"),
    ("swarm-delegate profile ../../etc/passwd", "one sha256 digest"),
    ("swarm-delegate profile " + "A" * 64, "one sha256 digest"),
    ("swarm-delegate profile", "one sha256 digest"),
    ("swarm-delegate release app-test/pkg0-1.0 --because 'tree; id'", "bad value"),
])
def test_everything_else_is_refused(gate, command, message):
    r = gate(command)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and r.stderr.startswith("swarm-delegate: error: ")
    assert not os.path.exists("/tmp/pwned")
    assert gate.swarm.query("SELECT count(*) FROM packages WHERE status != 'needed'") == [(0,)]


def test_a_drone_gives_back_with_a_reason_and_reads_a_profile_bundle(gate, tmp_path):
    assert claim(gate) == CPV
    r = gate(f"swarm-delegate release --json {CPV} --because tree --found example=files:ab12")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"cpv": CPV, "status": "needed", "because": "tree"}
    (detail,) = gate.swarm.query("SELECT detail FROM events WHERE event = 'released'")[0]
    assert "d1: its ebuild repositories are not the scan's (example=files:ab12)" in detail
    assert gate.swarm.query("SELECT drone, reason FROM holds") == [
        ("d1", "d1: its ebuild repositories are not the scan's")]
    assert claim(gate) != CPV  # held from it a while; others may take it
    assert claim(gate, "d2") == CPV
    # A bundle is read by its digest, and only one a profile's last scan recorded.
    import base64
    import hashlib
    import sqlite3

    bundle = b"a tar, as far as the gateway cares"
    digest = hashlib.sha256(bundle).hexdigest()
    kept = gate.swarm.root / "state" / "profiles" / f"{digest}.tar"
    kept.parent.mkdir()
    kept.write_bytes(bundle)
    r = gate(f"swarm-delegate profile --json {digest}")
    assert r.returncode == 1 and "no profile builds with it now" in r.stderr
    with sqlite3.connect(gate.swarm.db) as conn:  # as swarm-fresh records it (test only)
        conn.execute("INSERT INTO profiles (name, digest, tree, chost, arch, inputs, scanned_at)"
                     " VALUES ('default', ?, '{}', '', '', '', '')", (digest,))
    r = gate(f"swarm-delegate profile --json {digest}")
    assert r.returncode == 0 and base64.b64decode(json.loads(r.stdout)["tar"]) == bundle
    r = gate(f"swarm-delegate profile --json {'0' * 64}")
    assert r.returncode == 1 and "no profile bundle" in r.stderr


def test_report_for_a_package_held_by_another_drone_is_refused(gate):
    cpv = claim(gate, "d2")
    staging = gate.swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0"
    staging.mkdir(parents=True)
    (staging / "pkg0-1.0-1.gpkg.tar").write_bytes(b"x")
    r = gate(f"swarm-delegate report {cpv} --ok --file app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    assert r.returncode == 1 and "holds no lease" in r.stderr
    r = gate(f"swarm-delegate release {cpv}")
    assert r.returncode == 1 and "holds no lease" in r.stderr
    assert gate.swarm.query("SELECT drone, status FROM packages WHERE cpv = ?", (cpv,)) == [
        ("d2", "delegated")]


def rsync_upload(gate, tmp_path, dest: str, extra: str = "") -> subprocess.CompletedProcess:
    """Upload a file through the gateway with the real rsync, the gateway as 'ssh'."""
    source = tmp_path / "pkg0-1.0-1.gpkg.tar"
    source.write_bytes(b"binary package")
    fake_ssh = tmp_path / "gateway-as-ssh"
    # Stands in for ssh + sshd (test_e2e_ssh.py uses the real ones): runs the
    # forced command with the command rsync asked for, as sshd would.
    fake_ssh.write_text(
        "#!/bin/sh\nshift\nexport SSH_ORIGINAL_COMMAND=\"$*\"\n"
        f"exec {script('swarm-delegate')} gateway --drone d1 --config {gate.swarm.config}\n")
    fake_ssh.chmod(0o755)
    return subprocess.run(["rsync", "-t", "--partial", *extra.split(), "-e", str(fake_ssh),
                           str(source), f"orchestrator:{dest}"],
                          env=gate.swarm.env, capture_output=True, text=True)


def test_rsync_upload_lands_in_the_drones_staging(gate, tmp_path):
    r = rsync_upload(gate, tmp_path, "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    assert r.returncode == 0, r.stderr
    landed = gate.swarm.root / "state" / "staging" / "d1" / "app-test" / "pkg0" / "pkg0-1.0-1.gpkg.tar"
    assert landed.read_bytes() == b"binary package"


def test_a_verbose_or_compressed_upload_is_an_upload_too(gate, tmp_path):
    r = rsync_upload(gate, tmp_path, "app-test/pkg0/pkg0-1.0-1.gpkg.tar", extra="-v -z")
    assert r.returncode == 0, r.stderr
    assert "pkg0-1.0-1.gpkg.tar" in r.stdout  # rsync -v names what it sent


@pytest.mark.parametrize("dest", ["../d2/pkg.gpkg.tar", "/tmp/evil.gpkg.tar", "a/../../x", "../../../etc/x"])
def test_rsync_outside_the_staging_area_is_refused(gate, tmp_path, dest):
    r = rsync_upload(gate, tmp_path, dest)
    assert r.returncode != 0
    assert "swarm-delegate: error:" in r.stderr
    assert not (gate.swarm.root / "state" / "staging" / "d2").exists()
    assert not os.path.exists("/tmp/evil.gpkg.tar")


def test_rsync_through_a_symlink_out_is_refused(gate, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    area = gate.swarm.root / "state" / "staging" / "d1"
    area.mkdir(parents=True)
    (area / "escape").symlink_to(outside)
    r = rsync_upload(gate, tmp_path, "escape/pkg.gpkg.tar")
    assert r.returncode != 0 and "outside" in r.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("command, message", [
    ("rsync --server --sender -t . /etc/passwd", "flags"),
    ("rsync --server -t --log-file=/tmp/x . pkg", "not allowed"),
    ("rsync --server -t --temp-dir=/tmp . pkg", "not allowed"),
    ("rsync --server -tl . pkg", "flags"),
    ("rsync --server -t --remove-source-files . pkg", "not allowed"),
    ("rsync --daemon", "upload"),
    ("rsync -t /etc/passwd .", "upload"),
])
def test_rsync_options_beyond_an_upload_are_refused(gate, command, message):
    r = gate(command)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_drone_taken_out_of_the_config_is_locked_out(gate):
    r = gate("swarm-delegate claim --json", drone="d9")
    assert r.returncode == 2 and "unknown drone 'd9'" in r.stderr
    r = gate("rsync --server -te.LsfxCIvu . x.gpkg.tar", drone="d9")
    assert r.returncode == 2 and "unknown drone 'd9'" in r.stderr


def strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not numbers there."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("facts, message", [
    ('{"config_digest": ["a", "b"]}', "config_digest must be a string"),
    ('{"chost": {"x": 1}}', "chost must be a string"),
    ('{"cuda": "yes"}', "cuda must be true or false"),
    ('{"jobs": "8"}', "jobs must be a whole number"),
    ('{"load": NaN}', "NaN"),
    ('{"free_disk": Infinity}', "Infinity"),
    ('{"mine": {"deep": [-Infinity]}}', "-Infinity"),
    ('{"binrepos": [1]}', "binrepos must be a list of strings"),
])
def test_heartbeat_facts_of_the_wrong_type_are_refused_in_one_line(gate, facts, message):
    for command in ("swarm-delegate heartbeat --json", "swarm-delegate claim --json --heartbeat"):
        r = gate(command, input=facts)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.startswith("swarm-delegate: error: heartbeat facts") and message in r.stderr
        assert r.stderr.count("\n") == 1 and "database" not in r.stderr, r.stderr
    assert gate.swarm.query("SELECT count(*) FROM drones") == [(0,)]
    # What the orchestrator shows stays JSON for any reader.
    status = gate.swarm.run("swarm-status", "--json")
    assert status.returncode == 0 and strict_json(status.stdout)


def test_facts_of_the_right_types_are_kept_and_shown_as_json(gate):
    facts = {"arch": "amd64", "chost": "x86_64-pc-linux-gnu", "cuda": False, "jobs": 8,
             "load": 0.5, "free_disk": 10**12, "config_digest": None, "binrepos": [],
             "building": [], "something_newer": {"a drone": ["may", "send", 1.5]}}
    r = gate("swarm-delegate heartbeat --json", input=json.dumps(facts))
    assert r.returncode == 0, r.stderr
    (drone,) = strict_json(gate.swarm.run("swarm-status", "--json").stdout)["drones"][:1]
    assert drone["facts"] == facts


def test_a_local_drone_is_answered_in_its_process_as_swarm_delegate_would(swarm):
    """transport = "local": swarm-drone runs its verbs through gateway.answer_here, not a
    swarm-delegate process a verb; the answers, refusals and exit codes are the command's."""
    from swarmtools import config as config_mod
    from swarmtools.gateway import answer_here
    from swarmtools.transport import LocalTransport

    add_drones(swarm.config, {"d1": {"transport": "local"}, "d2": {"transport": "local"}})
    swarm.scan(synthetic_scan(3))

    def words(verb, drone, *args):
        return ["swarm-delegate", verb, "--drone", drone, "--json", *args]

    here = answer_here(swarm.config, "d1", words("heartbeat", "d1"), input='{"arch": "amd64"}')
    command = swarm.run(*words("heartbeat", "d2"), input='{"arch": "amd64"}')
    assert (here.returncode, command.returncode) == (0, 0), (here.stderr, command.stderr)
    mine, theirs = json.loads(here.stdout), json.loads(command.stdout)
    assert mine["drone"] == "d1" and set(mine) == set(theirs)
    # Claims: each drone its own package, whichever way it asked.
    here = answer_here(swarm.config, "d1", words("claim", "d1", "--idle-info"))
    command = swarm.run(*words("claim", "d2", "--idle-info"))
    assert json.loads(here.stdout)["cpv"] == CPV
    assert json.loads(command.stdout)["cpv"] not in (None, CPV)
    assert swarm.query("SELECT drone FROM packages WHERE cpv = ?", (CPV,)) == [("d1",)]
    # What the gateway refuses, and what the verb refuses, as the command says it.
    refused = answer_here(swarm.config, "d1", words("claim", "d1", "--config", "/tmp/x.toml"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("swarm-delegate: error: option '--config' is not allowed")
    held = answer_here(swarm.config, "d2", words("release", "d2", CPV))
    command = swarm.run(*words("release", "d2", CPV))
    assert held.returncode == command.returncode != 0
    assert held.stderr == command.stderr
    # The transport of swarm-drone goes this way (the drone's process) and parses the answer.
    config = config_mod.load(swarm.config)
    transport = LocalTransport(config, "d1", answer_here=answer_here)
    assert transport.call("release", CPV)["status"] == "needed"
