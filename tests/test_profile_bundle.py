"""The build profile's bundle and repository state, as library functions (no emerge)."""

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import add_drones, script

from swarmtools import profile
from swarmtools.errors import SwarmError


@pytest.fixture
def etc(tmp_path) -> tuple[Path, Path]:
    """An /etc/portage whose make.profile points into a repository, and that repository."""
    repo = tmp_path / "repos" / "gentoo"
    (repo / "profiles" / "default" / "linux" / "amd64").mkdir(parents=True)
    etc = tmp_path / "orchestrator" / "etc" / "portage"
    (etc / "package.use").mkdir(parents=True)
    (etc / "make.conf").write_text('USE="ssl"\nPKGDIR="/var/cache/binpkgs"\n')
    (etc / "package.use" / "app").write_text("app-misc/foo flag\n")
    (etc / "repos.conf").write_text("[gentoo]\nlocation = /var/db/repos/gentoo\n")
    (etc / "gnupg").mkdir()
    (etc / "gnupg" / "secring").write_text("never leaves the host")
    (etc / "package.use" / "._cfg0000_app").write_text("an update nobody merged")
    (etc / "make.profile").symlink_to(repo / "profiles" / "default" / "linux" / "amd64")
    return etc, repo


def names(bundle: bytes) -> list[str]:
    return tarfile.open(fileobj=io.BytesIO(bundle)).getnames()


def test_a_bundle_holds_the_build_settings_and_not_the_hosts(etc):
    etc_portage, repo = etc
    bundle = profile.make_bundle(etc_portage, {"gentoo": repo})
    assert names(bundle) == ["swarm-profile.json", "make.conf", "package.use",
                             "package.use/app"]
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        manifest = json.loads(tar.extractfile("swarm-profile.json").read())
    assert manifest == {"make_profile": {"repo": "gentoo", "path": "profiles/default/linux/amd64"}}


def test_the_same_settings_give_the_same_digest_anywhere(etc, tmp_path):
    etc_portage, repo = etc
    first = profile.make_bundle(etc_portage, {"gentoo": repo})
    os.utime(etc_portage / "make.conf", (0, 0))  # another mtime, another host's copy
    assert profile.make_bundle(etc_portage, {"gentoo": repo}) == first
    (etc_portage / "package.use" / "app").write_text("app-misc/foo -flag\n")
    assert profile.make_bundle(etc_portage, {"gentoo": repo}) != first


def test_a_profile_of_its_own_travels_in_the_bundle(etc, tmp_path):
    etc_portage, repo = etc
    own = tmp_path / "my-profile"
    own.mkdir()
    (own / "parent").write_text("gentoo:default/linux/amd64\n")
    (etc_portage / "make.profile").unlink()
    (etc_portage / "make.profile").symlink_to(own)
    bundle = profile.make_bundle(etc_portage, {"gentoo": repo})
    assert "make.profile/parent" in names(bundle)


def test_a_drone_assembles_its_configroot_from_the_bundle(etc, tmp_path):
    etc_portage, _ = etc
    bundle = profile.make_bundle(etc_portage, {"gentoo": tmp_path / "repos" / "gentoo"})
    digest = hashlib.sha256(bundle).hexdigest()
    cache = tmp_path / "drone" / "cache"
    kept = profile.unpack({"tar": base64.b64encode(bundle).decode()}, digest, cache)
    own_root, drone_repo = tmp_path / "drone", tmp_path / "drone-repos" / "gentoo"
    (own_root / "etc" / "portage").mkdir(parents=True, exist_ok=True)
    (own_root / "etc" / "portage" / "repos.conf").write_text(f"[gentoo]\nlocation = {drone_repo}\n")
    (own_root / "etc" / "portage" / "package.use").write_text("app-misc/foo -flag\n")
    root = profile.assemble(kept, cache / "configroot", {"gentoo": drone_repo}, own_root,
                            {"PKGDIR": "/drone/pkgdir", "MAKEOPTS": "-j32", "USE": "-ssl"})
    etc_out = root / "etc" / "portage"
    assert os.readlink(etc_out / "make.profile") == str(drone_repo / "profiles/default/linux/amd64")
    assert (etc_out / "repos.conf").read_text() == f"[gentoo]\nlocation = {drone_repo}\n"
    assert (etc_out / "package.use" / "app").read_text() == "app-misc/foo flag\n"
    make_conf = (etc_out / "make.conf").read_text()
    assert make_conf.startswith('USE="ssl"\n')
    # Its own where-and-how-fast values come last and win; its own USE never comes.
    assert 'PKGDIR="/drone/pkgdir"\nMAKEOPTS="-j32"\nEMERGE_DEFAULT_OPTS=""\n' in make_conf
    assert "-ssl" not in make_conf and not (etc_out / "swarm-profile.json").exists()
    # Built anew each time: a file left from before does not survive.
    (etc_out / "package.accept_keywords").write_text("*/* ~amd64\n")
    root = profile.assemble(kept, cache / "configroot", {"gentoo": drone_repo}, own_root, {})
    assert not (root / "etc" / "portage" / "package.accept_keywords").exists()


