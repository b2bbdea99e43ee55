"""Publication cost: swarm-sync's O(changed) index update against a full re-index.

Builds one real gpkg with the real emerge, derives 2,010 distinct packages
from it (their metadata rewritten, their Manifest recomputed), indexes 2,000
of them into a binhost with `emaint binhost --fix`, then, side by side:
  - swarm-sync publishing the 10 new packages (whole process: verify, copy,
    one index rewrite);
  - copying the same 10 files into a copy of that binhost plus `emaint
    binhost --fix` over the whole PKGDIR (the way sync-to-binhost.sh would).
Target: swarm-sync at least 5x faster at 2,000 entries.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from timing import timed

from swarmtools import clock, db, delegate
from swarmtools import config as config_mod
from swarmtools.emerge import parse_merge_list
from swarmtools.prefix import create_prefix
from swarmtools.queue import apply_scan

EXISTING, NEW = 2000, 10
TEMPLATE = "app-misc/example-docs-1.0"


def derive(template: Path, index: int, target_dir: Path) -> Path:
    """A copy of the template gpkg that is package app-bench/pkgNNNN-1.0."""
    pn, pf = f"pkg{index:04d}", f"pkg{index:04d}-1.0"
    with tarfile.open(template) as outer:
        members = {m.name.split("/", 1)[1]: outer.extractfile(m).read() for m in outer.getmembers()}
    meta = subprocess.run(["zstd", "-dc"], input=members.pop("metadata.tar.zst"),
                          capture_output=True, check=True).stdout
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(meta)) as old, tarfile.open(fileobj=out, mode="w") as new:
        for m in old.getmembers():
            data = old.extractfile(m).read() if m.isfile() else None
            name = m.name.rsplit("/", 1)[-1]
            if name in ("CATEGORY", "PF", "PN", "P"):
                data = {"CATEGORY": b"app-bench\n", "PF": f"{pf}\n".encode(),
                        "PN": f"{pn}\n".encode(), "P": f"{pf}\n".encode()}[name]
            if data is not None:
                m.size = len(data)
                new.addfile(m, io.BytesIO(data))
            else:
                new.addfile(m)
    members.pop("Manifest")
    members["metadata.tar.gz"] = gzip.compress(out.getvalue(), mtime=0)
    manifest = "".join(
        f"DATA {name} {len(data)} BLAKE2B {hashlib.blake2b(data).hexdigest()}"
        f" SHA512 {hashlib.sha512(data).hexdigest()}\n"
        for name, data in members.items())
    members["Manifest"] = manifest.encode()
    path = target_dir / "app-bench" / pn / f"{pf}-1.gpkg.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    top = f"{pf}-1"
    with tarfile.open(path, "w") as container:
        for name in ("gpkg-1", "metadata.tar.gz", "image.tar.zst", "Manifest"):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(members[name])
            info.mtime = int(time.time())
            container.addfile(info, io.BytesIO(members[name]))
    return path


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-sync-"))
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path) -> None:
    prefix = create_prefix(tmp / "prefix", world=[TEMPLATE.rsplit("-", 1)[0]])
    r = prefix.run(["emerge", "--oneshot", "--buildpkg=y", "--color=n", "=" + TEMPLATE])
    assert r.returncode == 0, r.stderr
    (template,) = prefix.pkgdir.glob("app-misc/example-docs/*.gpkg.tar")
    pool = tmp / "pool"
    started = time.perf_counter()
    packages = [derive(template, i, pool) for i in range(EXISTING + NEW)]
    print(f"derived {len(packages)} gpkgs from {template.name} in {time.perf_counter() - started:.1f} s")

    config_path = Path(subprocess.run([Path(sys.executable).parent / "swarm-config", "init",
                                       "--dir", str(tmp / "swarm")], capture_output=True,
                                      text=True, check=True).stdout.strip())
    config = config_mod.edit(config_path, {"scan": {"environment": prefix.env_overrides()},
                                           "drones": {"d1": {"transport": "local"}}})
    binhost = Path(config.binhost.path)
    for path in packages[:EXISTING]:
        target = binhost / path.relative_to(pool)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    emaint_env = {**prefix.env(), "PKGDIR": str(binhost)}
    print(f"indexing {EXISTING} packages with emaint binhost --fix ...", flush=True)
    first = timed(["emaint", "binhost", "--fix"], emaint_env)
    entries = (binhost / "Packages").read_text().count("\nCPV: ")
    print(f"  {entries} entries in {first:.1f} s")
    copy_binhost = tmp / "binhost-copy"
    shutil.copytree(binhost, copy_binhost, symlinks=True)

    # The 10 new packages as drones leave them: received, in staging/d1/.
    new = packages[EXISTING:]
    scan = "".join(f"[ebuild  N     ] app-bench/{p.parent.name}-1.0::swarm-example  0 KiB\n"
                   for p in new) + f"Total: {NEW} packages\n"
    conn = db.connect(config.database, create=True)
    apply_scan(conn, parse_merge_list(scan), "benchmark", clock.utcnow())
    while job := delegate.claim(conn, config, "d1", clock.utcnow()):
        source = next(p for p in new if p.name.startswith(job["cpv"].split("/")[1] + "-"))
        relative = f"app-bench/{source.parent.name}/{source.name}"
        staged = config.staging_dir / "d1" / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staged)
        delegate.report_built(conn, config, "d1", job["cpv"], relative, clock.utcnow())
    conn.close()

    env = {**os.environ, "SWARM_CONFIG": str(config_path)}
    # A new index is written at least 6 s after the one clients may hold (Portage
    # asks with If-Modified-Since = TIMESTAMP + 5 s); cron's last run is minutes
    # old, emaint's here seconds: let it age first, so the sleep is not timed.
    time.sleep(max(0.0, (binhost / "Packages").stat().st_mtime + 6 - time.time()))
    swarm = timed([Path(sys.executable).parent / "swarm-sync", "-q"], env)
    published = (binhost / "Packages").read_text().count("\nCPV: ")
    assert published == EXISTING + NEW, published

    started = time.perf_counter()
    for path in new:
        target = copy_binhost / path.relative_to(pool)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    full = timed(["emaint", "binhost", "--fix"], {**emaint_env, "PKGDIR": str(copy_binhost)}) + (
        time.perf_counter() - started)
    full_entries = (copy_binhost / "Packages").read_text().count("\nCPV: ")
    assert full_entries == EXISTING + NEW, full_entries
    print(f"binhost with {EXISTING} entries, {NEW} new packages:")
    print(f"{'swarm-sync (verify, copy, one index rewrite)':<48} {swarm:>7.2f} s")
    print(f"{'copy + emaint binhost --fix (whole PKGDIR)':<48} {full:>7.2f} s")
    print(f"{'ratio':<48} {full / swarm:>7.1f} x   (target >= 5x)")


if __name__ == "__main__":
    main()
