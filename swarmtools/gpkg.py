"""Binary packages: their file names, digests, verification and signing.

One grammar for binary-package file names (:func:`parse_name`), shared by
the drone (which finds what emerge wrote), the queue (which checks what a
drone reports) and the publisher (which allocates names on the binhost).
The checks read a gpkg as a stream: a drone decides what is in the file,
so nothing in it is read whole into memory.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SwarmError

# Portage's names: PF-BUILD_ID.gpkg.tar with binpkg-multi-instance (the
# default), PF.gpkg.tar or PF.tbz2 (xpak) without.
EXTENSIONS = (".gpkg.tar", ".xpak", ".tbz2")
_NAME = re.compile(r"^(?P<pf>.+?)(?:-(?P<build_id>\d+))?(?P<ext>\.gpkg\.tar|\.xpak|\.tbz2)$")
# Fixed order: the Manifest lists its hashes in an order that changes from
# run to run (Portage keeps them in a set), a report must not.
_MANIFEST_HASHES = {"BLAKE2B": hashlib.blake2b, "SHA512": hashlib.sha512}
MAX_MANIFEST_LINE = 4096   # a DATA line names one member and a few hashes
MAX_MANIFEST_BYTES = 1 << 20  # a gpkg's Manifest lists a handful of members
MAX_MEMBERS = 64
MAX_METADATA_BYTES = 16 << 20  # compressed metadata: ebuild, environment, a few variables


@dataclass(frozen=True)
class BinpkgName:
    """A binary package's file name, split."""

    pf: str
    build_id: int | None
    ext: str


def parse_name(name: str) -> BinpkgName | None:
    """Split PF-BUILD_ID.gpkg.tar (or .xpak, .tbz2); None if it is not such a name."""
    match = _NAME.match(name)
    if not match:
        return None
    build_id = match.group("build_id")
    return BinpkgName(match.group("pf"), int(build_id) if build_id else None, match.group("ext"))


