"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import subprocess
import time


def median_wall(args, env: dict, runs: int, before=None) -> float:
    """Median wall time of a whole command over RUNS runs (before() runs untimed)."""
    times = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)