def test_a_drone_without_the_profiles_repository_is_told_so(etc, tmp_path):
    etc_portage, repo = etc
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(profile.make_bundle(etc_portage, {"gentoo": repo}))
    with pytest.raises(SwarmError, match="repository gentoo, which this drone does not have"):
        profile.assemble(bundle, tmp_path / "root", {}, tmp_path, {})


def test_a_bundle_that_does_not_match_its_digest_is_refused(tmp_path):
    with pytest.raises(SwarmError, match="does not match its digest"):
        profile.unpack({"tar": base64.b64encode(b"x").decode()}, "0" * 64, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_repositorys_state(tmp_path):
    repo = tmp_path / "repo"
    (repo / "app-misc" / "foo").mkdir(parents=True)
    (repo / "app-misc" / "foo" / "foo-1.ebuild").write_text("EAPI=8\n")
    files = profile.tree_state(repo)
    assert files.startswith("files:")
    (repo / "distfiles").mkdir()  # an old layout's downloads are not the tree
    (repo / "distfiles" / "foo.tar.gz").write_text("x")
    assert profile.tree_state(repo) == files
    (repo / "app-misc" / "foo" / "foo-1.ebuild").write_text("EAPI=7\n")  # same size
    assert profile.tree_state(repo) != files
    # A git checkout and its copy by rsync (Portage leaves .git out) are one state.
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-qm", "x", "--allow-empty"], check=True)
    (repo / "distfiles").rename(tmp_path / "distfiles")
    state = profile.tree_state(repo)
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-a", "--exclude=/.git", f"{repo}/", f"{copy}/"], check=True)
    assert profile.tree_state(copy) == state
    (repo / "metadata").mkdir()
    (repo / "metadata" / "timestamp.chk").write_text("Sat, 05 Dec 2026 01:15:01 +0000\n")
    assert profile.tree_state(repo) == "timestamp:Sat, 05 Dec 2026 01:15:01 +0000"
    assert profile.tree_differences({"gentoo": "timestamp:older"}, {"gentoo": repo}) == [
        ("repository gentoo is at timestamp:Sat, 05 Dec 2026 01:15:01 +0000, the scan's at "
         "timestamp:older")]
    assert profile.tree_differences({"other": "x"}, {"gentoo": repo}) == [
        "repository other is missing"]


def test_host_values_keep_what_portage_fills_in_and_host_features_are_the_drones(etc, tmp_path):
    from portage.util import getconfig

    etc_portage, repo = etc
    (etc_portage / "make.conf").write_text(
        'FEATURES="ccache splitdebug"\nEMERGE_DEFAULT_OPTS="--ask --verbose"\n')
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(profile.make_bundle(etc_portage, {"gentoo": repo}))
    fetch = 'wget -O "${DISTDIR}/${FILE}" ${URI}'  # as portageq prints it
    root = profile.assemble(bundle, tmp_path / "root", {"gentoo": repo}, tmp_path / "none",
                            {"FETCHCOMMAND": fetch, "EMERGE_DEFAULT_OPTS": "",
                             "FEATURES": "sandbox userpriv"})
    values = getconfig(str(root / "etc" / "portage" / "make.conf"), expand=True)
    assert values["FETCHCOMMAND"] == fetch
    assert values["EMERGE_DEFAULT_OPTS"] == ""  # the orchestrator's --ask stays home
    features = values["FEATURES"].split()
    # The profile's splitdebug stays (it changes the binary); ccache is the host's.
    assert "splitdebug" in features and "-ccache" in features
    assert "sandbox" in features and "-sandbox" not in features and "-distcc" in features


@pytest.mark.parametrize("filters", [True, False], ids=["filters", "python-3.11.2"])
def test_a_bundle_unpacks_only_inside_the_configroot(etc, tmp_path, monkeypatch, filters):
    """Also on a Python without tarfile's extraction filters (before 3.11.4: Debian 12's)."""
    if not filters:  # tarfile as 3.11.2's: no filters, everything extracted as it is
        plain = tarfile.TarFile.extractall

        def extractall(self, path=".", members=None, *, numeric_owner=False):
            return plain(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")
        monkeypatch.delattr(tarfile, "data_filter")
        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    etc_portage, repo = etc
    good = tmp_path / "good.tar"
    good.write_bytes(profile.make_bundle(etc_portage, {"gentoo": repo}))
    root = profile.assemble(good, tmp_path / "root", {"gentoo": repo}, tmp_path / "none", {})
    assert (root / "etc" / "portage" / "package.use" / "app").exists()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../escaped")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises((SwarmError, tarfile.FilterError)):
        profile.assemble(evil, tmp_path / "root", {"gentoo": repo}, tmp_path / "none", {})
    assert not (tmp_path / "escaped").exists()


SECRET = "token-3f9a"  # in every file that must stay home


def hostile(etc_portage: Path, outside: Path) -> None:
    """The issue's careless admin: secrets and links out beside the build settings."""
    outside.mkdir()
    (outside / "shadow").write_text(f"root:{SECRET}:19000::::::\n")
    (outside / "shadow").chmod(0o644)  # readable by all: the link alone must keep it home
    (etc_portage / "env").mkdir(exist_ok=True)
    (etc_portage / "env" / "shadow").symlink_to(outside / "shadow")
    (etc_portage / "env" / "lib").symlink_to(outside)  # a folder out
    (etc_portage / "env" / "O3.conf").write_text('CFLAGS="-O3"\n')
    (etc_portage / "env" / "fast.conf").symlink_to("O3.conf")  # a link inside: fine
    (etc_portage / "env" / "loop").symlink_to("..")  # inside, but into itself
    (etc_portage / "signing.key").write_text(SECRET)
    (etc_portage / "signing.key").chmod(0o600)
    (etc_portage / ".git").mkdir()
    (etc_portage / ".git" / "config").write_text(f"[remote]\nurl = https://{SECRET}@git.example/\n")
    (etc_portage / "make.conf.bak").write_text(f'FETCHCOMMAND="wget --password={SECRET}"\n')
    for backup in ("app~", "app.orig", "app.rej", "#app#", ".app.swp", "._cfg0001_app"):
        (etc_portage / "package.use" / backup).write_text(SECRET)
    (etc_portage / "private").mkdir(mode=0o700)
    (etc_portage / "private" / "readable").write_text(SECRET)
    (etc_portage / "private").chmod(0o700)
    (etc_portage / "package.use" / "keys").mkdir()
    (etc_portage / "package.use" / "keys" / "gnupg").mkdir()
    (etc_portage / "package.use" / "keys" / "gnupg" / "pubring").write_text(SECRET)
    (etc_portage / "package.use" / "peek").symlink_to("../signing.key")  # inside, but private


def test_a_bundle_leaves_secrets_and_links_out_at_home_and_says_so(etc, tmp_path, caplog):
    etc_portage, repo = etc
    hostile(etc_portage, tmp_path / "outside")
    with caplog.at_level(logging.INFO, logger="swarmtools.profile"):
        bundle = profile.make_bundle(etc_portage, {"gentoo": repo})
    assert names(bundle) == ["swarm-profile.json", "env", "env/O3.conf", "env/fast.conf",
                             "make.conf", "package.use", "package.use/app", "package.use/keys"]
    assert SECRET.encode() not in bundle
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        assert tar.extractfile("env/fast.conf").read() == b'CFLAGS="-O3"\n'
    said = caplog.text
    for name, why in [("env/shadow", f"a link out of the configuration root (to {tmp_path}/outside"),
                      ("env/lib", "a link out of the configuration root"),
                      ("env/loop", "a link to a folder it is in (a loop)"),
                      ("signing.key", "not readable by others (mode 0600)"),
                      (".git", "a dot-file"), ("make.conf.bak", "an editor backup"),
                      ("package.use/app~", "an editor backup"),
                      ("package.use/#app#", "an editor backup"),
                      ("package.use/app.rej", "an editor backup"),
                      ("package.use/keys/gnupg", "keys"),
                      ("package.use/peek", "not readable by others"),
                      ("private", "a folder others cannot read")]:
        assert f"{etc_portage}/{name}: {why}" in said, (name, said)


def test_a_drone_assembles_its_configroot_from_a_bundle_that_left_things_out(etc, tmp_path):
    etc_portage, repo = etc
    hostile(etc_portage, tmp_path / "outside")
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(profile.make_bundle(etc_portage, {"gentoo": repo}))
    root = profile.assemble(bundle, tmp_path / "root", {"gentoo": repo}, tmp_path / "none", {})
    etc_out = root / "etc" / "portage"
    assert (etc_out / "env" / "fast.conf").read_text() == 'CFLAGS="-O3"\n'
    assert (etc_out / "package.use" / "app").read_text() == "app-misc/foo flag\n"
    found = [p.read_bytes() for p in etc_out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert found and not any(SECRET.encode() in data for data in found)


BOUNDED = """
import resource, sys
from pathlib import Path
from swarmtools import profile
from swarmtools.errors import SwarmError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    profile.make_bundle(Path(sys.argv[1]), {})
    print("packed")
except SwarmError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def pack_measured(etc_portage: Path) -> tuple[str, int]:
    """make_bundle in a process of its own: what it said, and how far its peak memory grew."""
    r = subprocess.run([sys.executable, "-c", BOUNDED, str(etc_portage)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said, grown = r.stdout.splitlines()
    return said, int(grown)


def test_a_huge_tree_stops_at_the_limit_in_one_line_and_bounded_memory(etc, tmp_path):
    etc_portage, _ = etc
    huge = 256 << 20  # sparse: no disk, and no memory unless read whole
    outside = tmp_path / "usr-lib"
    outside.mkdir()
    with open(outside / "libbig.so", "wb") as f:
        f.truncate(huge)
    (etc_portage / "env").mkdir()
    (etc_portage / "env" / "big").symlink_to(outside)  # the env/big -> /usr/lib
    said, grown = pack_measured(etc_portage)
    assert said == "packed" and grown < 16 << 20, (said, grown)
    # The same inside the configuration root: it stops at the limit, naming the file.
    (etc_portage / "env" / "big").unlink()
    (etc_portage / "env" / "big").mkdir()
    for n in range(3):
        with open(etc_portage / "env" / "big" / f"part{n}", "wb") as f:
            f.truncate(huge)
    said, grown = pack_measured(etc_portage)
    assert said.startswith(f"{etc_portage}/env/big/part0: the build profile would be larger "
                           "than 8 MiB"), said
    assert "\n" not in said and grown < 16 << 20, (said, grown)
    # Many small files: as many entries as 8 MiB of tar headers, no more.
    shutil.rmtree(etc_portage / "env" / "big")
    (etc_portage / "env" / "many").mkdir()
    for n in range(20_000):
        (etc_portage / "env" / "many" / f"f{n:05}").touch()
    said, grown = pack_measured(etc_portage)
    assert "env/many" in said and "larger than 8 MiB" in said, said
    assert grown < 16 << 20, grown


def through_gateway(swarm, command: str) -> subprocess.CompletedProcess:
    """COMMAND as drone d1 sends it over ssh (the forced command, as sshd runs it)."""
    return subprocess.run([script("swarm-delegate"), "gateway", "--drone", "d1", "--config",
                           str(swarm.config)], env={**swarm.env, "SSH_ORIGINAL_COMMAND": command},
                          capture_output=True, text=True)


def served(swarm, which: str) -> bytes:
    r = through_gateway(swarm, f"swarm-delegate profile --json {which}")
    assert r.returncode == 0, r.stderr
    return base64.b64decode(json.loads(r.stdout)["tar"])


@pytest.mark.slow
def test_swarm_fresh_packs_no_secret_and_the_gateway_serves_none(emerge_swarm, prefix, tmp_path):
    add_drones(emerge_swarm.config, {"d1": {"transport": "ssh"}})
    etc_portage = prefix.root / "etc" / "portage"
    (etc_portage / "package.use").mkdir(exist_ok=True)
    hostile(etc_portage, tmp_path / "outside")
    r = emerge_swarm.run("swarm-fresh", "-v")
    assert r.returncode == 0, r.stderr
    for said in (f"{etc_portage}/env/shadow: a link out of the configuration root",
                 f"{etc_portage}/signing.key: not readable by others (mode 0600)",
                 f"{etc_portage}/.git: a dot-file", f"{etc_portage}/make.conf.bak: an editor backup"):
        assert said in r.stderr, r.stderr
    (digest,) = emerge_swarm.query("SELECT digest FROM profiles")[0]
    kept = emerge_swarm.root / "state" / "profiles" / f"{digest}.tar"
    # Readable by the swarm user alone (the owner of the state, who runs swarm-fresh).
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert kept.stat().st_uid == emerge_swarm.db.stat().st_uid
    bundle = served(emerge_swarm, digest)
    assert bundle == kept.read_bytes() and SECRET.encode() not in bundle
    assert {"env/O3.conf", "env/fast.conf", "make.conf"} <= set(names(bundle))
    assert not {"signing.key", "env/shadow", ".git/config", "make.conf.bak"} & set(names(bundle))
    assert served(emerge_swarm, "default") == bundle  # by profile name, for swarm-drone --base


@pytest.mark.slow
def test_only_the_bundles_profiles_use_now_are_kept_and_served(emerge_swarm, prefix):
    add_drones(emerge_swarm.config, {"d1": {"transport": "ssh"}})
    kept = emerge_swarm.root / "state" / "profiles"
    emerge_swarm.scan()
    (old,) = emerge_swarm.query("SELECT digest FROM profiles")[0]
    (prefix.root / "etc/portage/make.conf").write_text(
        (prefix.root / "etc/portage/make.conf").read_text() + f"# {SECRET}, gone in the next\n")
    emerge_swarm.scan()
    (secret,) = emerge_swarm.query("SELECT digest FROM profiles")[0]
    assert SECRET.encode() in served(emerge_swarm, secret)
    (prefix.root / "etc/portage/make.conf").write_text(
        (prefix.root / "etc/portage/make.conf").read_text().replace(f"# {SECRET}, gone in the next\n", ""))
    emerge_swarm.scan()
    (now,) = emerge_swarm.query("SELECT digest FROM profiles")[0]
    assert now == old != secret  # the same settings again: the same bundle
    assert sorted(p.name for p in kept.iterdir()) == [f"{now}.tar"]
    r = through_gateway(emerge_swarm, f"swarm-delegate profile --json {secret}")
    assert r.returncode == 1 and "no profile builds with it" in r.stderr, r.stderr
    # A file no scan recorded is not served either, wherever it came from.
    stray = hashlib.sha256(b"stray").hexdigest()
    (kept / f"{stray}.tar").write_bytes(b"stray")
    r = through_gateway(emerge_swarm, f"swarm-delegate profile --json {stray}")
    assert r.returncode == 1 and "no profile builds with it" in r.stderr, r.stderr
    assert served(emerge_swarm, now) == served(emerge_swarm, "default")
