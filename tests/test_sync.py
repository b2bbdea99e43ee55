"""swarm-sync: verified publication, crash safety, the lock, a real client."""

import gzip
import hashlib
import io
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import time

import pytest
from conftest import DroneSwarm, HandDrone, script

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

pytest.importorskip("portage")


@pytest.fixture
def scanned(tmp_path, built_packages):
    """A swarm with the example world queued, and a hand drone d1 with real gpkgs."""
    swarm = DroneSwarm(tmp_path, drones=("d1",))
    swarm.scan()
    swarm.hand = HandDrone(swarm, built_packages)
    swarm.binhost = swarm.root / "binhost"
    return swarm


@pytest.fixture
def received(scanned):
    """A swarm whose whole example world is 'received' in staging/d1/."""
    scanned.cpvs = scanned.hand.build_all()
    return scanned


def index_of(binhost):
    """(entries, header) of Packages; Packages.gz must say the same."""
    text = (binhost / "Packages").read_text()
    assert gzip.decompress((binhost / "Packages.gz").read_bytes()).decode() == text
    header, _, body = text.partition("\n\n")
    entries = [dict(line.split(": ", 1) for line in block.splitlines())
               for block in body.split("\n\n") if block.strip()]
    return entries, dict(line.split(": ", 1) for line in header.splitlines())


def assert_consistent(binhost):
    """The index lists each CPV once, and only complete files that are on disk."""
    if not (binhost / "Packages").exists():
        return []
    entries, _ = index_of(binhost)
    cpvs = [e["CPV"] for e in entries]
    assert len(cpvs) == len(set(cpvs)), cpvs
    for entry in entries:
        path = binhost / entry["PATH"]
        data = path.read_bytes()
        assert len(data) == int(entry["SIZE"]) and hashlib.md5(data).hexdigest() == entry["MD5"]
    return entries


def files_on_disk(binhost):
    return sorted(str(p.relative_to(binhost)) for p in binhost.rglob("*.gpkg.tar"))


