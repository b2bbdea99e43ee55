"""The whole swarm on this one machine, as far as it exists.

Builds throw-away Portage prefixes holding the example repository: one for
the orchestrator's scan and one for each of two drones. Writes a single-host
config, fills the queue from the real `emerge --pretend --emptytree @world`,
lets the two drones build the queue concurrently into staging (local
transport: each drone runs swarm-delegate and rsync directly), shows the
status, then bumps a version in the tree and rescans: one package is queued
again, and a drone builds it.
Everything lives under $SWARM_DEMO_DIR (default /tmp/swarm-demo).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from swarmtools.config import render_toml
from swarmtools.prefix import create_prefix

DEMO = Path(os.environ.get("SWARM_DEMO_DIR", "/tmp/swarm-demo"))


def show(*args: str, env: dict) -> str:
    """Run a command as a person would type it, echo it and its output."""
    print(f"\n$ {shlex.join(args)}", flush=True)
    proc = subprocess.run(args, env=env, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"demo: '{shlex.join(args)}' failed with exit code {proc.returncode}")
    return proc.stdout


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    prefix = create_prefix(DEMO / "orchestrator-prefix")
    print(f"demo: Portage prefix with the example repository at {prefix.root}")
    out = subprocess.run(
        ["swarm-config", "init", "--dir", str(DEMO / "swarm"),
         *[f"--scan-env={k}={v}" for k, v in prefix.env_overrides().items()]],
        text=True, capture_output=True, check=True)
    config = Path(out.stdout.strip())
    env = {**os.environ, "SWARM_CONFIG": str(config)}
    drones = {name: create_prefix(DEMO / f"drone-{name}") for name in ("d1", "d2")}
    data = tomllib.loads(config.read_text())
    data["drones"] = {name: {"host": "localhost", "transport": "local",
                             "environment": p.env_overrides()} for name, p in drones.items()}
    data["delegate"] = {"heartbeat_seconds": 5, "poll_seconds": 2}
    config.write_text(render_toml(data))
    print(f"demo: config written to {config}, with drones d1 and d2 (one prefix each)")

    show("swarm-config", "check", env=env)
    show("swarm-fresh", env=env)
    show("swarm-status", env=env)
    build(env)
    show("swarm-status", env=env)

    print("\ndemo: a new version of app-misc/example-docs lands in the tree", flush=True)
    for p in (prefix, *drones.values()):
        docs = p.repo / "app-misc" / "example-docs"
        shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    show("swarm-fresh", "--json", env=env)
    show("swarm-status", "--packages", "--state", "needed", env=env)
    build(env)
    staged = sorted(p.relative_to(DEMO) for p in (DEMO / "swarm" / "state" / "staging").rglob("*.gpkg.tar"))
    print(f"\ndemo: {len(staged)} binary packages in staging:")
    for path in staged:
        print(f"  {path}")
    print(f"demo: done; everything is under {DEMO}")


def build(env: dict) -> None:
    """Run both drones until the queue is empty, as `swarm-drone --drain`."""
    print("\n$ swarm-drone --drone d1 --drain -v &  swarm-drone --drone d2 --drain -v", flush=True)
    procs = [subprocess.Popen(["swarm-drone", "--drone", name, "--drain", "-v"], env=env)
             for name in ("d1", "d2")]
    if any(p.wait() != 0 for p in procs):
        sys.exit("demo: a drone failed")


if __name__ == "__main__":
    main()
