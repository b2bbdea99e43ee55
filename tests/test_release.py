"""swarm-release: releases are hardlinked snapshots; channels are pinned, promoted, rolled back.

The client tests run the real emerge against the binhost over real HTTP.
"""

import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import DroneSwarm, HandDrone, HttpServer, script

from swarmtools import clock, release
from swarmtools import config as config_mod

pytestmark = pytest.mark.slow  # real emerge: seconds a test

pytest.importorskip("portage")


@pytest.fixture
def published(tmp_path, built_packages):
    """A swarm whose binhost holds the whole example world, superseded files deleted at once."""
    swarm = DroneSwarm(tmp_path, drones=("d1",))
    # The web server serves the binhost and, beside it, the releases (rescans ask it too).
    swarm.http = HttpServer(swarm.root)
    config_mod.edit(swarm.config, {"binhost": {"grace_seconds": 0,
                                               "url": f"{swarm.http.url}/binhost"}})
    try:
        swarm.scan()
        swarm.cpvs = HandDrone(swarm, built_packages).build_all()
        assert swarm.sync().returncode == 0
        swarm.binhost = swarm.root / "binhost"
        swarm.releases = swarm.root / "releases"
        yield swarm
    finally:
        swarm.http.stop()


def make(swarm, *args) -> dict:
    r = swarm.run("swarm-release", "create", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def current(swarm, channel="stable"):
    return release.current(config_mod.load(swarm.config), channel)


def bump_docs(swarm, tmp_path):
    """example-docs 1.1 lands in the tree: built (real emerge), scanned, claimed, published."""
    from swarmtools.prefix import create_prefix

    builder = create_prefix(tmp_path / "builder")
    for prefix in (builder, swarm.prefixes["orchestrator"]):
        docs = prefix.repo / "app-misc" / "example-docs"
        shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    r = builder.run(["emerge", "--buildpkg=y", "--oneshot", "--color=n", "=app-misc/example-docs-1.1"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    swarm.scan()
    hand = HandDrone(swarm, builder.pkgdir)
    assert hand.build_all() == ["app-misc/example-docs-1.1"]
    assert swarm.sync().returncode == 0


def client_sees(client, atom="app-misc/example-docs") -> str:
    """The CPV and build id of ATOM the client would install from its binrepo, as emerge says."""
    r = client.run(["emerge", "--pretend", "--getbinpkgonly", "--color=n", "--oneshot", atom])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("[binary")]
    return row.split("]", 1)[1].split()[0]


def test_a_client_pinned_to_stable_follows_promotions_and_rollbacks(published, tmp_path):
    from swarmtools.prefix import create_prefix

    first = make(published)
    assert first["name"] == clock.utcnow().strftime("%Y.%m.%d") and first["packages"] == len(published.cpvs)
    # Hardlinks, not copies: every package file is the binhost's own inode.
    linked = list((published.releases / first["name"]).rglob("*.gpkg.tar"))
    assert len(linked) == len(published.cpvs)
    for path in linked:  # CATEGORY/FILE in the release, CATEGORY/PN/FILE on the binhost
        (twin,) = published.binhost.glob(f"{path.parent.name}/*/{path.name}")
        assert path.stat().st_ino == twin.stat().st_ino
    r = published.run("swarm-release", "promote", first["name"])
    assert r.returncode == 0 and f"stable: nothing -> {first['name']}" in r.stdout, r.stderr
    entry = published.run("swarm-config", "binrepos", "--channel", "stable").stdout
    assert "/releases/stable" in entry

    # The fixture's web server serves /binhost and /releases.
    http = published.http
    stable = create_prefix(tmp_path / "stable-client", binhost_url=f"{http.url}/releases/stable")
    latest = create_prefix(tmp_path / "latest-client", binhost_url=f"{http.url}/releases/latest")
    r = stable.run(["emerge", "--getbinpkgonly", "--color=n", "app-misc/example-docs"])
    assert r.returncode == 0 and ">>> Emerging binary" in r.stdout, r.stdout[-2000:]
    assert client_sees(latest) == "app-misc/example-docs-1.0-1"

    bump_docs(published, tmp_path)  # 1.0 superseded: deleted from the binhost (grace 0)
    assert not list(published.binhost.glob("app-misc/example-docs/example-docs-1.0-*"))
    assert client_sees(latest) == "app-misc/example-docs-1.1-1"
    assert client_sees(stable) == "app-misc/example-docs-1.0-1"  # still the release

    second = make(published)
    assert second["name"] == first["name"] + ".1"
    changes = [json.loads(line) for line in
               published.run("swarm-release", "diff", first["name"], second["name"]).stdout.splitlines()]
    assert changes == [{"change": "upgraded", "cp": "app-misc/example-docs", "slot": "0",
                        "from": "app-misc/example-docs-1.0", "to": "app-misc/example-docs-1.1",
                        "from_build": "1", "to_build": "1", "why": ""}]
    assert published.run("swarm-release", "promote", second["name"]).returncode == 0
    assert client_sees(stable) == "app-misc/example-docs-1.1-1"
    r = stable.run(["emerge", "--getbinpkgonly", "--color=n", "app-misc/example-docs"])
    assert r.returncode == 0 and ">>> Emerging binary (1 of 1) app-misc/example-docs-1.1" in r.stdout

    r = published.run("swarm-release", "rollback", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["release"] == first["name"], r.stderr
    # The release still has the file the binhost deleted: the client can go back.
    # (Without the binaries it fetched before: what the channel serves, nothing else.)
    shutil.rmtree(stable.pkgdir)
    stable.pkgdir.mkdir()
    assert client_sees(stable) == "app-misc/example-docs-1.0-1"
    r = stable.run(["emerge", "--getbinpkgonly", "--color=n", "=app-misc/example-docs-1.0"])
    assert r.returncode == 0 and ">>> Emerging binary" in r.stdout, r.stdout[-2000:]

    r = published.run("swarm-release", "rollback")
    assert r.returncode == 1 and "no earlier release" in r.stderr
    listing = json.loads(published.run("swarm-release", "list", "--json").stdout)
    assert [x["name"] for x in listing["releases"]] == [first["name"], second["name"]]
    assert {c["channel"]: c["release"] for c in listing["channels"]} == {
        "latest": None, "stable": first["name"]}
    figures = json.loads(published.run("swarm-status", "--json").stdout)
    assert {c["channel"]: c["release"] for c in figures["channels"]}["stable"] == first["name"]


def test_promote_refuses_a_missing_file_a_wrong_digest_and_another_identity(published):
    missing, tampered, good = (make(published)["name"] for _ in range(3))
    victim = min((published.releases / missing).rglob("*.gpkg.tar"))
    victim.unlink()  # one hardlink less: the binhost's file is still there
    r = published.run("swarm-release", "promote", missing)
    assert r.returncode == 1 and f"{victim.relative_to(published.releases / missing)}: missing" in r.stderr
    assert current(published) is None  # nothing promoted

    victim = min((published.releases / tampered).rglob("*.gpkg.tar"))
    data = bytearray(victim.read_bytes())
    data[-1000] ^= 0xFF  # same size, another byte
    victim.unlink()
    victim.write_bytes(bytes(data))
    r = published.run("swarm-release", "promote", tampered)
    assert r.returncode == 1 and "SHA1, MD5 differ from the index" in r.stderr, r.stderr

    assert published.run("swarm-release", "promote", good, "--channel", "testing").returncode == 0
    # The profile's USE changes: the queue now wants example-app without compress.
    etc = published.prefixes["orchestrator"].root / "etc" / "portage"
    (etc / "package.use").write_text("app-misc/example-app -compress\n")
    published.scan()
    r = published.run("swarm-release", "promote", good)
    assert r.returncode == 1, r.stdout
    assert "app-misc/example-app-1.0: not the queue's build: USE +compress" in r.stderr
    assert current(published) is None and current(published, "testing") == good


def test_a_killed_promote_leaves_the_old_release_or_the_new(published):
    for step in ("verified", "viewed", "linked", "swapped"):
        channel = f"at-{step}"
        old, new = make(published)["name"], make(published)["name"]
        assert published.run("swarm-release", "promote", old, "--channel", channel).returncode == 0
        env = {**published.env, release.HOOK_VARIABLE: f"{step}:kill"}
        r = published.run("swarm-release", "promote", new, "--channel", channel, env=env)
        assert r.returncode == -9
        assert current(published, channel) == (new if step == "swapped" else old), step
        index = (published.releases / channel / "Packages").read_text()  # the channel serves
        assert f"PACKAGES: {len(published.cpvs)}" in index
        # The next runs finish the job; the history knows where the channel was.
        assert published.run("swarm-release", "promote", new, "--channel", channel).returncode == 0
        r = published.run("swarm-release", "rollback", "--channel", channel, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["release"] == old, (step, r.stderr)


def test_a_killed_create_leaves_no_release(published):
    env = {**published.env, release.HOOK_VARIABLE: "written:kill"}
    assert published.run("swarm-release", "create", "9.0", env=env).returncode == -9
    assert json.loads(published.run("swarm-release", "list", "--json").stdout)["releases"] == []
    assert make(published, "9.0")["name"] == "9.0"  # the next run starts over


def test_create_if_changed_and_prune(published):
    names = [make(published)["name"]]
    r = published.run("swarm-release", "create", "--if-changed", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"created": None}
    names += [make(published)["name"] for _ in range(3)]
    assert published.run("swarm-release", "promote", names[1]).returncode == 0
    r = published.run("swarm-release", "prune", "--keep", "1", "--json")
    assert json.loads(r.stdout)["removed"] == [names[0], names[2]]
    listed = json.loads(published.run("swarm-release", "list", "--json").stdout)["releases"]
    left = [x["name"] for x in listed]
    assert left == [names[1], names[3]]  # the pinned one, and the newest
    for path in published.binhost.rglob("*.gpkg.tar"):
        assert path.stat().st_nlink == 3  # the binhost's, and the two releases left


def test_a_rebuild_of_the_same_version_is_told_apart_in_diff(published, built_packages):
    first = make(published)["name"]
    docs = next(published.binhost.glob("app-misc/example-docs/*.gpkg.tar"))
    docs.unlink()  # gone from the binhost: swarm-sync sends it to be built again
    assert published.sync().returncode == 0
    assert HandDrone(published, built_packages).build_all() == ["app-misc/example-docs-1.0"]
    assert published.sync().returncode == 0
    second = make(published)["name"]
    (change,) = [json.loads(line) for line in
                 published.run("swarm-release", "diff", first, second).stdout.splitlines()]
    assert change["change"] == "rebuilt" and change["why"] == "a new build of the same version and USE"
    assert (change["from_build"], change["to_build"]) == ("1", "2")


def test_releases_on_another_filesystem_are_refused(published):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(published.binhost).st_dev:
        pytest.skip("no second filesystem here")
    target = f"{shm}/swarm-releases-{os.getpid()}"
    env = {**published.env, "SWARM_BINHOST_RELEASES_PATH": target}
    try:
        r = published.run("swarm-release", "create", env=env)
        assert r.returncode == 1 and "on another filesystem" in r.stderr, r.stderr
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_release_names_and_channels_are_checked(published):
    r = published.run("swarm-release", "create", "stable")
    assert r.returncode == 2 and "must start with a digit" in r.stderr
    r = published.run("swarm-release", "promote", "1.0", "--channel", "latest")
    assert r.returncode == 2 and "the live binhost" in r.stderr
    r = published.run("swarm-release", "promote", "2001.01.01")
    assert r.returncode == 1 and "no release 2001.01.01" in r.stderr


def test_promote_checks_signatures_when_signing_is_on(tmp_path, built_packages):
    from test_sync_signing import gpg

    if not shutil.which("gpg"):
        pytest.skip("needs GnuPG (Debian package gnupg)")
    home = tmp_path / "signer-gnupg"
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", "swarm test <swarm@example.invalid>",
        "ed25519", "sign", "never")
    fingerprint = gpg(home, "--with-colons", "--list-secret-keys").stdout.decode().split(
        "fpr:::::::::")[1].split(":")[0]
    swarm = DroneSwarm(tmp_path, drones=("d1",))
    signed = {**swarm.env, "SWARM_BINHOST_GPG_KEY": fingerprint, "SWARM_BINHOST_GPG_HOME": str(home)}
    swarm.scan()
    HandDrone(swarm, built_packages).build_all()
    assert swarm.sync(env=signed).returncode == 0
    r = swarm.run("swarm-release", "create", "1.0", env=signed)
    assert r.returncode == 0, r.stderr
    r = swarm.run("swarm-release", "promote", "1.0", env=signed)
    assert r.returncode == 0, r.stderr
    # A GnuPG home that does not know the key: no signature verifies.
    stranger = tmp_path / "stranger-gnupg"
    stranger.mkdir(mode=0o700)
    r = swarm.run("swarm-release", "promote", "1.0", "--channel", "testing",
                  env={**signed, "SWARM_BINHOST_GPG_HOME": str(stranger)})
    assert r.returncode == 1 and "signature not valid" in r.stderr, r.stderr


def channel_serves_one_release(swarm, channel="stable") -> str:
    """The index, view.json and files CHANNEL serves are all of one release; its name."""
    from swarmtools.binhost import read_index

    served = swarm.releases / channel
    name = json.loads((served / "view.json").read_text())["release"]
    links = {p.name: os.readlink(p) for p in served.iterdir() if p.is_symlink()}
    assert links and all(target == os.path.join("..", "..", name, category)
                         for category, target in links.items()), (name, links)
    index = read_index(served)
    assert sorted(e["PATH"] for e in index.entries) == sorted(
        e["PATH"] for e in read_index(swarm.releases / name).entries)
    missing = [e["PATH"] for e in index.entries if not (served / e["PATH"]).is_file()]
    assert not missing, f"{channel} -> {name} lists files that are not there: {missing}"
    return name


def test_promotes_and_rollbacks_at_once_take_turns(published):
    a, b = make(published)["name"], make(published)["name"]
    tool = script("swarm-release")
    for round_ in range(30):
        # Two admins (or an admin and cron) at once; every third round one rolls back.
        second = ["rollback"] if round_ % 3 == 2 else ["promote", b]
        started = [subprocess.Popen([tool, *args], env=published.env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for args in (["promote", a], second)]
        for process in started:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, (round_, process.args, err)
        assert channel_serves_one_release(published) in (a, b)
    leftovers = [p.name for p in [*published.releases.iterdir(),
                                  *(published.releases / release.VIEWS).iterdir()]
                 if p.name.endswith(".tmp")]
    assert leftovers == []


def test_prune_during_a_promote_spares_the_release_being_promoted(published):
    promoted, older, _newest = (make(published)["name"] for _ in range(3))
    # The promote stops once its view is made, before the channel moves to it.
    env = {**published.env, release.HOOK_VARIABLE: "viewed:pause=4"}
    promote = subprocess.Popen([script("swarm-release"), "promote", promoted], env=env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list((published.releases / release.VIEWS).glob("stable.*")):
        assert promote.poll() is None and time.monotonic() < deadline, promote.communicate()
        time.sleep(0.05)
    r = published.run("swarm-release", "prune", "--keep", "1", "--json")
    _, err = promote.communicate(timeout=120)
    assert promote.returncode == 0, err
    assert r.returncode == 0 and json.loads(r.stdout)["removed"] == [older], r.stderr
    assert channel_serves_one_release(published) == promoted


def test_a_move_waits_for_the_lock_then_says_try_again_later(swarm):
    from filelock import FileLock

    from swarmtools import db
    from swarmtools.errors import ExitCode, TryLater

    config = config_mod.load(swarm.config)
    conn = db.connect(config.database, create=True)
    with FileLock(str(release.lock_file(config))), pytest.raises(TryLater) as held:
        release.prune(config, conn, 1, clock.utcnow(), wait=0.2)
    assert held.value.exit_code == ExitCode.TEMPFAIL and "try again later" in str(held.value)
    assert release.prune(config, conn, 1, clock.utcnow(), wait=0) == []  # free again

def test_promote_refuses_links_and_files_the_index_does_not_list(published, tmp_path):
    import urllib.error
    import urllib.request

    good, linked, moved = (make(published)["name"] for _ in range(3))
    assert published.run("swarm-release", "promote", good).returncode == 0
    tree = published.releases / linked
    (tree / "app-misc" / "shadow.gpkg.tar").symlink_to("/etc/shadow")
    (tree / "etc").symlink_to("/etc")
    (tree / "notes.txt").write_text("not in the index\n")
    r = published.run("swarm-release", "promote", linked)
    assert r.returncode == 1, r.stderr
    for named in ("app-misc/shadow.gpkg.tar: a link to /etc/shadow", "etc: a link to /etc",
                  "notes.txt: not in the index"):
        assert named in r.stderr, r.stderr
    # A category replaced by a link to a directory outside holding the same files.
    category = published.releases / moved / "app-misc"
    outside = tmp_path / "outside"
    shutil.move(category, outside)
    category.symlink_to(outside)
    r = published.run("swarm-release", "promote", moved)
    assert r.returncode == 1 and f"app-misc: a link to {outside}" in r.stderr, r.stderr
    # The channel still serves the good release; nothing outside the tree through it.
    assert channel_serves_one_release(published) == good
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{published.http.url}/releases/stable/etc/hostname")


def test_promote_refuses_an_index_that_lists_a_path_outside_the_release(published):
    from swarmtools.binhost import Index, read_index

    name = make(published)["name"]
    tree = published.releases / name
    index = read_index(tree)
    first, *rest = index.entries
    # The binhost's own file: there, with the digests the index lists, but not the release's.
    (original,) = published.binhost.glob(f"*/*/{os.path.basename(first['PATH'])}")
    outside = os.path.relpath(original, tree)
    release.write_index(tree, Index(index.header, [{**first, "PATH": outside}, *rest]))
    (tree / first["PATH"]).unlink()
    r = published.run("swarm-release", "promote", name)
    assert r.returncode == 1 and f"{outside}: not CATEGORY/FILE" in r.stderr, r.stderr
