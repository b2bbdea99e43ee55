"""The build profile: the Portage settings a package is built with, and the tree it is built from.

The scan's Portage configuration (its ``PORTAGE_CONFIGROOT``: make.conf,
package.use, package.accept_keywords, env/, make.profile ...) is what the
swarm publishes for, so it is what every drone builds with. swarm-fresh packs
it into a *bundle* (a reproducible tar of ``etc/portage``, named by its
sha256; only what may leave the host: :class:`_Packer`), records it with
the state of the ebuild repositories the scan read, and every claim names
both. A drone fetches the bundle once per digest and
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
import logging
import os
import re
import sqlite3
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from . import staging
from .config import Config
from .errors import SwarmError

log = logging.getLogger(__name__)

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
# What a binary is compiled with (and Portage records in it, but the
# Fortran ones). Profiles of one binhost must agree on them: Target.
COMPILER_FLAGS = ("CFLAGS", "CXXFLAGS", "LDFLAGS", "FFLAGS", "FCFLAGS")
# Top-level folders of a repository that are not its tree: what Portage's
# rsync leaves out (PORTAGE_RSYNC_OPTS), and version control.
_NOT_TREE = {".git", ".svn", "distfiles", "local", "packages"}


@dataclass(frozen=True)
class Target:
    """What a profile builds for: its CHOST, ARCH and compiler flags.

    A binhost's clients pick a build by USE, never by compiler flags (nor
    CHOST): the profiles that publish to one binhost must have one target.
    """

    chost: str
    arch: str
    flags: dict[str, str]  # COMPILER_FLAGS, spaces collapsed; {}: unknown (scanned before)

    def value(self, key: str) -> str:
        """CHOST, ARCH or one of COMPILER_FLAGS."""
        return getattr(self, key.lower()) if key in ("CHOST", "ARCH") else self.flags.get(key, "")

    def differences(self, other: Target) -> list[str]:
        """The keys whose values differ (the flags only when both are known)."""
        keys = ("CHOST", "ARCH", *(COMPILER_FLAGS if self.flags and other.flags else ()))
        return [key for key in keys if self.value(key) != other.value(key)]


def target(settings) -> Target:
    """What a portage.config builds for."""
    return Target(settings.get("CHOST", ""), settings.get("ARCH", ""),
                  {key: " ".join(settings.get(key, "").split()) for key in COMPILER_FLAGS})


def current_target(env: dict[str, str]) -> Target:
    """What Portage in ENV (a profile's scan environment) builds for now."""
    from . import portageenv

    return target(portageenv.settings(env))


@dataclass(frozen=True)
class Snapshot:
    """What one scan read: the configuration bundle and the repositories' state."""

    name: str
    bundle: bytes
    digest: str
    tree: dict[str, str]  # repository name -> state
    target: Target
    world: str  # the world file and world_sets, as read

    def inputs(self, scan_command: list[str], scan_environment: dict[str, str],
               binhost: str = "") -> str:
        """A digest of everything the scan's answer depends on (swarm-fresh --if-changed);
        BINHOST: where the profile publishes (name and URL)."""
        text = json.dumps({"digest": self.digest, "tree": self.tree, "world": self.world,
                           "command": scan_command, "environment": scan_environment,
                           "binhost": binhost}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


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
                    target(settings), world)


def _read(path: Path) -> str:
    try:
        return f"# {path.name}\n" + path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def make_bundle(etc_portage: Path, repositories: dict[str, Path]) -> bytes:
    """A reproducible tar of ETC_PORTAGE (host files left out) and its make.profile's place.

    Only what may leave the host goes in (:class:`_Packer`); what is left
    out is logged (swarm-fresh -v). Packing stops at MAX_BUNDLE_BYTES.
    """
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
    left_out: list[tuple[str, str]] = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, sort_keys=True).encode() + b"\n")
        if profile.exists() and manifest["make_profile"] is None:
            # A profile of its own: Portage follows this link, so the bundle
            # does, under the same rules with the profile as the root.
            own = profile.resolve()
            _Packer(tar, buffer, own, profile, left_out).add(own, "make.profile")
        packer = _Packer(tar, buffer, etc_portage.resolve(), etc_portage, left_out)
        for name in packer.listing(packer.root, ""):
            if name not in NOT_BUNDLED:
                packer.add(packer.root / name, name, (packer.root,))
    for name, why in left_out:
        # Left out by its name (a dot-file, a backup, keys): said with -v.
        # Left out for its link or its mode: Portage here may read it, and
        # drones build without it: said always.
        if why.startswith(_BY_NAME):
            log.info("left out of the build profile: %s: %s", name, why)
        else:
            log.warning("left out of the build profile (drones build without it): %s: %s",
                        name, why)
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:  # (the tar's end: it pads to whole records)
        raise SwarmError(f"{etc_portage} packs to {len(data)} bytes, more than "
                         f"{MAX_BUNDLE_BYTES}: what is in it besides Portage's configuration?")
    return data


