"""Table and JSON rendering shared by all commands (data on stdout only)."""

from __future__ import annotations

import json
import sys
from typing import Iterable


def emit_json(obj) -> None:
    """Print one JSON object (a single answer)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def emit_ndjson(objects: Iterable[dict]) -> None:
    """Print one JSON object a line (a list, for jq)."""
    write = sys.stdout.write
    for obj in objects:
        write(json.dumps(obj, sort_keys=True) + "\n")


def emit_table(rows: list[list], headers: list[str]) -> None:
    """Print a plain table for people."""
    from tabulate import tabulate  # only commands that draw tables pay for it

    sys.stdout.write(tabulate(rows, headers=headers, tablefmt="simple",
                              disable_numparse=True) + "\n")
