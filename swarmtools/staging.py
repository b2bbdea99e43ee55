"""The orchestrator's files: where drones upload, what is kept, what is quarantined.

The layout, drawn once (a path a module uses: the function here that names it)::

    orchestrator.state_dir/
      swarm.db  swarm.log                 the queue; errors of cron runs (config: database, log_file)
      swarm-fresh.lock                    one scan at a time (fresh_lock)
      swarm-resolve.lock                  one swarm-resolve at a time (resolve_lock)
      swarm-sync.lock                     one publication at a time, or release (sync_lock)
      swarm-sync.waiter.lock              the one publication waiting for it (sync_waiter_lock)
      swarm-sync.pending                  a reported build waits to be published (sync_pending)
      logs/CAT/PF/STAMP-DRONE.log         failed builds' logs, kept (kept_logs, keep_log)
      profiles/DIGEST.tar                 build profiles' bundles, by sha256, 0600; only those
                                          the profiles use now (bundle_dir, bundle_path)
    orchestrator.staging_dir/
      DRONE/CAT/PN/PF-ID.gpkg.tar         a drone's upload (rsync), until published (staged_path)
      DRONE/logs/...                      a failed build's log, until reported (staged_path)
      quarantine/STAMP/DRONE/CAT/PN/...   files swarm-sync refused to publish (quarantine)
      quarantine/orphans/DRONE/...        files no package ever claimed (quarantine)
    binhost.path/                         (binhost.Binhost)
      Packages  Packages.gz               the index clients read
      CAT/PN/PF-ID.gpkg.tar               published; a name is never reused
      .incoming/                          copies being verified, renamed into place

A drone reaches only ``staging_dir/DRONE/`` (the gateway confines it), and
every path it names is checked by :func:`staged_path`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from . import clock
from .config import Config
from .errors import SwarmError

QUARANTINE = "quarantine"


def fresh_lock(config: Config) -> Path:
    """The lock file every swarm-fresh takes."""
    return config.state_dir / "swarm-fresh.lock"


def resolve_lock(config: Config) -> Path:
    """The lock file every swarm-resolve takes."""
    return config.state_dir / "swarm-resolve.lock"


def sync_lock(config: Config) -> Path:
    """The lock file every swarm-sync takes (and swarm-release create: no publication meanwhile)."""
    return config.state_dir / "swarm-sync.lock"


def sync_waiter_lock(config: Config) -> Path:
    """Held by the one coalescing swarm-sync that waits for a running one."""
    return config.state_dir / "swarm-sync.waiter.lock"


def sync_pending(config: Config) -> Path:
    """Touched by every successful report; a coalescing run publishes while it exists."""
    return config.state_dir / "swarm-sync.pending"


def kept_logs(config: Config, cpv: str) -> Path:
    """Where the logs of CPV's failed builds are kept."""
    return config.state_dir / "logs" / cpv


def bundle_dir(config: Config) -> Path:
    """Where the build profiles' bundles are kept."""
    return config.state_dir / "profiles"


def bundle_path(config: Config, digest: str) -> Path:
    """A build profile's bundle (its Portage configuration, a tar), by its sha256."""
    return bundle_dir(config) / f"{digest}.tar"


def staged_path(config: Config, drone: str, relative: str) -> Path:
    """The absolute path of a file in a drone's staging area; refuse anything outside it."""
    if not relative or "\0" in relative or os.path.isabs(relative) or ".." in Path(relative).parts:
        raise SwarmError(f"'{relative}' must be a path inside staging/{drone}/ without '..'")
    area = (config.staging_dir / drone).resolve()
    path = (area / relative).resolve()  # resolves symlinks: a link out of the area is caught
    if area not in path.parents:
        raise SwarmError(f"'{relative}' leads outside staging/{drone}/")
    return path


def keep_log(config: Config, source: Path, cpv: str, drone: str, now: datetime) -> Path:
    """Move a failed build's log out of staging into state_dir/logs/CAT/PF/."""
    target_dir = kept_logs(config, cpv)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{clock.stamp(now)}-{drone}.log"
    shutil.move(source, target)
    return target


def uploads(config: Config) -> Iterator[tuple[str, Path]]:
    """Every file in the drones' areas as (path relative to staging_dir, path)."""
    root = config.staging_dir
    if not root.is_dir():
        return
    for directory, dirnames, filenames in os.walk(root):
        if Path(directory) == root and QUARANTINE in dirnames:
            dirnames.remove(QUARANTINE)
        for name in filenames:
            path = Path(directory) / name
            yield str(path.relative_to(root)), path


def area_bytes(config: Config, drone: str) -> int:
    """Bytes in one drone's staging area (its quota counts them)."""
    total = 0
    for directory, _, filenames in os.walk(config.staging_dir / drone):
        for name in filenames:
            try:
                total += (Path(directory) / name).lstat().st_size
            except FileNotFoundError:
                pass
    return total


def waiting_bytes(config: Config) -> int:
    """Bytes in the drones' areas (quarantine not counted)."""
    total = 0
    for _, path in uploads(config):
        try:
            total += path.lstat().st_size
        except FileNotFoundError:
            pass  # published meanwhile
    return total


def quarantine(config: Config, relative: str, bucket: str) -> Path:
    """Move staging_dir/RELATIVE to quarantine/BUCKET/RELATIVE; return where it went."""
    target = config.staging_dir / QUARANTINE / bucket / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    (config.staging_dir / relative).rename(target)
    return target


def remove_empty_dirs(config: Config) -> None:
    """Drop empty folders under the drones' areas (not the areas themselves)."""
    root = config.staging_dir
    if not root.is_dir():
        return
    for area in root.iterdir():
        if area.name == QUARANTINE or not area.is_dir() or area.is_symlink():
            continue
        for directory, _, _ in sorted(os.walk(area), key=lambda d: -len(d[0])):
            if Path(directory) != area:
                try:
                    os.rmdir(directory)
                except OSError:
                    pass  # not empty
