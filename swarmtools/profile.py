"""The build profile: the Portage settings a package is built with, and the tree it is built from.

The scan's Portage configuration (its ``PORTAGE_CONFIGROOT``: make.conf,
package.use, package.accept_keywords, env/, make.profile ...) is what the
swarm publishes for, so it is what every drone builds with. swarm-fresh packs
it into a *bundle* (a reproducible tar of ``etc/portage``, named by its
sha256), records it with the state of the ebuild repositories the scan read,
and every claim names both. A drone fetches the bundle once per digest and
builds with it as its ``PORTAGE_CONFIGROOT``; of its own make.conf only the
host-local values (:data:`HOST_LOCAL`: where and how fast, never what) are
kept. Its own package.use never reaches a published binary.

A repository's state is the cheapest thing that changes with its ebuilds:
``metadata/timestamp.chk`` (Gentoo's rsync and git mirrors write it), else
a digest of its files. The same tree gives the same state on every host,
however it got there: not a git commit, which a copy synced with rsync
(Portage leaves ``.git`` out) does not have.

There is one profile a [profiles.NAME] table, or without them one,
``default``: the scan's own configuration. Each scan records its own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import sqlite3
import tarfile
from dataclasses import dataclass
from pathlib import Path

from . import staging
from .config import Config
from .errors import SwarmError

DEFAULT = "default"
MAX_BUNDLE_BYTES = 8 << 20  # a Portage configuration is kilobytes; a mistake is not
# Files of etc/portage that belong to the host, not to the builds: where its
# repositories are, where it fetches binaries, its keys and sync hooks.
NOT_BUNDLED = {"repos.conf", "binrepos.conf", "gnupg", "postsync.d", "repo.postsync.d",
               "make.profile"}
# make.conf values a drone keeps from its own configuration: where it keeps
# files and how fast it builds. Nothing here changes what a binary contains.
HOST_LOCAL = ("PKGDIR", "DISTDIR", "PORTAGE_TMPDIR", "MAKEOPTS", "PORTAGE_NICENESS",
              "PORTAGE_IONICE_COMMAND", "GENTOO_MIRRORS", "FETCHCOMMAND", "RESUMECOMMAND",
              "PORTAGE_USERNAME", "PORTAGE_GRPNAME", "CCACHE_DIR", "CCACHE_SIZE",
              "EMERGE_DEFAULT_OPTS")
# Kept even when the drone's is empty: the orchestrator's (--ask, say) would
# break a non-interactive build.
ALWAYS_OWN = ("EMERGE_DEFAULT_OPTS",)
# FEATURES that need the host's own set-up (a compiler cache, keys, user
# namespaces) and do not change what a binary contains: each takes the
# drone's value, whatever the profile says.
HOST_FEATURES = ("ccache", "distcc", "binpkg-signing", "binpkg-request-signature",
                 "parallel-fetch", "sandbox", "usersandbox", "network-sandbox", "ipc-sandbox",
                 "pid-sandbox", "mount-sandbox", "userpriv", "userfetch", "usersync")
DIGEST = re.compile(r"[0-9a-f]{64}")  # a bundle's name: the sha256 of its bytes
MANIFEST = "swarm-profile.json"  # in the bundle: how to rebuild make.profile on a drone
# Top-level folders of a repository that are not its tree: what Portage's
# rsync leaves out (PORTAGE_RSYNC_OPTS), and version control.
_NOT_TREE = {".git", ".svn", "distfiles", "local", "packages"}


@dataclass(frozen=True)
class Snapshot:
    """What one scan read: the configuration bundle and the repositories' state."""

    name: str
    bundle: bytes
    digest: str
    tree: dict[str, str]  # repository name -> state
    chost: str
    arch: str
    world: str  # the world file and world_sets, as read

    def inputs(self, scan_command: list[str], scan_environment: dict[str, str],
               binhost: str = "") -> str:
        """A digest of everything the scan's answer depends on (swarm-fresh --if-changed);
        BINHOST: where the profile publishes (name and URL)."""
        text = json.dumps({"digest": self.digest, "tree": self.tree, "world": self.world,
                           "command": scan_command, "environment": scan_environment,
                           "binhost": binhost}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def claim_info(self) -> dict:
        return {"name": self.name, "digest": self.digest, "tree": self.tree,
                "chost": self.chost, "arch": self.arch}


def snapshot(env: dict[str, str], name: str = DEFAULT) -> Snapshot:
    """The profile as the scan's environment ENV sees it now."""
    from . import portageenv

    settings = portageenv.settings(env)
    config_root, repositories = _repositories(settings)
    bundle = make_bundle(config_root / "etc" / "portage", repositories)
    eroot = Path(settings["EROOT"])
    world = "".join(_read(eroot / "var" / "lib" / "portage" / f)
                    for f in ("world", "world_sets"))
    return Snapshot(name, bundle, hashlib.sha256(bundle).hexdigest(),
                    {repo: tree_state(path) for repo, path in sorted(repositories.items())},
                    settings.get("CHOST", ""), settings.get("ARCH", ""), world)


def _read(path: Path) -> str:
    try:
        return f"# {path.name}\n" + path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def make_bundle(etc_portage: Path, repositories: dict[str, Path]) -> bytes:
    """A reproducible tar of ETC_PORTAGE (host files left out) and its make.profile's place."""
    if not etc_portage.is_dir():
        raise SwarmError(f"no Portage configuration at {etc_portage} (PORTAGE_CONFIGROOT "
                         "of the scan: scan.environment)")
    manifest: dict = {"make_profile": None}
    profile = etc_portage / "make.profile"
    if profile.exists():
        target = profile.resolve()
        for repo, location in repositories.items():
            if target.is_relative_to(location.resolve()):
                manifest["make_profile"] = {
                    "repo": repo, "path": str(target.relative_to(location.resolve()))}
                break
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, sort_keys=True).encode() + b"\n")
        if profile.exists() and manifest["make_profile"] is None:
            _add_tree(tar, profile.resolve(), "make.profile")  # a profile of its own
        for path in sorted(etc_portage.iterdir()):
            if path.name not in NOT_BUNDLED and not path.name.startswith("._cfg"):
                _add_tree(tar, path, path.name)
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise SwarmError(f"{etc_portage} packs to {len(data)} bytes, more than "
                         f"{MAX_BUNDLE_BYTES}: what is in it besides Portage's configuration?")
    return data