def test_publishes_everything_and_index_matches_disk(received):
    r = received.run("swarm-sync", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["published"]) == sorted(received.cpvs)
    entries = assert_consistent(received.binhost)
    assert sorted(e["PATH"] for e in entries) == files_on_disk(received.binhost)
    assert sorted(e["CPV"] for e in entries) == sorted(received.cpvs)
    assert received.query("SELECT DISTINCT status FROM packages") == [("synced",)]
    assert not list((received.root / "state" / "staging").rglob("*.gpkg.tar"))
    events = received.query("SELECT count(*) FROM events WHERE event = 'synced' AND actor = 'swarm-sync'")
    assert events == [(len(received.cpvs),)]
    again = received.run("swarm-sync", "-q")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_fresh_client_installs_the_world_from_the_binhost(received, tmp_path):
    from swarmtools.prefix import create_prefix

    assert received.run("swarm-sync", "-q").returncode == 0
    server = subprocess.Popen(["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(received.binhost)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = re.search(r"port (\d+)", server.stdout.readline()).group(1)
        client = create_prefix(tmp_path / "client", binhost_url=f"http://127.0.0.1:{port}")
        r = client.run(["emerge", "--pretend", "--getbinpkgonly", "--emptytree", "--color=n", "@world"])
        assert r.returncode == 0, r.stderr
        rows = [l for l in r.stdout.splitlines() if l.startswith("[")]
        assert rows and all(l.startswith("[binary") for l in rows), rows
        r = client.run(["emerge", "--getbinpkgonly", "--color=n", "@world"])
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "Emerging binary" in r.stdout and ">>> Emerging (" not in r.stdout
        installed = list((client.root / "var" / "db" / "pkg").glob("*/*"))
        assert len(installed) == len(rows)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("step", ["start", "copied", "indexed", "marked"])
def test_killed_at_any_step_the_index_stays_true_and_a_rerun_converges(received, step):
    env = {**received.env, "SWARM_SYNC_TEST_HOOK": f"{step}:kill"}
    r = received.run("swarm-sync", "-q", env=env)
    assert r.returncode == -signal.SIGKILL
    assert_consistent(received.binhost)
    r = received.run("swarm-sync", "-q")
    assert r.returncode == 0, r.stderr
    entries = assert_consistent(received.binhost)
    assert sorted(e["CPV"] for e in entries) == sorted(received.cpvs)
    assert sorted(e["PATH"] for e in entries) == files_on_disk(received.binhost)
    assert received.query("SELECT DISTINCT status FROM packages") == [("synced",)]
    assert received.query("SELECT count(*) FROM events WHERE event = 'synced'") == [(len(received.cpvs),)]
    assert not list((received.root / "state" / "staging" / "d1").rglob("*.gpkg.tar"))


def test_a_second_run_exits_75_at_once_and_changes_nothing(received):
    env = {**received.env, "SWARM_SYNC_TEST_HOOK": "start:pause=6"}
    first = subprocess.Popen([script("swarm-sync"), "-q"], env=env)
    try:
        received.wait_for("SELECT 1", timeout=5)
        time.sleep(1.5)  # the first run holds the lock now
        before = received.dump()
        started = time.monotonic()
        r = received.run("swarm-sync", "-q")
        elapsed = time.monotonic() - started
        assert (r.returncode, r.stdout, r.stderr) == (75, "", "")
        assert elapsed < 1.0
        assert received.dump() == before
        loud = received.run("swarm-sync")
        assert loud.returncode == 75 and "another swarm-sync" in loud.stderr
    finally:
        assert first.wait(timeout=60) == 0
    assert received.query("SELECT DISTINCT status FROM packages") == [("synced",)]


def rewrite_gpkg(source, target, change):
    """Copy a gpkg, letting change(name, data) alter member contents."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = change(member.name, old.extractfile(member).read())
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_bad_packages_are_quarantined_never_published(scanned, tmp_path, built_packages):
    def truncate(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def tamper(path):  # one byte of one member changed, its Manifest line not
        rewrite_gpkg(path, tmp_path / "t.tar", lambda name, data: data[:-1] + bytes([data[-1] ^ 1])
                     if name.endswith("image.tar.zst") else data)
        path.write_bytes((tmp_path / "t.tar").read_bytes())

    def other_package(path):  # another package's gpkg under this package's name
        (other,) = built_packages.glob("app-misc/example-docs/*.gpkg.tar")
        path.write_bytes(other.read_bytes())

    def flat_tar(path):  # a tar, but not a gpkg: one file at the top
        with tarfile.open(path, "w") as container:
            info = tarfile.TarInfo("Manifest")
            container.addfile(info, io.BytesIO(b""))

    damage = [truncate, tamper, other_package, flat_tar]
    bad, good = {}, []
    while cpv := scanned.hand.claim():
        relative = scanned.hand.stage(cpv)
        if damage and cpv != "app-misc/example-docs-1.0":
            # Damaged before the report, so size and sha256 are those of the bad file.
            spoil = damage.pop(0)
            spoil(scanned.root / "state" / "staging" / "d1" / relative)
            bad[cpv] = spoil.__name__
        else:
            good.append(cpv)
        scanned.hand.report(cpv, relative)
    # A name no drone can report through swarm-delegate: the database is edited (test only).
    unsafe = good.pop()
    conn = sqlite3.connect(scanned.db)
    conn.execute("UPDATE packages SET file = ? WHERE cpv = ?", ("d1/../../etc/x; rm -rf ~", unsafe))
    conn.commit()
    conn.close()
    bad[unsafe] = "unsafe"

    r = scanned.run("swarm-sync", "--json")
    assert r.returncode == 1 and "quarantined 5 package(s)" in r.stderr
    reasons = {q["cpv"]: q["reason"] for q in json.loads(r.stdout)["quarantined"]}
    assert set(reasons) == set(bad)
    by_kind = {kind: reasons[cpv] for cpv, kind in bad.items()}
    assert re.search(r"unreadable gpkg|Manifest missing", by_kind["truncate"])
    # Both hashes, in a fixed order: the Manifest's own order changes from build to build.
    assert "image.tar.zst does not match its Manifest (BLAKE2B, SHA512)" in by_kind["tamper"]
    assert "holds app-misc/example-docs-1.0, but" in by_kind["other_package"]
    assert "unsafe file name" in by_kind["unsafe"]
    assert "not a gpkg" in by_kind["flat_tar"]
    entries = assert_consistent(scanned.binhost)
    assert sorted(e["CPV"] for e in entries) == sorted(good)
    states = dict(scanned.query("SELECT cpv, status FROM packages"))
    assert all(states[cpv] == "needed" for cpv in bad)
    assert len(list((scanned.root / "state" / "staging" / "quarantine").rglob("*.gpkg.tar"))) == 4
    assert len(scanned.query("SELECT detail FROM events WHERE event = 'quarantined'")) == 5


def test_a_newer_build_supersedes_the_old_one_after_the_grace(received, built_packages, tmp_path):
    assert received.run("swarm-sync", "-q").returncode == 0
    cpv = "app-misc/example-docs-1.0"
    (old_path,) = [e["PATH"] for e in index_of(received.binhost)[0] if e["CPV"] == cpv]
    # The same package built again (a USE or dependency change would do this).
    conn = sqlite3.connect(received.db)
    conn.execute("UPDATE packages SET status = 'needed', file = NULL WHERE cpv = ?", (cpv,))
    conn.commit()
    conn.close()
    assert received.hand.claim() == cpv
    relative = received.hand.stage(cpv)
    received.hand.report(cpv, relative)
    r = received.run("swarm-sync", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["superseded"] == [old_path]
    entries = assert_consistent(received.binhost)
    (new_path,) = [e["PATH"] for e in entries if e["CPV"] == cpv]
    assert new_path != old_path  # never reused
    assert (received.binhost / old_path).exists()  # clients may hold the old index
    env = {**received.env, "SWARM_BINHOST_GRACE_SECONDS": "0"}
    r = received.run("swarm-sync", "--json", env=env)
    assert json.loads(r.stdout)["deleted"] == [old_path]
    assert not (received.binhost / old_path).exists()
    assert sorted(e["PATH"] for e in assert_consistent(received.binhost)) == files_on_disk(received.binhost)


def test_dry_run_and_backlog_in_status(received):
    before = received.dump()
    r = received.run("swarm-sync", "--dry-run")
    assert r.returncode == 0 and r.stdout.count("would publish") == len(received.cpvs)
    assert received.dump() == before and not (received.binhost / "Packages").exists()
    conn = sqlite3.connect(received.db)
    conn.execute("UPDATE packages SET updated_at = '2020-01-01T00:00:00+00:00' WHERE status = 'received'")
    conn.commit()
    conn.close()
    figures = json.loads(received.run("swarm-status", "--json").stdout)
    assert figures["staging_bytes"] > 0 and figures["backlog"] is True
    assert figures["oldest_received_seconds"] > 3 * 120
    assert "BACKLOG" in received.run("swarm-status").stdout
    assert received.run("swarm-sync", "-q").returncode == 0
    figures = json.loads(received.run("swarm-status", "--json").stdout)
    assert (figures["staging_bytes"], figures["backlog"],
            figures["oldest_received_seconds"]) == (0, False, None)


def test_mirror_to_another_binhost_with_rsync(received, tmp_path):
    mirror = tmp_path / "remote-binhost"
    mirror.mkdir()
    env = {**received.env, "SWARM_BINHOST_RSYNC_TARGET": str(mirror)}
    assert received.run("swarm-sync", "-q", env=env).returncode == 0
    assert (mirror / "Packages").read_bytes() == (received.binhost / "Packages").read_bytes()
    assert sorted(e["PATH"] for e in assert_consistent(mirror)) == files_on_disk(mirror)


def test_a_rescan_during_a_run_wins_and_the_index_stays_true(received):
    env = {**received.env, "SWARM_SYNC_TEST_HOOK": "copied:pause=5"}
    sync = subprocess.Popen([script("swarm-sync")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # files are in place; the index is not written yet
    docs = received.prefixes["orchestrator"].repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    r = received.run("swarm-fresh", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["requeued"] == 1
    assert sync.wait(timeout=60) == 0
    assert "changed during this run" in sync.stderr.read()
    entries = assert_consistent(received.binhost)
    # The 1.0 binary is listed as what it is, 1.0; the package waits for its 1.1 build.
    assert "app-misc/example-docs-1.0" in {e["CPV"] for e in entries}
    assert received.query("SELECT cpv, status FROM packages WHERE cp = 'app-misc/example-docs'"
                          ) == [("app-misc/example-docs-1.1", "needed")]
    assert received.query("SELECT count(*) FROM events e JOIN packages p ON p.id = e.package_id"
                          " WHERE p.cp = 'app-misc/example-docs' AND e.event = 'synced'") == [(0,)]


def test_a_lost_index_is_rebuilt_from_the_published_files(received):
    assert received.run("swarm-sync", "-q").returncode == 0
    index = received.binhost / "Packages"
    before = sorted(e["PATH"] for e in index_of(received.binhost)[0])
    index.rename(received.binhost / "Packages.broken")
    (received.binhost / "Packages.gz").unlink()
    r = received.run("swarm-sync", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["reindexed"]) == sorted(received.cpvs)
    assert sorted(e["PATH"] for e in assert_consistent(received.binhost)) == before
    assert received.query("SELECT DISTINCT status FROM packages") == [("synced",)]


def test_a_published_file_that_vanished_is_built_again_and_unlisted(received):
    assert received.run("swarm-sync", "-q").returncode == 0
    cpv = "app-misc/example-docs-1.0"
    (path,) = [e["PATH"] for e in index_of(received.binhost)[0] if e["CPV"] == cpv]
    (received.binhost / path).unlink()
    r = received.run("swarm-sync", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requeued"] == [cpv]
    assert cpv not in {e["CPV"] for e in assert_consistent(received.binhost)}
    assert received.query("SELECT status FROM packages WHERE cpv = ?", (cpv,)) == [("needed",)]
    detail = received.query("SELECT detail FROM events WHERE event = 'requeued'")[0][0]
    assert f"its file {path} is gone from the binhost" in detail


def test_the_grace_period_never_deletes_a_file_a_package_is_published_as(received):
    assert received.run("swarm-sync", "-q").returncode == 0
    path = index_of(received.binhost)[0][0]["PATH"]
    conn = sqlite3.connect(received.db)  # as a bug or a hand edit might leave it
    conn.execute("INSERT INTO superseded (path, since) VALUES (?, '2020-01-01T00:00:00+00:00')",
                 (path,))
    conn.commit()
    conn.close()
    (received.binhost / "Packages").rename(received.binhost / "Packages.old")
    env = {**received.env, "SWARM_BINHOST_GRACE_SECONDS": "0"}
    r = received.run("swarm-sync", "--json", env=env)
    assert r.returncode == 0 and path not in json.loads(r.stdout)["deleted"]
    assert (received.binhost / path).is_file()


def test_a_newer_upload_under_the_same_name_survives_a_run(received, built_packages):
    cpv = "app-misc/example-docs-1.0"
    env = {**received.env, "SWARM_SYNC_TEST_HOOK": "indexed:pause=6"}
    sync = subprocess.Popen([script("swarm-sync"), "-q"], env=env, stderr=subprocess.PIPE, text=True)
    received.wait_for("SELECT 1 FROM packages WHERE binhost_path IS NOT NULL", timeout=30)
    time.sleep(3)  # files placed, index being written: then the package is built anew
    conn = sqlite3.connect(received.db)
    conn.execute("UPDATE packages SET status = 'needed', file = NULL, digest = NULL,"
                 " binhost_path = NULL WHERE cpv = ?", (cpv,))  # as a rescan would (test only)
    conn.commit()
    conn.close()
    assert received.hand.claim() == cpv
    relative = received.hand.stage(cpv)
    staged = received.root / "state" / "staging" / "d1" / relative
    with open(staged, "ab") as f:  # a different file under the same name
        f.write(b"\0" * 512)
    received.hand.report(cpv, relative)
    assert sync.wait(timeout=60) == 0, sync.stderr.read()
    assert staged.is_file()  # not deleted with the files of the run
    assert received.query("SELECT status FROM packages WHERE cpv = ?", (cpv,)) == [("received",)]


def test_an_oversized_manifest_is_refused_before_portage_reads_it(scanned, tmp_path):
    cpv = scanned.hand.claim()
    relative = scanned.hand.stage(cpv)
    staged = scanned.root / "state" / "staging" / "d1" / relative
    padding = b"# " + b"x" * 1021 + b"\n"  # every real member still listed and right
    rewrite_gpkg(staged, tmp_path / "big.tar",
                 lambda name, data: data + padding * 2048 if name.endswith("/Manifest") else data)
    staged.write_bytes((tmp_path / "big.tar").read_bytes())
    scanned.hand.report(cpv, relative)
    r = scanned.run("swarm-sync", "--json")
    assert r.returncode == 1
    (quarantined,) = json.loads(r.stdout)["quarantined"]
    assert "a Manifest of 2" in quarantined["reason"]
