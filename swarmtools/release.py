"""Releases: dated, immutable snapshots of the binhost that clients pin (swarm-release).

Under binhost.releases_path, on the binhost's filesystem:

  NAME/                  a release: hardlinks of the published files (no
                         copies) as CATEGORY/FILE, Packages and Packages.gz
                         written by Portage's index code, release.json
  .views/CHANNEL.N/      what a channel serves: the release's index with a
                         fresh TIMESTAMP, view.json, and a symlink a category
                         into ../../NAME/
  CHANNEL -> .views/CHANNEL.N    swapped with one rename()
  latest -> the live binhost

Why views and not a symlink to the release itself: a client that cached a
newer index asks with If-Modified-Since; pointing a channel back at an
older release (a rollback) must still look newer to it, or the web server
answers 304 and the client keeps the index it had. A client that is
fetching while a channel moves gets the old view's files or the new one's,
never another file under a known name: binhost names are never reused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

from . import clock, db, gpkg, identity, staging
from .binhost import CLIENT_TOLERANCE, Index, portage_config, read_index
from .config import DEFAULT, Config
from .crashpoints import crashpoint
from .errors import ExitCode, SwarmError
from .output import fsync_path, write_atomic

HOOK_VARIABLE = "SWARM_RELEASE_TEST_HOOK"  # "STEP:kill" or "STEP:pause=SECONDS", tests only
RELEASE_NAME = re.compile(r"[0-9][0-9A-Za-z._-]*")   # dates: 2026.12.05, 2026.12.05.1
CHANNEL_NAME = re.compile(r"[a-z][a-z0-9_-]*")      # stable, testing, latest
LIVE = "latest"                                     # the channel that is the binhost itself
VIEWS = ".views"
DIGESTS = {"SHA1": "sha1", "MD5": "md5"}  # what Portage's index lists: hashlib's names
PROFILE = "default"  # releases are of [binhost], the binhost named default
RELEASE_FILES = ("release.json", "Packages", "Packages.gz")  # beside the CATEGORY/FILE it lists
# A promote verifies every file (minutes for a big release): a second command waits for it.
LOCK_WAIT_SECONDS = 600


def root(config: Config) -> Path:
    return Path(config.binhost.releases_path)


def lock_file(config: Config) -> Path:
    """The lock promote, rollback and prune take: one moves channels or removes releases at a time."""
    return config.state_dir / "swarm-release.lock"


def _one_at_a_time(config: Config, wait: float):
    # A second promote would build its view under the same name; a prune would
    # remove the release a promote is about to point a channel at.
    return db.run_lock(lock_file(config), config.database,
                       "swarm-release promote, rollback or prune", timeout=wait)


def url(config: Config) -> str:
    """Where clients reach the releases and channels (default: 'releases' beside the binhost)."""
    from urllib.parse import urlsplit, urlunsplit

    if config.binhost.releases_url:
        return config.binhost.releases_url.rstrip("/")
    parts = urlsplit(config.binhost.url)
    parent = parts.path.rstrip("/").rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{parent}/releases", "", ""))


def releases(config: Config) -> list[dict]:
    """Every release's release.json, oldest first."""
    found = []
    base = root(config)
    for path in sorted(base.iterdir()) if base.is_dir() else ():
        if path.is_dir() and not path.is_symlink() and RELEASE_NAME.fullmatch(path.name):
            try:
                found.append(json.loads((path / "release.json").read_text()))
            except (OSError, ValueError):
                continue  # not a release (yet): a create stopped before its rename
    return sorted(found, key=lambda r: (r["at"], r["name"]))


def channels(config: Config, now: datetime) -> list[dict]:
    """Each channel: the release it serves now (LIVE: the binhost), since when, how long."""
    base = root(config)
    found = []
    for path in sorted(base.iterdir()) if base.is_dir() else ():
        if not (path.is_symlink() and CHANNEL_NAME.fullmatch(path.name)):
            continue
        if path.name == LIVE:
            found.append({"channel": LIVE, "release": None, "since": None, "age_seconds": None})
            continue
        try:
            view = json.loads((path / "view.json").read_text())
        except (OSError, ValueError):
            continue
        found.append({"channel": path.name, "release": view["release"], "since": view["at"],
                      "age_seconds": clock.age(view["at"], now)})
    return found


