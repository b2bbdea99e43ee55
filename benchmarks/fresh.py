"""swarm-fresh speed: parse rate, and whole-process cost beside the scan it follows.

Prints, side by side in one run:
  - rows parsed per second (the GNOME world, 848 rows, in-process);
  - the whole-process time of `swarm-fresh --from` on that file, for a first
    scan (848 packages added) and a rescan (848 unchanged), beside
    `python3 -c pass`;
  - that time as a share of the real `emerge -pe @world` it follows (18.8 s
    on this machine kind, tests/data/emerge/README.md). Target: under 5 %.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import fresh_database, median_wall

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
GNOME = DATA / "emerge" / "gnome-pretend-emptytree-verbose.txt"
EMERGE_SECONDS = 18.8
RUNS = 7


def parse_rate() -> float:
    from swarmtools.emerge import parse_merge_list

    text = GNOME.read_text()
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        rows += len(parse_merge_list(text).rows)
    return rows / (time.perf_counter() - started)


def main() -> None:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        config = subprocess.run([bindir / "swarm-config", "init", "--dir", tmp],
                                capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "SWARM_CONFIG": config}
        db = Path(tmp) / "state" / "swarm.db"

        fresh = [str(bindir / "swarm-fresh"), "-q", "--from", str(GNOME)]
        baseline = median_wall([sys.executable, "-c", "pass"], env, RUNS)
        first = median_wall(fresh, env, RUNS, before=lambda: fresh_database(db))
        rescan = median_wall(fresh, env, RUNS)
    rate = parse_rate()
    print(f"input: {GNOME.name} (848 rows); median of {RUNS} runs each")
    print(f"{'parse rate (in-process)':<42} {rate:>10,.0f} rows/s")
    print(f"{'python3 -c pass':<42} {baseline:>10.3f} s")
    print(f"{'swarm-fresh --from, first scan (848 added)':<42} {first:>10.3f} s")
    print(f"{'swarm-fresh --from, rescan (848 unchanged)':<42} {rescan:>10.3f} s")
    print(f"{'share of emerge -pe @world (18.8 s)':<42} {100 * first / EMERGE_SECONDS:>9.2f} %"
          f"   (target < 5 %, i.e. < {0.05 * EMERGE_SECONDS:.2f} s)")


if __name__ == "__main__":
    main()
