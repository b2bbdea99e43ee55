"""The whole swarm on this one machine, as far as it exists.

Builds a throw-away Portage prefix holding the example repository (the
"orchestrator's" view of the world), writes a single-host config, fills the
queue from the real `emerge --pretend --emptytree @world`, shows the status,
then bumps a version in the tree and rescans to show an incremental update.
Everything lives under $SWARM_DEMO_DIR (default /tmp/swarm-demo).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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
    env = {**os.environ, "SWARM_CONFIG": out.stdout.strip()}
    print(f"demo: config written to {out.stdout.strip()}")

    show("swarm-config", "check", env=env)
    show("swarm-fresh", env=env)
    show("swarm-status", env=env)

    print("\ndemo: a new version of app-misc/example-docs lands in the tree", flush=True)
    docs = prefix.repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    show("swarm-fresh", "--json", env=env)
    listing = show("swarm-status", "--packages", "--state", "needed", env=env)
    print(f"\ndemo: done: {len(listing.splitlines())} packages queued; files under {DEMO}")


if __name__ == "__main__":
    main()