def current(config: Config, channel: str) -> str | None:
    """The release CHANNEL serves now, as its link says (what clients get)."""
    try:
        return json.loads((root(config) / channel / "view.json").read_text())["release"]
    except (OSError, ValueError):
        return None


# --- create ------------------------------------------------------------------

def create(config: Config, conn: sqlite3.Connection, now: datetime, name: str | None = None,
           if_changed: bool = False, wait: float = 600) -> dict | None:
    """Freeze the binhost as release NAME (default: today's date, .N when taken).

    Under swarm-sync's lock, so no publication runs meanwhile. With
    IF_CHANGED, None when the newest release holds exactly what the binhost
    lists now.
    """
    if name is not None:
        _check_name(name, RELEASE_NAME, "a release name must start with a digit (2026.12.05)")
    base = root(config)
    binhost = Path(config.binhost.path)
    with db.run_lock(staging.sync_lock(config), config.database, "swarm-sync", timeout=wait):
        index = read_index(binhost)
        if index is None or not index.entries:
            raise SwarmError(f"nothing is published on {binhost} yet: no release to make")
        digest = index_digest(index)
        made = releases(config)
        if if_changed and made and made[-1]["index_digest"] == digest:
            return None
        name = name or _next_name(base, now)
        if (base / name).exists():
            raise SwarmError(f"release {name} exists already; releases never change")
        base.mkdir(parents=True, exist_ok=True)
        _ensure_live_link(base, binhost)
        work = base / f".{name}.tmp"
        shutil.rmtree(work, ignore_errors=True)  # a create killed before its rename
        work.mkdir()
        entries, size = _link_files(index, binhost, work, base)
        crashpoint(HOOK_VARIABLE, "linked")
        write_index(work, Index(index.header, entries))
        info = {"name": name, "profile": PROFILE, "at": clock.iso(now),
                "packages": len(index.entries), "bytes": size, "index_digest": digest,
                "signed": bool(config.binhost.gpg_key), "scan": _last_scan(conn),
                "queue": _identities(conn, index)}
        (work / "release.json").write_text(json.dumps(info, sort_keys=True) + "\n")
        _sync_tree(work)
        crashpoint(HOOK_VARIABLE, "written")
        os.rename(work, base / name)
        fsync_path(base)
    return info


def _link_files(index: Index, binhost: Path, work: Path, base: Path) -> tuple[list[dict], int]:
    """Hardlink every file the index lists into WORK; the release's entries and bytes."""
    size = 0
    entries = []
    for entry in index.entries:
        # CATEGORY/FILE: names are unique in a category (PF and a build id),
        # and a directory a category, not a package, keeps a release small.
        flat = f"{entry['PATH'].split('/')[0]}/{Path(entry['PATH']).name}"
        target = work / flat
        target.parent.mkdir(exist_ok=True)
        entries.append({**entry, "PATH": flat})
        try:
            os.link(binhost / entry["PATH"], target)
        except FileNotFoundError:
            raise SwarmError(f"{entry['PATH']} is listed in the binhost's index but not on "
                             "disk; run swarm-sync first") from None
        except OSError as exc:
            if exc.errno == 18:  # EXDEV
                raise SwarmError(f"binhost.releases_path {base} is on another filesystem "
                                 f"than binhost.path {binhost}: releases are hardlinks "
                                 "(no copies), so it must be on the same one") from None
            raise
        size += int(entry.get("SIZE", 0) or 0)
    return entries, size


