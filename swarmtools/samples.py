"""Generated inputs for the tests, the benchmarks and the demo.

Nothing here runs in a real swarm: these are made-up scans and queues of a
given size, the same for every consumer, so figures and tests agree.
"""

from __future__ import annotations


def synthetic_scan(count: int, category: str = "app-test") -> str:
    """An ``emerge --pretend --verbose`` list of COUNT independent packages."""
    rows = "".join(f"[ebuild  N     ] {category}/pkg{i}-1.0::gentoo  0 KiB\n" for i in range(count))
    return f"{rows}\nTotal: {count} packages ({count} new), Size of downloads: 0 KiB\n"