def name_for(pf: str, build_id: int) -> str:
    """The file name of build BUILD_ID of PF on the binhost."""
    return f"{pf}-{build_id}.gpkg.tar"


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in blocks."""
    size, digests = file_hashes(path, ("sha256",))
    return size, digests["sha256"]


def file_hashes(path: Path, names: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    """Size and hex digests of a file by hashlib NAMES, read once in blocks."""
    hashes, size = {name: hashlib.new(name) for name in names}, 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            for h in hashes.values():
                h.update(block)
            size += len(block)
    return size, {name: h.hexdigest() for name, h in hashes.items()}


def verify(path: Path, cpv: str, settings) -> dict[str, str]:
    """Raise SwarmError unless PATH is a complete gpkg of CPV; return its metadata.

    Complete: one directory of plain files, gpkg-1 and a Manifest, every
    member listed in the Manifest with its size and hashes, no member
    unlisted but signatures. SETTINGS is the binhost's portage.config.
    """
    try:
        with tarfile.open(path, "r:") as container:
            members = container.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            if len(tops) != 1 or any(not m.isfile() or "/" not in m.name for m in members):
                raise SwarmError(f"{path.name}: not a gpkg (one directory of plain files)")
            top = tops.pop()
            files = {m.name.split("/", 1)[1]: m for m in members}
            if "gpkg-1" not in files or "Manifest" not in files:
                raise SwarmError(f"{path.name}: not a gpkg (gpkg-1 or Manifest missing)")
            # Portage's own reader takes the Manifest whole: bound it first.
            if files["Manifest"].size > MAX_MANIFEST_BYTES or len(files) > MAX_MEMBERS:
                raise SwarmError(f"{path.name}: a Manifest of {files['Manifest'].size} bytes and "
                                 f"{len(files)} members is not a gpkg's (a handful of members)")
            listed = _check_manifest(container, files, path.name)
            unlisted = set(files) - listed - {"Manifest"}
            if any(not name.endswith(".sig") for name in unlisted):
                raise SwarmError(f"{path.name}: files not in its Manifest: {sorted(unlisted)}")
            metadata_member = next((m for n, m in files.items() if n.startswith("metadata.tar")),
                                   None)
            if metadata_member is None or metadata_member.size > MAX_METADATA_BYTES:
                raise SwarmError(f"{path.name}: no metadata archive of a sane size")
    except (tarfile.TarError, EOFError, UnicodeDecodeError) as exc:
        raise SwarmError(f"{path.name}: unreadable gpkg ({exc})") from None
    metadata = read_metadata(path, top, settings)
    found = f"{metadata.get('CATEGORY', '')}/{metadata.get('PF', '')}"
    if found != cpv:
        raise SwarmError(f"{path.name}: holds {found}, but {cpv} was reported")
    return metadata


def _check_manifest(container: tarfile.TarFile, files: dict, name: str) -> set[str]:
    listed = set()
    manifest = container.extractfile(files["Manifest"])
    while line := manifest.readline(MAX_MANIFEST_LINE + 1):
        if len(line) > MAX_MANIFEST_LINE:
            raise SwarmError(f"{name}: Manifest line longer than {MAX_MANIFEST_LINE} bytes")
        words = line.decode().split()
        if not words or words[0] != "DATA":
            continue
        if len(words) < 5 or not words[2].isdigit():
            raise SwarmError(f"{name}: malformed Manifest line {line[:200]!r}")
        member, size = words[1], int(words[2])
        hashes = dict(zip(words[3::2], words[4::2]))
        if member not in files or files[member].size != size:
            raise SwarmError(f"{name}: {member} does not match the size in its Manifest")
        if member in listed:
            raise SwarmError(f"{name}: {member} is listed twice in its Manifest")
        known = [h for h in _MANIFEST_HASHES if h in hashes]
        if not known:
            raise SwarmError(f"{name}: no known hash for {member} in its Manifest")
        digests = {h: _MANIFEST_HASHES[h]() for h in known}
        data = container.extractfile(files[member])
        while block := data.read(1 << 20):
            for digest in digests.values():
                digest.update(block)
        wrong = [h for h in known if digests[h].hexdigest() != hashes[h]]
        if wrong:
            raise SwarmError(f"{name}: {member} does not match its Manifest ({', '.join(wrong)})")
        listed.add(member)
    return listed


# Metadata the publisher compares with what the queue asked for.
IDENTITY_KEYS = ("CATEGORY", "PF", "SLOT", "USE", "IUSE", "repository", "CHOST", "BUILD_ID",
                 "CFLAGS", "CXXFLAGS", "LDFLAGS")


def read_metadata(path: Path, basename: str, settings,
                  keys: tuple[str, ...] = IDENTITY_KEYS) -> dict[str, str]:
    """Metadata of a gpkg, read by Portage's own gpkg code (any compression)."""
    import portage.gpkg

    metadata = portage.gpkg.gpkg(settings, basename, str(path)).get_metadata(list(keys))
    return {k: v.decode(errors="replace").strip() if isinstance(v, bytes) else str(v).strip()
            for k, v in metadata.items() if v is not None}


def sign(path: Path, settings) -> None:
    """Sign a gpkg in place with Portage's own code (as gpkg-sign --allow-unsigned)."""
    import portage.exception
    import portage.gpkg

    package = portage.gpkg.gpkg(settings, gpkg_file=str(path))
    package.request_signature = False  # the drone's build is unsigned
    try:
        package.update_signature()
    except (portage.exception.PortageException, OSError) as exc:
        raise SwarmError(f"cannot sign {path.name} with binhost.gpg_key: {exc}") from None


def verify_signature(path: Path, settings) -> None:
    """Raise SwarmError unless PATH's Manifest and members carry valid signatures.

    Portage's own check, as a verifying client makes it (SETTINGS: the
    binhost's portage.config, whose GnuPG home trusts the signing key). The
    image is not hashed again here: the caller checks the whole file's digest.
    """
    import portage.exception
    import portage.gpkg

    package = portage.gpkg.gpkg(settings, gpkg_file=str(path), verify_signature=True)
    try:
        package._verify_binpkg(metadata_only=True)
    except (portage.exception.PortageException, OSError) as exc:
        raise SwarmError(f"{path.name}: signature not valid ({type(exc).__name__}: {exc})") from None