def _add_tree(tar: tarfile.TarFile, path: Path, name: str) -> None:
    if path.is_dir():
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for child in sorted(path.iterdir()):
            if not child.name.startswith("._cfg"):
                _add_tree(tar, child, f"{name}/{child.name}")
    elif path.is_file():
        # The mode, not os.access(): root and the swarm user must pack the same bytes.
        _add_bytes(tar, name, path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    # No owner, no time: the same configuration gives the same digest anywhere.
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def tree_state(location: Path) -> str:
    """A repository's state: its timestamp.chk, else a digest of its files."""
    stamp = location / "metadata" / "timestamp.chk"
    if stamp.is_file():
        return "timestamp:" + stamp.read_text(errors="replace").strip()
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(location):
        if Path(root) == location:
            dirs[:] = [d for d in dirs if d not in _NOT_TREE]
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.is_symlink():  # as rsync -l copies it: the link, not what it names
                data = os.readlink(path).encode()
            else:
                data = path.read_bytes()
            digest.update(str(path.relative_to(location)).encode() + b"\0")
            digest.update(hashlib.sha256(data).digest())
    return "files:" + digest.hexdigest()


def local_repositories(env: dict[str, str]) -> tuple[Path, dict[str, Path]]:
    """This host's PORTAGE_CONFIGROOT and its repositories (name -> location), as ENV sees them."""
    from . import portageenv

    return _repositories(portageenv.settings(env))


def _repositories(settings) -> tuple[Path, dict[str, Path]]:
    return (Path(settings["PORTAGE_CONFIGROOT"]),
            {repo.name: Path(repo.location) for repo in settings.repositories})


def binrepos_uris(env: dict[str, str]) -> list[str]:
    """The sync-uri of each binrepos.conf entry of this host (its binhosts besides PORTAGE_BINHOST)."""
    import configparser

    from . import portageenv

    _, config_root = portageenv.roots(env)
    where = Path(config_root) / "etc" / "portage" / "binrepos.conf"
    files = sorted(where.glob("*.conf")) if where.is_dir() else [where] if where.is_file() else []
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(files)
    except configparser.Error:
        return []
    return [parser[section]["sync-uri"] for section in parser.sections()
            if "sync-uri" in parser[section]]


def tree_differences(wanted: dict[str, str], repositories: dict[str, Path]) -> list[str]:
    """How this host's repositories differ from WANTED (the scan's), one phrase a repository."""
    found = []
    for repo, state in sorted(wanted.items()):
        location = repositories.get(repo)
        if location is None:
            found.append(f"repository {repo} is missing")
        elif (mine := tree_state(location)) != state:
            found.append(f"repository {repo} is at {mine}, the scan's at {state}")
    return found


# The orchestrator's record of the last scan of each profile.

def record_scan(conn: sqlite3.Connection, config: Config, snap: Snapshot, inputs: str,
           at: str) -> None:
    """Keep the bundle (by digest) and what this scan saw (inside the caller's write)."""
    from .output import write_atomic

    path = staging.bundle_path(config, snap.digest)
    if not path.exists():
        path.parent.mkdir(mode=0o755, exist_ok=True)
        write_atomic(path, snap.bundle)
    conn.execute(
        "INSERT INTO profiles (name, digest, tree, chost, arch, inputs, scanned_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET digest = excluded.digest,"
        " tree = excluded.tree, chost = excluded.chost, arch = excluded.arch,"
        " inputs = excluded.inputs, scanned_at = excluded.scanned_at",
        (snap.name, snap.digest, json.dumps(snap.tree, sort_keys=True), snap.chost, snap.arch,
         inputs, at))


def recorded(conn: sqlite3.Connection, name: str = DEFAULT) -> dict | None:
    """The last scan's profile as a claim tells it (None: no scan ran emerge yet)."""
    row = conn.execute("SELECT * FROM profiles WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return {"name": row["name"], "digest": row["digest"], "tree": json.loads(row["tree"]),
            "chost": row["chost"], "arch": row["arch"]}


def last_inputs(conn: sqlite3.Connection, name: str = DEFAULT) -> tuple[str, str] | None:
    row = conn.execute("SELECT inputs, scanned_at FROM profiles WHERE name = ?",
                       (name,)).fetchone()
    return (row["inputs"], row["scanned_at"]) if row else None


def read_bundle(config: Config, digest: str) -> dict:
    """The bundle of DIGEST as a drone fetches it (JSON: base64 of the tar)."""
    if not DIGEST.fullmatch(digest):
        raise SwarmError(f"not a profile digest: {digest!r}")
    try:
        data = staging.bundle_path(config, digest).read_bytes()
    except FileNotFoundError:
        raise SwarmError(f"no profile bundle {digest} on the orchestrator (run swarm-fresh)") \
            from None
    return {"digest": digest, "tar": base64.b64encode(data).decode()}


# The drone's side.

def unpack(answer: dict, digest: str, cache: Path) -> Path:
    """Check a fetched bundle against its digest and keep it in CACHE; its path."""
    data = base64.b64decode(answer["tar"])
    if hashlib.sha256(data).hexdigest() != digest:
        raise SwarmError(f"the profile bundle fetched for {digest} does not match its digest")
    from .output import write_atomic

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{digest}.tar"
    write_atomic(path, data)
    return path


def assemble(bundle: Path, target: Path, repositories: dict[str, Path], own_root: Path,
             host_local: dict[str, str]) -> Path:
    """A PORTAGE_CONFIGROOT at TARGET: the bundle, this host's repositories and HOST_LOCAL values.

    HOST_LOCAL also gives this host's FEATURES, of which the HOST_FEATURES
    are kept.

    Rebuilt from scratch for every build, so nothing of an earlier profile
    (or a hand edit) survives into the next.
    """
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    etc = target / "etc" / "portage"
    etc.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(etc, filter="data")
        else:
            # Python 3.11 before 3.11.4 (Debian 12's 3.11.2) has no extraction
            # filters: a bundle holds only directories and files, inside ETC.
            for member in tar.getmembers():
                if not (member.isdir() or member.isfile()) or member.name.startswith("/") \
                        or ".." in Path(member.name).parts:
                    raise SwarmError(f"the profile bundle {bundle.name} holds {member.name!r}, "
                                     "not a file or directory of its own")
            tar.extractall(etc)
    manifest = json.loads((etc / MANIFEST).read_text())
    (etc / MANIFEST).unlink()
    if place := manifest.get("make_profile"):
        location = repositories.get(place["repo"])
        if location is None:
            raise SwarmError(f"the profile's make.profile is in repository {place['repo']}, "
                             "which this drone does not have")
        (etc / "make.profile").symlink_to(location / place["path"])
    for name in ("repos.conf", "binrepos.conf"):  # where this host's repositories are
        own = own_root / "etc" / "portage" / name
        if own.is_dir():
            shutil.copytree(own, etc / name)
        elif own.is_file():
            shutil.copy2(own, etc / name)
    lines = [f'{key}="{_escaped(host_local.get(key, ""))}"' for key in HOST_LOCAL
             if host_local.get(key) or key in ALWAYS_OWN]
    own_features = set(host_local.get("FEATURES", "").split())
    lines.append('FEATURES="${FEATURES} ' + " ".join(
        feature if feature in own_features else f"-{feature}" for feature in HOST_FEATURES) + '"')
    make_conf = etc / "make.conf"
    if make_conf.is_dir():
        make_conf = make_conf / "zz-swarm-drone.conf"
    with open(make_conf, "a") as f:
        f.write("\n# swarm-drone: this drone's own host-local settings\n" + "\n".join(lines) + "\n")
    return target


def only_binhost_from_environment(root: Path) -> None:
    """Drop this host's binrepos.conf from an assembled config root.

    For a claim whose build is for another binhost than the drone's own:
    its dependencies must come from that binhost alone (PORTAGE_BINHOST in
    the environment), and Portage prefers binrepos.conf's entries.
    """
    import shutil

    target = Path(root) / "etc" / "portage" / "binrepos.conf"
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _escaped(value: str) -> str:
    # portageq gives values expanded; written back, ${FILE} in FETCHCOMMAND
    # must stay for Portage to fill in, not be expanded to nothing.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
