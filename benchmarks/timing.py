"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path


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


def timed(args, env: dict) -> float:
    """Wall time of one run of a whole command."""
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def fresh_database(path) -> None:
    """Remove a database and its WAL files, so the next command starts a new one."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def quick_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line: --quick, and the first line of DOC as its description."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    # The suite runs every benchmark so: a change that breaks one fails the tests.
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: the same steps, figures not worth quoting")
    return parser


def init_config(directory) -> Path:
    """A single-host config under DIRECTORY, written by the installed swarm-config init."""
    import sys

    program = Path(sys.executable).parent / "swarm-config"
    return Path(subprocess.run([program, "init", "--dir", str(directory)], capture_output=True,
                               text=True, check=True).stdout.strip())
