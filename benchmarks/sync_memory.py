"""swarm-sync's peak memory on a hostile upload: a gpkg with a 200 MB Manifest.

A drone decides what is in the file it uploads. Builds one real gpkg with
the real emerge, rewrites its Manifest with 200 MB of extra lines (every
real member still listed and correct), stages it as a received package and
runs swarm-sync, printing the peak resident memory of that process and what
became of the package. Only console scripts are run, so the same script
measures an older checkout too: put that checkout's bin on PATH.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from swarmtools import gpkg
from swarmtools.prefix import create_prefix

TEMPLATE = "app-misc/example-docs-1.0"
MANIFEST_MB = 200


class _Padded(io.RawIOBase):
    """DATA, then MANIFEST_MB of comment lines, read in blocks (this process stays small:
    a child forked from a big parent would count the parent's pages as its own)."""

    LINE = b"# " + b"x" * 1021 + b"\n"

    def __init__(self, data: bytes):
        self.buffer, self.lines = data, MANIFEST_MB << 10

    def read(self, size=-1):
        while len(self.buffer) < size and self.lines:
            count = min(self.lines, size // len(self.LINE) + 1)
            self.lines -= count
            self.buffer += self.LINE * count
        chunk, self.buffer = self.buffer[:size], self.buffer[size:]
        return chunk


def bloated(template: Path, target: Path) -> None:
    """TEMPLATE with MANIFEST_MB of comment lines appended to its Manifest."""
    with tarfile.open(template) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()
            if member.name.endswith("/Manifest"):
                member.size = len(data) + len(_Padded.LINE) * (MANIFEST_MB << 10)
                new.addfile(member, _Padded(data))
            else:
                new.addfile(member, io.BytesIO(data))


def main() -> None:
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
                       capture_output=True)  # older checkouts: init made 'local'
        subprocess.run([bindir / "swarm-fresh", "-q"], env=env, check=True)
        relative = f"app-misc/example-docs/{template.name}"
        staged = tmp / "swarm" / "state" / "staging" / "local" / relative
        staged.parent.mkdir(parents=True)
        while True:
            job = subprocess.run([bindir / "swarm-delegate", "claim", "--drone", "local"],
                                 env=env, capture_output=True, text=True, check=True).stdout
            if job.startswith(TEMPLATE) or not job:
                break
        bloated(template, staged)
        size, digest = gpkg.file_digest(staged)
        subprocess.run([bindir / "swarm-delegate", "report", "--drone", "local", TEMPLATE, "--ok",
                        "--file", relative, "--sha256", digest], env=env, check=True)
        if os.environ.get("KEEP"):
            return
        proc = subprocess.Popen([bindir / "swarm-sync", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stdout.read().decode()
        print(f"commands from {bindir}")
        print(f"gpkg with a {MANIFEST_MB} MB Manifest: {size / 2**20:.0f} MiB")
        print(f"swarm-sync peak RSS: {usage.ru_maxrss / 1024:.0f} MiB "
              f"(exit {os.waitstatus_to_exitcode(status)})")
        print(f"swarm-sync said: {out.strip()[:300]}")
    finally:
        print("kept", tmp) if os.environ.get("KEEP") else shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