def index_digest(index: Index) -> str:
    """What an index lists, as one digest: the same files, the same digest."""
    lines = sorted(f"{e['PATH']} {e.get('SIZE', '')} {e.get('SHA1', e.get('MD5', ''))}"
                   for e in index.entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def write_index(directory: Path, index: Index, timestamp: int | None = None) -> None:
    """Packages and Packages.gz in DIRECTORY by Portage's index code (temporary names, rename)."""
    from portage.getbinpkg import PackageIndex

    out = PackageIndex()
    out.header.update(index.header)
    if timestamp is not None:
        out.header["TIMESTAMP"] = str(timestamp)
    out.packages.extend(dict(e) for e in index.entries)
    out.header["PACKAGES"] = str(len(out.packages))
    text = io.StringIO()
    out.write(text)
    data = text.getvalue().encode()
    for name, payload in (("Packages.gz", gzip.compress(data, mtime=0)), ("Packages", data)):
        write_atomic(directory / name, payload, mtime=timestamp)


def _identities(conn: sqlite3.Connection, index: Index) -> list[dict]:
    """The queue's identity of each package the release holds (when the queue has it)."""
    listed = {e["CPV"]: e for e in index.entries}
    rows = conn.execute("SELECT cpv, slot, subslot, repo, use, build_id FROM packages"
                        " WHERE active = 1 AND binhost = ? ORDER BY cpv, id", (DEFAULT,)).fetchall()
    return [dict(row) for row in rows if row["cpv"] in listed]


def _last_scan(conn: sqlite3.Connection) -> dict | None:
    row = conn.execute("SELECT id, at, source FROM scans ORDER BY id DESC LIMIT 1").fetchone()
    return dict(row) if row else None


def _next_name(base: Path, now: datetime) -> str:
    day = now.strftime("%Y.%m.%d")
    if not (base / day).exists():
        return day
    n = 1
    while (base / f"{day}.{n}").exists():
        n += 1
    return f"{day}.{n}"


def _ensure_live_link(base: Path, binhost: Path) -> None:
    link = base / LIVE
    if not link.is_symlink():
        os.symlink(os.path.relpath(binhost, base), link)


# --- verify, promote, rollback ----------------------------------------------

def verify(config: Config, conn: sqlite3.Connection, name: str) -> list[str]:
    """What is wrong with release NAME, one line a problem (none: clients may have it).

    Every index entry's file present with the size and digests the index
    lists, signatures valid when binhost.gpg_key is set, and no package the
    queue wants under the same CPV with another identity (USE, slot,
    repository, CHOST): Portage would not install it for the profile. The
    tree holds nothing else: no link (a web server that follows links would
    serve what it points at through the channel), no file the index does
    not list.
    """
    path = release_path(config, name)
    try:
        index = read_index(path)
    except SwarmError as exc:
        return [str(exc)]
    if index is None:
        return [f"{name} has no Packages index"]
    problems = []
    settings = portage_config(config)  # the profile's: its CHOST, its signing key's home
    # Releases are of [binhost]: its builds, several a CPV when profiles want other USE.
    queue: dict[str, list] = {}
    for row in conn.execute("SELECT cpv, slot, subslot, repo, use FROM packages"
                            " WHERE active = 1 AND binhost = ? ORDER BY id", (DEFAULT,)):
        queue.setdefault(row["cpv"], []).append(row)
    chost = settings.get("CHOST")
    hidden = identity.hidden_prefixes(settings)
    flat = {entry["PATH"] for entry in index.entries if _is_flat(entry["PATH"])}
    problems.extend(_strays(path, flat))
    for entry in index.entries:
        file = path / entry["PATH"]
        if entry["PATH"] not in flat:
            problems.append(f"{entry['PATH']}: not CATEGORY/FILE inside the release")
            continue
        if file.is_symlink() or file.parent.is_symlink():
            continue  # named among the links
        if not file.is_file():
            problems.append(f"{entry['PATH']}: missing")
            continue
        if "SIZE" in entry and file.stat().st_size != int(entry["SIZE"]):
            problems.append(f"{entry['PATH']}: {file.stat().st_size} bytes, the index says "
                            f"{entry['SIZE']}")
            continue
        wrong = _wrong_digests(file, entry)
        if wrong:
            problems.append(f"{entry['PATH']}: {', '.join(wrong)} differ from the index")
            continue
        if config.binhost.gpg_key:
            try:
                gpkg.verify_signature(file, settings)
            except SwarmError as exc:
                problems.append(str(exc))
        found = [identity.differences(queued, {"CHOST": index.header.get("CHOST", ""), **entry},
                                      chost, hidden) for queued in queue.get(entry["CPV"], [])]
        if found and all(found):
            problems.append(f"{entry['CPV']}: not the queue's build: " + "; ".join(found[0]))
    return problems


def _is_flat(path: str) -> bool:
    """PATH is CATEGORY/FILE, as create writes it: nothing above or beside the release."""
    parts = path.split("/")
    return len(parts) == 2 and all(part not in ("", ".", "..") for part in parts)


def _strays(release: Path, listed: set[str]) -> list[str]:
    """Every link in RELEASE, and every file or directory its index does not list."""
    known = {*RELEASE_FILES, *listed, *(p.split("/")[0] for p in listed)}
    problems = []
    for top, dirs, files in os.walk(release):  # a link to a directory is listed, never entered
        for name in sorted(dirs + files):
            found = os.path.join(top, name)
            relative = os.path.relpath(found, release)
            if os.path.islink(found):
                problems.append(f"{relative}: a link to {os.readlink(found)}; a release holds "
                                "only the files its index lists")
            elif relative not in known:
                problems.append(f"{relative}: not in the index")
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(top, d), release) in known
                   and not os.path.islink(os.path.join(top, d))]
    return problems


