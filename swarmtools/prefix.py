"""Throw-away Portage prefixes for the demo and the tests.

A prefix is a directory that the real Portage (the PyPI wheel in a virtual
environment) treats as its EPREFIX, holding its own configuration, ebuild
repository, installed-package database and PKGDIR.  It lets emerge, emaint
and quickpkg run on any Linux box.  It is never used on a real Gentoo host,
which uses the system Portage (the README says how to deploy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_REPO: Path = Path(__file__).resolve().parents[1] / "examples" / "repo"
EXAMPLE_WORLD: Path = Path(__file__).resolve().parents[1] / "examples" / "world"

# Sandboxes need namespaces/privileges a container may lack; signing needs
# GnuPG keys; the rest removes delays and noise in non-interactive runs.
_FEATURES = (
    "-sandbox -usersandbox -network-sandbox -ipc-sandbox -pid-sandbox"
    " -mount-sandbox -binpkg-signing -binpkg-request-signature -news"
    " -preserve-libs -merge-wait -strict -unknown-features-warn"
)


@dataclass
class Prefix:
    """Paths of one prefix and how to run Portage commands on it."""

    root: Path
    repo: Path  # root/var/db/repos/<repo_name>
    pkgdir: Path  # root/var/cache/binpkgs
    portage_home: Path = Path(sys.prefix)  # sys.prefix of a Python with portage
    binhost_url: str | None = None

    def repos_conf(self) -> str:
        """Return the repos.conf text naming this prefix's repository."""
        name = self.repo.name
        return f"[DEFAULT]\nmain-repo = {name}\n\n[{name}]\nlocation = {self.repo}\n"

    def env_overrides(self) -> dict[str, str]:
        """Return only the variables emerge/emaint/quickpkg need on this prefix."""
        env = {
            # A module install of Portage takes sys.prefix as EPREFIX otherwise.
            "PORTAGE_OVERRIDE_EPREFIX": str(self.root),
            # root/bin first: its chown/chgrp are no-ops (no portage user here).
            "PATH": os.pathsep.join(
                [str(self.root / "bin"), str(self.portage_home / "bin"),
                 os.environ.get("PATH", os.defpath)]
            ),
            "PORTAGE_USERNAME": "root",
            "PORTAGE_GRPNAME": "root",
            "PORTAGE_INST_UID": "0",
            "PORTAGE_INST_GID": "0",
            # Replaces the shipped repos.conf, whose absent [gentoo] repository
            # would otherwise be warned about on every call.
            "PORTAGE_REPOSITORIES": self.repos_conf(),
        }
        if self.binhost_url:
            env["PORTAGE_BINHOST"] = self.binhost_url
        if (self.portage_home / "pyvenv.cfg").is_file():
            # Portage starts a Python for each ebuild phase; told it runs in a
            # venv, it starts the venv's, not the base interpreter behind it
            # (whose site may load more: about 30 ms a start on this machine).
            env["VIRTUAL_ENV"] = str(self.portage_home)
        return env

    def env(self) -> dict[str, str]:
        """Return os.environ merged with env_overrides()."""
        return {**os.environ, **self.env_overrides()}

    def run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        """Run a command (e.g. ["emerge", "-p", ...]) in this prefix's environment."""
        kw.setdefault("env", self.env())
        kw.setdefault("text", True)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        return subprocess.run(args, **kw)


def _symlink(link: Path, target: Path | str) -> None:
    """Create or replace a symlink (so create_prefix can be called again)."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def open_prefix(root: Path, portage_home: Path | None = None) -> Prefix:
    """The prefix create_prefix laid out under ROOT, as it is (nothing is written)."""
    root = Path(root).resolve()
    (repo,) = (root / "var" / "db" / "repos").iterdir()
    return Prefix(root=root, repo=repo, pkgdir=root / "var" / "cache" / "binpkgs",
                  portage_home=Path(portage_home or sys.prefix).resolve())


def create_prefix(
    root: Path,
    repo_src: Path = EXAMPLE_REPO,
    world: list[str] | None = None,
    binhost_url: str | None = None,
    portage_home: Path | None = None,
    make_conf_extra: str = "",
) -> Prefix:
    """Lay out a prefix under root with a copy of repo_src; return it."""
    root = Path(root).resolve()
    repo_src = Path(repo_src).resolve()
    name = (repo_src / "profiles" / "repo_name").read_text().strip()
    prefix = Prefix(
        root=root,
        repo=root / "var" / "db" / "repos" / name,
        pkgdir=root / "var" / "cache" / "binpkgs",
        portage_home=Path(portage_home or sys.prefix).resolve(),
        binhost_url=binhost_url,
    )
    if world is None:
        world = [l.strip() for l in EXAMPLE_WORLD.read_text().splitlines() if l.strip()]

    for d in ("bin", "etc/portage", "var/cache/binpkgs", "var/cache/distfiles",
              "var/cache/edb", "var/tmp", "var/db/pkg", "var/lib/portage",
              "var/log", "share"):
        (root / d).mkdir(parents=True, exist_ok=True)

    # A private copy, so a test may bump versions without touching examples/.
    if prefix.repo != repo_src:
        shutil.rmtree(prefix.repo, ignore_errors=True)
        shutil.copytree(repo_src, prefix.repo, symlinks=True)

    etc = root / "etc" / "portage"
    _symlink(etc / "make.profile", prefix.repo / "profiles" / "default" / "linux")
    (etc / "repos.conf").write_text(prefix.repos_conf())
    make_conf = (
        f'FEATURES="{_FEATURES}"\n'
        f'PKGDIR="{prefix.pkgdir}"\n'
        f'DISTDIR="{root}/var/cache/distfiles"\n'
        f'PORTAGE_TMPDIR="{root}/var/tmp"\n'
        'BINPKG_FORMAT="gpkg"\n'
        'PORTAGE_USERNAME="root"\n'
        'PORTAGE_GRPNAME="root"\n'
        "CLEAN_DELAY=0\n"
        "EMERGE_WARNING_DELAY=0\n"
    )
    if binhost_url:
        make_conf += f'PORTAGE_BINHOST="{binhost_url}"\n'
    (etc / "make.conf").write_text(make_conf + make_conf_extra)

    (root / "var" / "lib" / "portage" / "world").write_text("".join(a + "\n" for a in world))
    counter = root / "var" / "cache" / "edb" / "counter"
    if not counter.exists():  # never rewind it under an existing vdb
        counter.write_text("100")
    # Without make.globals (found through share/portage) emerge dies: KeyError 'RPMDIR'.
    _symlink(root / "share" / "portage", prefix.portage_home / "share" / "portage")
    for tool in ("chown", "chgrp"):  # no portage user/group on a non-Gentoo box
        _symlink(root / "bin" / tool, "/usr/bin/true")
    return prefix
