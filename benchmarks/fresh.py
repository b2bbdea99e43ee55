"""swarm-fresh speed: parse rate, and whole-process cost beside the scan it follows.

Prints, side by side in one run:
  - rows parsed per second (the GNOME world, 848 rows, in-process);
  - the whole-process time of `swarm-fresh --from` on that file, for a first
    scan (848 packages added) and a rescan (848 unchanged), beside
    `python3 -c pass`;
  - that time as a share of the real `emerge -pe @world` it follows (18.8 s
    on this machine kind, tests/data/emerge/README.md). Target: under 5 %;
  - first scans of synthetic worlds of 20,000 and 100,000 packages (target:
    100k under 10 s), and, while the 100k scan runs, how long `swarm-delegate
    claim` had to wait at most and how often it was refused (exit 75).
Only console scripts are timed, so the same script measures an older
checkout too: put that checkout's bin on PATH. The last line is one JSON
object of the figures. --quick: medians of 2 runs, one synthetic world of
5,000 packages, the parse rate over 0.2 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from timing import fresh_database, median_wall, quick_parser, timed

from swarmtools.samples import synthetic_scan

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
GNOME = DATA / "emerge" / "gnome-pretend-emptytree-verbose.txt"
EMERGE_SECONDS = 18.8


@dataclass(frozen=True)
class Sizes:
    runs: int
    worlds: tuple[int, ...]  # synthetic first scans; a drone claims during the last
    parse_seconds: float


FULL, QUICK = Sizes(7, (20_000, 100_000), 2.0), Sizes(2, (5_000,), 0.2)


def parse_rate(seconds: float) -> float:
    from swarmtools.emerge import parse_merge_list

    text = GNOME.read_text()
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        rows += len(parse_merge_list(text).rows)
    return rows / (time.perf_counter() - started)


def main() -> None:
    sizes = QUICK if quick_parser(__doc__).parse_args().quick else FULL
    # The commands on PATH (another checkout's, to compare), else this venv's.
    found = shutil.which("swarm-fresh")
    bindir = Path(found).parent if found else Path(sys.executable).parent
    print(f"commands from {bindir}")
    with tempfile.TemporaryDirectory() as tmp:
        config = subprocess.run([bindir / "swarm-config", "init", "--dir", tmp],
                                capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "SWARM_CONFIG": config}
        # The scan alone (its tree is not here to resolve; older checkouts: no such key).
        subprocess.run([bindir / "swarm-config", "set", "scan.resolve=false"], env=env,
                       capture_output=True, check=False)
        db = Path(tmp) / "state" / "swarm.db"

        fresh = [str(bindir / "swarm-fresh"), "-q", "--from", str(GNOME)]
        baseline = median_wall([sys.executable, "-c", "pass"], env, sizes.runs)
        first = median_wall(fresh, env, sizes.runs, before=lambda: fresh_database(db))
        rescan = median_wall(fresh, env, sizes.runs)
        big = {count: big_scan(bindir, env, db, tmp, count) for count in sizes.worlds}
    rate = parse_rate(sizes.parse_seconds)
    print(f"input: {GNOME.name} (848 rows); median of {sizes.runs} runs each")
    print(f"{'parse rate (in-process)':<42} {rate:>10,.0f} rows/s")
    print(f"{'python3 -c pass':<42} {baseline:>10.3f} s")
    print(f"{'swarm-fresh --from, first scan (848 added)':<42} {first:>10.3f} s")
    print(f"{'swarm-fresh --from, rescan (848 unchanged)':<42} {rescan:>10.3f} s")
    print(f"{'share of emerge -pe @world (18.8 s)':<42} {100 * first / EMERGE_SECONDS:>9.2f} %"
          f"   (target < 5 %, i.e. < {0.05 * EMERGE_SECONDS:.2f} s)")
    for count, (seconds, *_) in big.items():
        print(f"{f'swarm-fresh --from, first scan of {count:,}':<42} {seconds:>10.2f} s"
              + ("   (target < 10 s)" if count == 100_000 else ""))
    largest = sizes.worlds[-1]
    _, longest, refused, claims = big[largest]
    print(f"{f'claims during the {largest:,} scan':<42} {claims:>10d}   longest {longest:.2f} s,"
          f" refused {refused}")
    print(json.dumps({"parse_rows_per_s": round(rate), "python_start_s": round(baseline, 4),
                      "first_scan_s": round(first, 4), "rescan_s": round(rescan, 4),
                      "share_of_emerge_pct": round(100 * first / EMERGE_SECONDS, 2),
                      "worlds_s": {str(n): round(figures[0], 3) for n, figures in big.items()},
                      "claims_during_largest": claims, "longest_claim_s": round(longest, 3),
                      "claims_refused": refused}))


def big_scan(bindir: Path, env: dict, db: Path, tmp: str, count: int):
    """First scan of COUNT synthetic packages, with a drone claiming all the while."""
    fresh_database(db)
    source = Path(tmp) / f"scan-{count}.txt"
    source.write_text(synthetic_scan(count))
    seed = Path(tmp) / "seed.txt"  # the drone needs a queue to claim from
    seed.write_text(synthetic_scan(50, "app-seed"))
    subprocess.run([bindir / "swarm-fresh", "-q", "--from", str(seed)], env=env, check=True)
    # (Older checkouts have no `set`, but their init names a drone 'local'.)
    subprocess.run([bindir / "swarm-config", "set", "drones.local.transport=local"], env=env,
                   capture_output=True, check=False)
    stop, waits, refused = threading.Event(), [], []

    def claimer():
        while not stop.is_set():
            started = time.perf_counter()
            proc = subprocess.run([bindir / "swarm-delegate", "claim", "--drone", "local"],
                                  env=env, capture_output=True, check=False)
            waits.append(time.perf_counter() - started)
            if proc.returncode == 75:
                refused.append(1)
            time.sleep(0.1)
    thread = threading.Thread(target=claimer)
    thread.start()
    time.sleep(0.5)
    seconds = timed([bindir / "swarm-fresh", "-q", "--force", "--from", str(source)], env)
    stop.set()
    thread.join()
    return seconds, max(waits), len(refused), len(waits)


if __name__ == "__main__":
    main()
