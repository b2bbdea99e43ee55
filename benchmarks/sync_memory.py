"""swarm-sync's peak memory on a hostile upload: a gpkg with a 200 MB Manifest.

A drone decides what is in the file it uploads. Builds one real gpkg with
the real emerge, rewrites its Manifest with 200 MB of extra lines (every
real member still listed and correct), stages it as a received package and
runs swarm-sync, printing the peak resident memory of that process and what
became of the package. Only console scripts are run, so the same script
measures an older checkout too: put that checkout's bin on PATH. The last
line is one JSON object of the figures. --quick: a 2 MB Manifest.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from timing import quick_parser

from swarmtools import gpkg
from swarmtools.prefix import create_prefix

TEMPLATE = "app-misc/example-docs-1.0"
MANIFEST_MB, QUICK_MANIFEST_MB = 200, 2


class _Padded(io.RawIOBase):
    """DATA, then MEGABYTES of comment lines, read in blocks (this process stays small:
    a child forked from a big parent would count the parent's pages as its own)."""

    LINE = b"# " + b"x" * 1021 + b"\n"

    def __init__(self, data: bytes, megabytes: int):
        self.buffer, self.lines = data, megabytes << 10

    def read(self, size=-1):
        while len(self.buffer) < size and self.lines:
            count = min(self.lines, size // len(self.LINE) + 1)
            self.lines -= count
            self.buffer += self.LINE * count
        chunk, self.buffer = self.buffer[:size], self.buffer[size:]
        return chunk


def bloated(template: Path, target: Path, megabytes: int) -> None:
    """TEMPLATE with MEGABYTES of comment lines appended to its Manifest."""
    with tarfile.open(template) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()
            if member.name.endswith("/Manifest"):
                member.size = len(data) + len(_Padded.LINE) * (megabytes << 10)
                new.addfile(member, _Padded(data, megabytes))
            else:
                new.addfile(member, io.BytesIO(data))


def main() -> None:
    megabytes = QUICK_MANIFEST_MB if quick_parser(__doc__).parse_args().quick else MANIFEST_MB
    found = shutil.which("swarm-sync")
    bindir = Path(found).parent if found else Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-memory-"))
    try:
        prefix = create_prefix(tmp / "prefix", world=[TEMPLATE.rsplit("-", 1)[0]])
        r = prefix.run(["emerge", "--oneshot", "--buildpkg=y", "--color=n", "=" + TEMPLATE])
        assert r.returncode == 0, r.stderr
        (template,) = prefix.pkgdir.glob("app-misc/example-docs/*.gpkg.tar")
        config = subprocess.run([bindir / "swarm-config", "init", "--dir", str(tmp / "swarm"),
                                 *[f"--scan-env={k}={v}" for k, v in prefix.env_overrides().items()]],
                                capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "SWARM_CONFIG": config, "PATH": f"{bindir}:{os.environ['PATH']}"}
        subprocess.run([bindir / "swarm-config", "set", "drones.local.transport=local"], env=env,
                       capture_output=True, check=False)  # older checkouts: init made 'local'
        # The swarm-sync measured is the one that publishes (older checkouts: no such key).
        subprocess.run([bindir / "swarm-config", "set", "binhost.publish_on_report=false"],
                       env=env, capture_output=True, check=False)
        subprocess.run([bindir / "swarm-config", "set", "scan.resolve=false"], env=env,
                       capture_output=True, check=False)  # the scan alone (older: no such key)
        subprocess.run([bindir / "swarm-fresh", "-q"], env=env, check=True)
        relative = f"app-misc/example-docs/{template.name}"
        staged = tmp / "swarm" / "state" / "staging" / "local" / relative
        staged.parent.mkdir(parents=True)
        # A drone never heard from is offline, and one must be of the profile's
        # ARCH and CHOST: else no claim is handed to it.
        facts = {"arch": "amd64", "chost": "x86_64-pc-linux-gnu"}
        subprocess.run([bindir / "swarm-delegate", "heartbeat", "--drone", "local"],
                       input=json.dumps(facts), env=env, capture_output=True, text=True, check=True)
        while True:
            job = subprocess.run([bindir / "swarm-delegate", "claim", "--drone", "local"],
                                 env=env, capture_output=True, text=True, check=True).stdout
            if job.startswith(TEMPLATE) or not job:
                break
        bloated(template, staged, megabytes)
        size, digest = gpkg.file_digest(staged)
        subprocess.run([bindir / "swarm-delegate", "report", "--drone", "local", TEMPLATE, "--ok",
                        "--file", relative, "--sha256", digest], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        if os.environ.get("KEEP"):
            return
        proc = subprocess.Popen([bindir / "swarm-sync", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        code = os.waitstatus_to_exitcode(status)
        print(f"commands from {bindir}")
        print(f"gpkg with a {megabytes} MB Manifest: {size / 2**20:.0f} MiB")
        print(f"swarm-sync peak RSS: {usage.ru_maxrss / 1024:.0f} MiB (exit {code})")
        print(f"swarm-sync said: {out.strip()[:300]}")
        if err.strip():
            print(f"  on stderr: {err.strip()[-300:]}")
        said = json.loads(out) if out.strip() else {}
        print(json.dumps({"manifest_mb": megabytes, "gpkg_bytes": size,
                          "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "sync_exit": code,
                          "published": len(said.get("published", [])),
                          "quarantined": [q["cpv"] for q in said.get("quarantined", [])]}))
    finally:
        print("kept", tmp) if os.environ.get("KEEP") else shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