# Editors' and merge tools' leftovers: an old make.conf may hold what the
# new one no longer does. (Dot-files, such as vim's .swp and Portage's
# ._cfg0000_ updates, are left out as dot-files.)
_BACKUP_SUFFIXES = ("~", ".bak", ".orig", ".rej", ".swp")
_BY_NAME = ("a dot-file", "an editor backup", "keys (gnupg)")  # why, by a name alone


def _unbundled(name: str) -> str | None:
    """Why a file or folder of this NAME stays on the host (None: it may go)."""
    if name.startswith("."):
        return _BY_NAME[0]  # .git, .svn, ._cfg0000_*: Portage skips them too
    if name.endswith(_BACKUP_SUFFIXES) or (len(name) > 1 and name[0] == name[-1] == "#"):
        return _BY_NAME[1]
    if name == "gnupg":
        return _BY_NAME[2]
    return None


class _Packer:
    """Puts a tree into a bundle: what may leave the host, within MAX_BUNDLE_BYTES.

    Every drone gets the bundle, so nothing goes that the host keeps to
    itself: no link out of ROOT (the configuration root; a link inside it
    is followed, its target named by the link's name), no dot-file, editor
    backup or gnupg folder, no file others cannot read (its mode: root and
    the swarm user must pack the same bytes) and no folder they cannot
    enter. The size is checked before each read, so a huge tree costs at
    most MAX_BUNDLE_BYTES of memory and stops at the first file past it.
    """

    def __init__(self, tar: tarfile.TarFile, buffer: io.BytesIO, root: Path, shown: Path,
                 left_out: list[tuple[str, str]]):
        self.tar, self.buffer, self.root, self.shown = tar, buffer, root, shown
        self.left_out = left_out  # (path as the admin sees it, why)

    def add(self, path: Path, name: str, ancestors: tuple[Path, ...] = ()) -> None:
        """PATH (a real folder's entry) as NAME in the bundle, or why not in left_out."""
        why = _unbundled(path.name)
        if why is None and path.is_symlink():
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(self.root):
                why = f"a link out of the configuration root (to {target})"
            else:
                why, path = self._inside(target), target
        if why is None:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                why = "a link to nothing"
            else:
                why = self._put(path, name, info, ancestors)
        if why is not None:
            self.left_out.append((self._shown(name), why))

    def _put(self, path: Path, name: str, info: os.stat_result,
             ancestors: tuple[Path, ...]) -> str | None:
        if stat.S_ISDIR(info.st_mode):
            if (info.st_mode & 0o005) != 0o005:
                return f"a folder others cannot read (mode {stat.S_IMODE(info.st_mode):04o})"
            if path in ancestors:
                return "a link to a folder it is in (a loop)"
            self._room(name, 0)
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(entry)
            for child in self.listing(path, name):
                self.add(path / child, f"{name}/{child}", (*ancestors, path))
            return None
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if not info.st_mode & stat.S_IROTH:
            return f"not readable by others (mode {stat.S_IMODE(info.st_mode):04o})"
        room = self._room(name, info.st_size)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                return "replaced while it was read"
            data = f.read(room + 1)  # a file that grew meanwhile stops at the limit too
        self._room(name, len(data))
        _add_bytes(self.tar, name, data, 0o755 if info.st_mode & 0o111 else 0o644)
        return None

    def _inside(self, target: Path) -> str | None:
        """Why a link's TARGET inside the root stays home: a name or folder on its way."""
        place = self.root
        for part in target.relative_to(self.root).parts:
            if why := _unbundled(part):
                return f"a link to {why} ({target})"
            mode = os.stat(place).st_mode
            if place != self.root and (mode & 0o005) != 0o005:
                return f"a link into a folder others cannot read ({place})"
            place = place / part
        return None

    def listing(self, path: Path, name: str) -> list[str]:
        """The entries of folder PATH, sorted; a folder too big to pack stops here."""
        found = []
        with os.scandir(path) as entries:
            for entry in entries:
                found.append(entry.name)
                if len(found) * tarfile.BLOCKSIZE > MAX_BUNDLE_BYTES:
                    self._room(f"{name}/" if name else "", MAX_BUNDLE_BYTES)
        return sorted(found)

    def _room(self, name: str, size: int) -> int:
        """Bytes left for NAME's contents after its header; SwarmError if SIZE is more."""
        room = MAX_BUNDLE_BYTES - self.buffer.tell() - 2 * tarfile.BLOCKSIZE
        if size > room:
            raise SwarmError(f"{self._shown(name)}: the build profile would be larger than "
                             f"{MAX_BUNDLE_BYTES >> 20} MiB with it: what is it besides "
                             "Portage's configuration?")
        return room

    def _shown(self, name: str) -> str:
        # The path as the admin knows it: under the configuration root, by
        # its name in the bundle (make.profile/... for a profile of its own).
        if name == "make.profile" or name.startswith("make.profile/"):
            return str(self.shown.parent / name)
        return f"{self.shown}/{name}" if name else str(self.shown)


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
    """Keep the bundle (by digest) and what this scan saw (inside the caller's write).

    The bundle is the swarm user's alone (0600, in a 0700 folder): drones
    get it through the gateway, which runs as that user.
    """
    from .output import write_atomic

    path = staging.bundle_path(config, snap.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)  # (made 0755 before)
    if path.exists():
        os.chmod(path, 0o600)
    else:
        write_atomic(path, snap.bundle, mode=0o600)
    conn.execute(
        "INSERT INTO profiles (name, digest, tree, chost, arch, flags, inputs, scanned_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
        " digest = excluded.digest, tree = excluded.tree, chost = excluded.chost,"
        " arch = excluded.arch, flags = excluded.flags, inputs = excluded.inputs,"
        " scanned_at = excluded.scanned_at",
        (snap.name, snap.digest, json.dumps(snap.tree, sort_keys=True), snap.target.chost,
         snap.target.arch, json.dumps(snap.target.flags, sort_keys=True), inputs, at))


