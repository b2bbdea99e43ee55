"""The orchestrator's files: where drones upload, what is kept, what is quarantined.

The layout, drawn once::

    orchestrator.state_dir/
      swarm.db  swarm.log  swarm-sync.lock
      logs/CAT/PF/STAMP-DRONE.log         failed builds' logs, kept
    orchestrator.staging_dir/
      DRONE/CAT/PN/PF-ID.gpkg.tar         a drone's upload (rsync), until published
      DRONE/logs/...                      a failed build's log, until reported
      quarantine/STAMP/DRONE/CAT/PN/...   files swarm-sync refused to publish
      quarantine/orphans/DRONE/...        files no package ever claimed
    binhost.path/
      Packages  Packages.gz               the index clients read
      CAT/PN/PF-ID.gpkg.tar               published; a name is never reused
      .incoming/                          copies being verified, renamed into place

A drone reaches only ``staging_dir/DRONE/`` (the gateway confines it), and
every path it names is checked by :func:`staged_path`.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Iterator

from . import clock
from .config import Config
from .errors import SwarmError

QUARANTINE = "quarantine"


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
    target_dir = config.state_dir / "logs" / cpv
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
