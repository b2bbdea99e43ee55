"""The build profile's bundle and repository state, as library functions (no emerge)."""

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

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