def recorded(conn: sqlite3.Connection, name: str = DEFAULT) -> dict | None:
    """The last scan's profile as a claim tells it (None: no scan ran emerge yet)."""
    row = conn.execute("SELECT * FROM profiles WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    return {"name": row["name"], "digest": row["digest"], "tree": json.loads(row["tree"]),
            "chost": row["chost"], "arch": row["arch"], "flags": json.loads(row["flags"])}


def recorded_targets(conn: sqlite3.Connection) -> dict[str, Target]:
    """Each recorded profile's target, as its last scan saw it."""
    return {row["name"]: Target(row["chost"], row["arch"], json.loads(row["flags"]))
            for row in conn.execute("SELECT name, chost, arch, flags FROM profiles")}


def last_inputs(conn: sqlite3.Connection, name: str = DEFAULT) -> tuple[str, str] | None:
    row = conn.execute("SELECT inputs, scanned_at FROM profiles WHERE name = ?",
                       (name,)).fetchone()
    return (row["inputs"], row["scanned_at"]) if row else None


def in_use(conn: sqlite3.Connection, config: Config) -> set[str]:
    """The digests of the bundles the config's profiles build with now (their last scan's)."""
    names = config.profile_names()
    return {row[0] for row in conn.execute(
        f"SELECT digest FROM profiles WHERE name IN ({', '.join('?' * len(names))})", names)}


def prune_bundles(conn: sqlite3.Connection, config: Config) -> list[str]:
    """Delete the kept bundles no profile builds with now (after a scan recorded its own);
    the digests deleted."""
    keep = in_use(conn, config)
    folder = staging.bundle_dir(config)
    gone = []
    for path in sorted(folder.glob("*.tar")) if folder.is_dir() else []:
        if path.stem not in keep:
            path.unlink(missing_ok=True)
            gone.append(path.stem)
    return gone


def read_bundle(conn: sqlite3.Connection, config: Config, digest: str) -> dict:
    """The bundle of DIGEST as a drone fetches it (JSON: base64 of the tar), if a profile
    of the config builds with it now."""
    if not DIGEST.fullmatch(digest):
        raise SwarmError(f"not a profile digest: {digest!r}")
    if digest not in in_use(conn, config):
        # An old bundle may hold what its profile no longer does (a secret
        # taken out since): only what a claim can name now is served.
        raise SwarmError(f"no profile bundle {digest}: no profile builds with it now (a drone "
                         "fetches the one its claim names)")
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
