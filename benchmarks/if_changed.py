"""swarm-fresh --if-changed: what "nothing changed" costs beside the scan it saves.

Prints, side by side in one run:
  - the whole-process time of `swarm-fresh --if-changed` when nothing
    changed (no emerge runs) beside a full `swarm-fresh` of the example
    world in a Portage prefix (the real emerge), and their ratio;
  - the state of a repository the size of ::gentoo (about 31,000 ebuilds in
    19,000 packages, synthetic files of 1 KiB) read two ways: from
    metadata/timestamp.chk (Gentoo's mirrors), and as a digest of every file
    (an overlay without one), in milliseconds;
  - the build profile bundle of the prefix's /etc/portage: its size and
    the time to pack it.
The last line is one JSON object of the figures. --quick: one run of each
command, a repository of 300 ebuilds in 200 packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from timing import median_wall, quick_parser


def median(action, runs: int) -> float:
    """Median wall time of calling ACTION (in this process)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


@dataclass(frozen=True)
class Sizes:
    scans: int  # full scans timed
    unchanged: int  # --if-changed runs timed
    ebuilds: int
    packages: int


FULL, QUICK = Sizes(3, 5, 31_000, 19_000), Sizes(1, 1, 300, 200)


def fresh_times(root: Path, sizes: Sizes):
    from swarmtools.prefix import create_prefix

    prefix = create_prefix(root / "prefix")
    out = subprocess.run(
        ["swarm-config", "init", "--dir", str(root / "swarm"),
         *[f"--scan-env={k}={v}" for k, v in prefix.env_overrides().items()]],
        capture_output=True, text=True, check=True)
    env = {**os.environ, "SWARM_CONFIG": out.stdout.strip()}
    # No binhost is served: the scan must not ask one.
    from swarmtools.config import edit

    edit(Path(out.stdout.strip()), {"scan": {"command": [
        "emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "--with-bdeps=y",
        "@world"]}})
    # The scan alone, as before swarm-fresh resolved by default (older checkouts: no such key).
    subprocess.run(["swarm-config", "set", "scan.resolve=false"], env=env, capture_output=True,
                   check=False)

    full = median_wall(["swarm-fresh", "-q"], env, sizes.scans)
    unchanged = median_wall(["swarm-fresh", "-q", "--if-changed"], env, sizes.unchanged)
    return full, unchanged, prefix


def big_repository(root: Path, sizes: Sizes) -> Path:
    repo = root / "gentoo"
    body = b"# synthetic\n" + b"x" * 1000 + b"\n"
    for number in range(sizes.packages):
        package = repo / f"cat-{number % 160}" / f"pkg{number}"
        package.mkdir(parents=True)
        versions = 2 if number < sizes.ebuilds - sizes.packages else 1
        for version in range(versions):
            (package / f"pkg{number}-{version + 1}.ebuild").write_bytes(body)
        (package / "Manifest").write_bytes(b"DIST x 1 BLAKE2B a SHA512 b\n")
    return repo


def state_times(repo: Path) -> dict[str, float]:
    from swarmtools.profile import tree_state

    times = {"files digest": median(lambda: tree_state(repo), 3)}
    (repo / "metadata").mkdir()
    (repo / "metadata" / "timestamp.chk").write_text("Sat, 05 Dec 2026 01:15:01 +0000\n")
    times["timestamp.chk"] = median(lambda: tree_state(repo), 5)
    return times


def main() -> None:
    sizes = QUICK if quick_parser(__doc__).parse_args().quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full, unchanged, prefix = fresh_times(root, sizes)
        print(f"swarm-fresh, full scan of the example world:   {full * 1000:8.0f} ms")
        print(f"swarm-fresh --if-changed, nothing changed:      {unchanged * 1000:8.0f} ms "
              f"({unchanged / full:.0%} of the scan)")
        from swarmtools import profile

        env = prefix.env()
        started = time.perf_counter()
        snap = profile.snapshot(env)
        snapshot = time.perf_counter() - started
        print(f"profile bundle of the prefix: {len(snap.bundle):,} bytes, snapshot "
              f"{snapshot * 1000:.0f} ms (Portage config included)")
        repo = big_repository(root, sizes)
        print(f"repository of {sizes.ebuilds:,} ebuilds in {sizes.packages:,} packages, "
              "its state from:")
        states = state_times(repo)
        for how, seconds in states.items():
            print(f"  {how:<14} {seconds * 1000:8.1f} ms")
    print(json.dumps({"full_scan_s": round(full, 3), "if_changed_s": round(unchanged, 3),
                      "bundle_bytes": len(snap.bundle), "snapshot_s": round(snapshot, 3),
                      "ebuilds": sizes.ebuilds,
                      "state_digest_ms": round(states["files digest"] * 1000, 1),
                      "state_timestamp_ms": round(states["timestamp.chk"] * 1000, 1)}))


if __name__ == "__main__":
    main()