def _wrong_digests(file: Path, entry: dict) -> list[str]:
    known = [name for name in DIGESTS if name in entry]
    if not known:
        return ["no digest in the index"]
    _, digests = gpkg.file_hashes(file, tuple(DIGESTS[name] for name in known))
    return [name for name in known if digests[DIGESTS[name]] != entry[name]]


def promote(config: Config, conn: sqlite3.Connection, name: str, channel: str, now: datetime,
            actor: str, wait: float = LOCK_WAIT_SECONDS) -> dict:
    """Point CHANNEL at release NAME once it verifies; SwarmError with the problems if not.

    Waits up to WAIT seconds for another promote, rollback or prune (TryLater after).
    """
    _check_channel(channel)
    with _one_at_a_time(config, wait):
        return _promote(config, conn, name, channel, now, actor)


def _promote(config: Config, conn: sqlite3.Connection, name: str, channel: str, now: datetime,
             actor: str) -> dict:
    problems = verify(config, conn, name)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                           if len(problems) > 5 else "")
        raise SwarmError(f"release {name} is not promoted to {channel}: {shown}",
                         ExitCode.FAILED)
    crashpoint(HOOK_VARIABLE, "verified")
    return _point(config, conn, channel, name, "promote", now, actor)


def rollback(config: Config, conn: sqlite3.Connection, channel: str, now: datetime,
             actor: str, wait: float = LOCK_WAIT_SECONDS) -> dict:
    """Point CHANNEL back at the release it served before the current one (waits as promote)."""
    _check_channel(channel)
    with _one_at_a_time(config, wait):
        return _rollback(config, conn, channel, now, actor)


def _rollback(config: Config, conn: sqlite3.Connection, channel: str, now: datetime,
              actor: str) -> dict:
    stack = _stack(conn, channel, current(config, channel))
    if len(stack) < 2:
        raise SwarmError(f"channel {channel} has no earlier release to go back to",
                         ExitCode.FAILED)
    target = stack[-2]
    problems = verify(config, conn, target)
    if problems:
        raise SwarmError(f"the earlier release {target} does not verify: {'; '.join(problems[:5])}",
                         ExitCode.FAILED)
    return _point(config, conn, channel, target, "rollback", now, actor)


def _stack(conn: sqlite3.Connection, channel: str, actual: str | None) -> list[str]:
    """The channel's releases, the current last: promotions push, rollbacks pop.

    The link is the truth (clients follow it): a promotion killed after its
    rename but before its record is found there.
    """
    stack: list[str] = []
    for release, action in conn.execute(
            "SELECT release, action FROM channel_moves WHERE channel = ? ORDER BY id", (channel,)):
        if action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != release:
                stack.append(release)
        elif not stack or stack[-1] != release:
            stack.append(release)
    if actual is not None and (not stack or stack[-1] != actual):
        stack.append(actual)
    return stack


