"""What a throw-away root costs a build: the example world built with and without isolation.

Two drones (Portage prefixes) build the same packages, in merge order, side by
side in one run, with the real emerge and the drone's own build code
(swarmtools.build.Builder): one with isolation = "none" (its live system, as
plain emerge), one with isolation = "overlay" (each build in a private mount
namespace over an overlay of its system, thrown away after). Their
dependencies come as binaries from a binhost served over HTTP (a third prefix
built the whole world with --buildpkg first). Per package it prints the
build's wall time for each, the time of the dependency step and how many
dependencies it merged; then:

  setup_teardown_s    per build, what the room adds beside emerge: the three
                      namespace and overlay set-ups (one per emerge step,
                      measured running `true` in a room) and the removal of
                      the build's layers (goal: under 1 s);
  reinstall_s         per build, the dependency step's extra time with
                      isolation: dependencies installed again from binaries
                      for every build, where the live system keeps them;
  total_none_s, total_overlay_s, ratio.

The last line is one JSON object with those figures. Needs root (overlayfs
and mount namespaces).

    python benchmarks/isolation.py [--quick]     # --quick: two packages of one chain
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import HttpServer
from timing import init_config

from swarmtools import build as build_mod
from swarmtools import cleanroom
from swarmtools.config import edit, load
from swarmtools.prefix import create_prefix

QUICK = ["sys-apps/example-base-1.0", "dev-libs/libfoo-1.2"]  # the second needs the first
SETUP_RUNS = 10


class Timed(build_mod._Steps):
    """The drone's steps, timing the dependency step (emerge --onlydeps)."""

    deps_seconds: ClassVar[list[float]] = []

    def emerge(self, command, extra=None):
        started = time.perf_counter()
        result = super().emerge(command, extra)
        if "--onlydeps" in command:
            Timed.deps_seconds.append(time.perf_counter() - started)
        return result


def merge_order(prefix) -> list[str]:
    out = prefix.run(["emerge", "--pretend", "--emptytree", "--color=n", "@world"]).stdout
    return [line.split("]", 1)[1].split()[0] for line in out.splitlines()
            if line.startswith("[ebuild")]


def builders(top: Path, url: str) -> dict[str, build_mod.Builder]:
    config = init_config(top / "swarm")
    prefixes = {name: create_prefix(top / f"drone-{name}") for name in ("none", "overlay")}
    edit(config, {"binhost": {"url": url}, "drones": {
        name: {"transport": "local", "isolation": name, "environment": p.env_overrides()}
        for name, p in prefixes.items()}})
    loaded = load(config)
    return {name: build_mod.Builder(loaded, name) for name in prefixes}


def room_seconds(builder: build_mod.Builder) -> float:
    """One room set up and `true` run in it: the median, in seconds."""
    times = []
    for number in range(SETUP_RUNS):
        layers = builder.workdir / build_mod.BUILDS / f"bench-{number}"
        room = builder.room(layers, [], builder.env)
        started = time.perf_counter()
        subprocess.run(room.command(["true"]), check=True)
        times.append(time.perf_counter() - started)
        cleanroom.remove(layers)
    return statistics.median(times)


TEARDOWNS: list[float] = []  # seconds to remove each build's layers


def _timed_remove(layers, _remove=cleanroom.remove):
    started = time.perf_counter()
    _remove(layers)
    TEARDOWNS.append(time.perf_counter() - started)


def build_all(builder: build_mod.Builder, cpvs: list[str]) -> list[tuple[float, float, int]]:
    """(seconds, dependency-step seconds, dependencies merged) of each build."""
    results = []
    build_mod._Steps = Timed
    for cpv in cpvs:
        Timed.deps_seconds = []
        merged_before = _merged(builder)
        started = time.perf_counter()
        outcome = builder.build(cpv, builder.env, lambda: None)
        seconds = time.perf_counter() - started
        if outcome is None or outcome.package is None:
            sys.exit(f"isolation.py: {cpv} did not build ({builder.isolation}): "
                     f"{outcome.log.read_text()[-2000:] if outcome and outcome.log else ''}")
        results.append((seconds, sum(Timed.deps_seconds), _merged(builder) - merged_before))
    return results


def _merged(builder: build_mod.Builder) -> int:
    """Dependencies merged so far by the builds of BUILDER (its kept emerge.log, or live)."""
    log = builder.emerge_log if builder.isolation == "overlay" else Path(
        builder.eroot, "var/log/emerge.log")
    return log.read_text().count("Merging Binary") if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two packages (seconds, for CI)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("isolation.py: needs root (overlayfs and mount namespaces)")
    with tempfile.TemporaryDirectory(prefix="swarm-isolation-") as top:
        top = Path(top)
        binhost = create_prefix(top / "binhost")
        cpvs = QUICK if args.quick else merge_order(binhost)
        r = binhost.run(["emerge", "--buildpkg", "--color=n", "--oneshot",
                         *[f"={cpv}" for cpv in cpvs]])
        if r.returncode:
            sys.exit(f"isolation.py: the binhost could not be built: {r.stdout[-2000:]}")
        with HttpServer(binhost.pkgdir) as server:
            drones = builders(top, server.url)
            setup = room_seconds(drones["overlay"])
            cleanroom.remove = _timed_remove
            rows = {}
            for cpv in cpvs:  # side by side: one package on each, then the next
                rows[cpv] = [build_all(drones[name], [cpv])[0] for name in ("none", "overlay")]
    print(f"{'package':<32} {'none s':>7} {'overlay s':>9} {'deps none':>9} {'deps ovl':>8}"
          f" {'merged':>6}")
    for cpv, ((none, deps_none, _), (overlay, deps_overlay, merged)) in rows.items():
        print(f"{cpv:<32} {none:>7.2f} {overlay:>9.2f} {deps_none:>9.2f} {deps_overlay:>8.2f}"
              f" {merged:>6}")
    builds = len(rows)
    # Three emerge steps a build (pretend, dependencies, package), each in its
    # room; then its layers go.
    teardown = statistics.mean(TEARDOWNS)
    setup_teardown = 3 * setup + teardown
    reinstall = sum(r[1][1] - r[0][1] for r in rows.values()) / builds
    total_none = sum(r[0][0] for r in rows.values())
    total_overlay = sum(r[1][0] for r in rows.values())
    print(f"room set-up and teardown per build: {setup_teardown:.2f} s (3 x {setup:.3f} s set-up,"
          f" {teardown:.3f} s removing the layers; goal under 1 s)")
    print(f"dependencies installed again per build: {reinstall:.2f} s "
          f"({sum(r[1][2] for r in rows.values())} merges with isolation)")
    print(f"{builds} builds: {total_none:.1f} s live, {total_overlay:.1f} s isolated "
          f"({total_overlay / total_none:.2f}x)")
    print(json.dumps({"builds": builds, "setup_teardown_s": round(setup_teardown, 3),
                      "setup_s": round(setup, 3), "teardown_s": round(teardown, 3),
                      "reinstall_s": round(reinstall, 3), "total_none_s": round(total_none, 2),
                      "total_overlay_s": round(total_overlay, 2),
                      "ratio": round(total_overlay / total_none, 3)}))


if __name__ == "__main__":
    main()
