"""Build times from Portage's emerge.log, paired the way qlop and genlop pair them.

``EPOCH:  >>> emerge (N of M) CPV to ROOT`` starts a merge and
``EPOCH:  ::: completed emerge (N of M) CPV to ROOT`` ends it; the
difference is the build (and merge) time. A start without its completion
(a failed merge, an interrupted run) is dropped. Versions are split by
Portage's own code.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

_LINE = re.compile(r"^(\d+):\s+(>>> emerge|::: completed emerge) \((\d+) of (\d+)\) (\S+) to ")


def merges(text: str) -> list[tuple[str, int]]:
    """(CPV, seconds) of every completed merge, in the order of the log."""
    started: dict[str, int] = {}
    found = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        epoch, what, cpv = int(match.group(1)), match.group(2), match.group(5)
        if what == ">>> emerge":
            started[cpv] = epoch
        elif cpv in started:
            found.append((cpv, epoch - started.pop(cpv)))
    return found


def median_seconds(paths: list[Path]) -> dict[str, int]:
    """Median build time by category/package over every merge in the logs."""
    from portage.versions import cpv_getkey

    times = defaultdict(list)
    for path in paths:
        for cpv, seconds in merges(Path(path).read_text(errors="replace")):
            key = cpv_getkey(cpv)
            if key:
                times[key].append(seconds)
    return {cp: int(statistics.median(values)) for cp, values in times.items()}