def _point(config: Config, conn: sqlite3.Connection, channel: str, name: str, action: str,
           now: datetime, actor: str) -> dict:
    base = root(config)
    release = release_path(config, name)
    before = current(config, channel)
    if before is not None and _stack(conn, channel, None)[-1:] != [before]:
        _record(conn, channel, before, "found", now, actor)  # a move killed before its record
    # A client that cached the old view's index asks If-Modified-Since its
    # TIMESTAMP + CLIENT_TOLERANCE: the new view is stamped later than that,
    # a few seconds ahead of the clock if channels move that fast.
    stamp = max(int(now.timestamp()), _view_timestamp(base / channel) + CLIENT_TOLERANCE + 1)
    views = base / VIEWS
    views.mkdir(exist_ok=True)
    _drop_temporaries(base, channel)
    view = views / f"{channel}.{stamp}"
    work = views / f".{channel}.{stamp}.{os.getpid()}.tmp"
    work.mkdir()
    for category in sorted(p.name for p in release.iterdir() if p.is_dir()):
        os.symlink(os.path.join("..", "..", name, category), work / category)
    index = read_index(release)
    write_index(work, index, timestamp=stamp)
    (work / "view.json").write_text(json.dumps(
        {"channel": channel, "release": name, "at": clock.iso(now), "action": action}) + "\n")
    _sync_tree(work)
    shutil.rmtree(view, ignore_errors=True)
    os.rename(work, view)
    crashpoint(HOOK_VARIABLE, "viewed")
    link = base / f".{channel}.{os.getpid()}.link.tmp"
    os.symlink(os.path.join(VIEWS, view.name), link)
    crashpoint(HOOK_VARIABLE, "linked")
    os.replace(link, base / channel)  # the one step clients see: old view or new, whole
    fsync_path(base)
    crashpoint(HOOK_VARIABLE, "swapped")
    _record(conn, channel, name, action, now, actor)
    _drop_old_views(views, channel)
    return {"channel": channel, "release": name, "previous": before, "action": action,
            "at": clock.iso(now)}


def _drop_temporaries(base: Path, channel: str) -> None:
    """Remove what a killed move of CHANNEL left (under the lock: no other move is running)."""
    for work in (base / VIEWS).glob(f".{channel}.*.tmp"):
        shutil.rmtree(work)
    for link in base.glob(f".{channel}.*.link.tmp"):
        link.unlink()


