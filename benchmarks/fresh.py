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
checkout too: put that checkout's bin on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from timing import fresh_database, median_wall, timed

from swarmtools.samples import synthetic_scan

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
    # The commands on PATH (another checkout's, to compare), else this venv's.
    found = shutil.which("swarm-fresh")
    bindir = Path(found).parent if found else Path(sys.executable).parent
    print(f"commands from {bindir}")
    with tempfile.TemporaryDirectory() as tmp:
        config = subprocess.run([bindir / "swarm-config", "init", "--dir", tmp],
                                capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "SWARM_CONFIG": config}
        db = Path(tmp) / "state" / "swarm.db"

        fresh = [str(bindir / "swarm-fresh"), "-q", "--from", str(GNOME)]
        baseline = median_wall([sys.executable, "-c", "pass"], env, RUNS)
        first = median_wall(fresh, env, RUNS, before=lambda: fresh_database(db))
        rescan = median_wall(fresh, env, RUNS)
        big = {count: big_scan(bindir, env, db, tmp, count) for count in (20_000, 100_000)}
    rate = parse_rate()
    print(f"input: {GNOME.name} (848 rows); median of {RUNS} runs each")
    print(f"{'parse rate (in-process)':<42} {rate:>10,.0f} rows/s")
    print(f"{'python3 -c pass':<42} {baseline:>10.3f} s")
    print(f"{'swarm-fresh --from, first scan (848 added)':<42} {first:>10.3f} s")
    print(f"{'swarm-fresh --from, rescan (848 unchanged)':<42} {rescan:>10.3f} s")
    print(f"{'share of emerge -pe @world (18.8 s)':<42} {100 * first / EMERGE_SECONDS:>9.2f} %"
          f"   (target < 5 %, i.e. < {0.05 * EMERGE_SECONDS:.2f} s)")
    for count, (seconds, longest, refused, claims) in big.items():
        print(f"{f'swarm-fresh --from, first scan of {count:,}':<42} {seconds:>10.2f} s"
              + ("   (target < 10 s)" if count == 100_000 else ""))
    print(f"{'claims during the 100,000 scan':<42} {claims:>10d}   longest {longest:.2f} s,"
          f" refused {refused}")


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
                   capture_output=True)
    stop, waits, refused = threading.Event(), [], []

    def claimer():
        while not stop.is_set():
            started = time.perf_counter()
            proc = subprocess.run([bindir / "swarm-delegate", "claim", "--drone", "local"],
                                  env=env, capture_output=True)
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
