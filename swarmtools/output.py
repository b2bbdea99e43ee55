"""Rendering shared by all commands: JSON, NDJSON and tables to a stream; atomic files.

Data goes to stdout (or the stream given), never anything else: messages
go to stderr through logging.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO


def emit_json(obj, stream: IO[str] | None = None) -> None:
    """Print one JSON object (a single answer)."""
    (stream or sys.stdout).write(json.dumps(obj, sort_keys=True) + "\n")


def emit_ndjson(objects: Iterable[dict], stream: IO[str] | None = None) -> None:
    """Print one JSON object a line (a list, for jq)."""
    write = (stream or sys.stdout).write
    for obj in objects:
        write(json.dumps(obj, sort_keys=True) + "\n")


def emit_table(rows: list[list], headers: list[str], stream: IO[str] | None = None) -> None:
    """Print a plain table for people."""
    from tabulate import tabulate  # only commands that draw tables pay for it

    (stream or sys.stdout).write(tabulate(rows, headers=headers, tablefmt="simple",
                                          disable_numparse=True) + "\n")


def write_atomic(path: Path, data: str | bytes, mtime: int | None = None,
                 mode: int | None = None) -> None:
    """Write a file through a temporary name and rename(): readers see old or new, whole.

    MTIME, when given, is set before the rename (what a web server answers
    If-Modified-Since with). MODE, when given, is the file's from the start
    (no moment with the umask's).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        opener = None if mode is None else (
            lambda name, flags: os.open(name, flags, mode))
        with open(temporary, "wb" if isinstance(data, bytes) else "w", opener=opener) as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # a temporary left by a crash had another
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mtime is not None:
            os.utime(temporary, (mtime, mtime))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        if exc.errno is None:
            raise
        # The file asked for, not the hidden temporary nobody asked for.
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