def _drop_old_views(views: Path, channel: str) -> None:
    """Remove this channel's views but the newest two (the current one, and the one a
    client that started fetching before the swap may still be reading)."""
    mine = sorted((p for p in views.iterdir() if p.name.startswith(f"{channel}.")
                   and p.name[len(channel) + 1:].isdigit()),
                  key=lambda p: int(p.name[len(channel) + 1:]))
    for old in mine[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _view_timestamp(link: Path) -> int:
    try:
        return int(read_index(link).header.get("TIMESTAMP", 0)) if link.exists() else 0
    except (SwarmError, ValueError, AttributeError):
        return 0


def _record(conn: sqlite3.Connection, channel: str, release: str, action: str, now: datetime,
            actor: str) -> None:
    with db.write(conn):
        conn.execute("INSERT INTO channel_moves (channel, release, action, at, actor)"
                     " VALUES (?, ?, ?, ?, ?)", (channel, release, action, clock.iso(now), actor))


# --- diff, prune ------------------------------------------------------------------

def diff(config: Config, a: str, b: str) -> list[dict]:
    """What changed from release A to release B, a package (CATEGORY/PN and SLOT) a line."""
    from portage.versions import cpv_getkey, cpv_getversion, vercmp

    def packages(name):
        index = read_index(release_path(config, name))
        return {(cpv_getkey(e["CPV"]), e.get("SLOT", "0").split("/")[0]): e
                for e in (index.entries if index else ())}
    old, new = packages(a), packages(b)
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        cp, slot = key
        if before is None:
            change, why = "added", ""
        elif after is None:
            change, why = "removed", ""
        elif before["CPV"] != after["CPV"]:
            order = vercmp(cpv_getversion(after["CPV"]), cpv_getversion(before["CPV"]))
            change, why = ("upgraded" if order > 0 else "downgraded"), ""
        elif before["PATH"] != after["PATH"]:
            change, why = "rebuilt", _rebuild_reason(before, after)
        else:
            continue
        changes.append({"change": change, "cp": cp, "slot": slot,
                        "from": before["CPV"] if before else None,
                        "to": after["CPV"] if after else None,
                        "from_build": _build_id(before), "to_build": _build_id(after), "why": why})
    return changes


def _build_id(entry: dict | None) -> str | None:
    # The file's name has the build id the binhost gave it (never reused); the
    # BUILD_ID inside is the drone's.
    parsed = gpkg.parse_name(Path(entry["PATH"]).name) if entry else None
    return str(parsed.build_id) if parsed and parsed.build_id is not None else None


def _rebuild_reason(before: dict, after: dict) -> str:
    reasons = []
    old_use, new_use = set(before.get("USE", "").split()), set(after.get("USE", "").split())
    if old_use != new_use:
        flags = [f"+{f}" for f in sorted(new_use - old_use)] + [f"-{f}" for f in sorted(old_use - new_use)]
        reasons.append("USE " + " ".join(flags))
    old_sub = before.get("SLOT", "0").partition("/")[2]
    new_sub = after.get("SLOT", "0").partition("/")[2]
    if old_sub != new_sub:
        reasons.append(f"sub-slot {old_sub or '-'} -> {new_sub or '-'}")
    return "; ".join(reasons) or "a new build of the same version and USE"


def prune(config: Config, conn: sqlite3.Connection, keep: int, now: datetime,
          dry_run: bool = False, wait: float = LOCK_WAIT_SECONDS) -> list[str]:
    """Remove releases beyond the newest KEEP that no channel ever pointed at; their names.

    A release a channel pointed at stays (a rollback may need it); the
    binhost's files are not touched (a hardlink less, the data stays while
    the binhost or another release links it). Waits for a promote or
    rollback (as promote does): the release it is pointing a channel at stays.
    """
    with _one_at_a_time(config, wait):
        return _prune(config, conn, keep, now, dry_run)


def _prune(config: Config, conn: sqlite3.Connection, keep: int, now: datetime,
           dry_run: bool) -> list[str]:
    pinned = {row[0] for row in conn.execute("SELECT DISTINCT release FROM channel_moves")}
    pinned |= {c["release"] for c in channels(config, now) if c["release"]}
    made = releases(config)
    doomed = [r["name"] for r in made[:max(0, len(made) - keep)] if r["name"] not in pinned]
    if not dry_run:
        for name in doomed:
            shutil.rmtree(release_path(config, name))
    return doomed


# --- helpers ---------------------------------------------------------------------

def release_path(config: Config, name: str) -> Path:
    """The directory of release NAME; SwarmError when there is none."""
    _check_name(name, RELEASE_NAME, "not a release name")
    path = root(config) / name
    if not (path / "release.json").is_file():
        raise SwarmError(f"no release {name} under {root(config)} (swarm-release list)")
    return path


def _check_name(name: str, pattern: re.Pattern, why: str) -> None:
    if not pattern.fullmatch(name):
        raise SwarmError(f"{name!r}: {why}", ExitCode.USAGE)


def _check_channel(channel: str) -> None:
    _check_name(channel, CHANNEL_NAME, "a channel name is lower-case letters, digits, - and _,"
                                       " starting with a letter")
    if channel == LIVE:
        raise SwarmError(f"'{LIVE}' is the live binhost itself: it cannot be pointed elsewhere",
                         ExitCode.USAGE)


def _sync_tree(directory: Path) -> None:
    """Flush a new directory's files and entries to disk before it is renamed into sight."""
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink() or path.suffix == ".tar":
            continue  # links and hardlinked packages: the binhost's files, synced when published
        fsync_path(path)
