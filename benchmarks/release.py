"""A release of a 2,000-package binhost: time to create it, bytes it adds, time to promote it.

The binhost: 2,000 package files of 256 KiB each (500 MiB; their content
does not matter to a release, which only links them) in the categories of
real worlds, listed in a Packages index written by Portage's index code,
and a queue of the same packages.
Prints:
  - swarm-release create, in-process and through the command (target: < 5 s);
  - the bytes the release adds on disk besides its index (new inodes:
    directories and release.json; target: < 1 MB) and its index's size;
  - swarm-release promote (it reads every file to check its digests).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from timing import init_config, timed

from swarmtools import clock, db, release
from swarmtools import config as config_mod
from swarmtools.emerge import parse_merge_list
from swarmtools.queue import apply_scan

PACKAGES = 2000
FILE_BYTES = 256 << 10


def world_scan() -> str:
    """PACKAGES packages in the categories of real worlds (the gnome and server scans
    in tests/data, 852 packages in 83 categories), made up ones added round-robin."""
    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "emerge"
    cps = sorted({row.cp for name in ("gnome", "server") for row in parse_merge_list(
        (data / f"{name}-pretend-emptytree-verbose.txt").read_text()).rows})
    categories = sorted({cp.split("/")[0] for cp in cps})
    while len(cps) < PACKAGES:
        cps.append(f"{categories[len(cps) % len(categories)]}/made-up{len(cps)}")
    rows = "".join(f"[ebuild  N     ] {cp}-1.0::gentoo  0 KiB\n" for cp in cps[:PACKAGES])
    return f"{rows}\nTotal: {PACKAGES} packages, Size of downloads: 0 KiB\n"


def make_binhost(binhost: Path, conn) -> None:
    """Package files and their Portage index; the queue wants the same packages."""
    from portage.getbinpkg import PackageIndex

    scan = world_scan()
    rows = parse_merge_list(scan).rows
    apply_scan(conn, parse_merge_list(scan), "benchmark", clock.utcnow())
    index = PackageIndex()
    index.header.update({"CHOST": "x86_64-pc-linux-gnu", "VERSION": "0",
                         "TIMESTAMP": str(int(time.time()))})
    block = os.urandom(FILE_BYTES)
    for n, row in enumerate(rows):
        category, pf = row.cpv.split("/")
        pn = row.cp.split("/")[1]
        relative = f"{category}/{pn}/{pf}-1.gpkg.tar"
        path = binhost / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = n.to_bytes(4, "big") + block[4:]
        path.write_bytes(data)
        index.packages.append({"CPV": row.cpv, "PATH": relative, "SIZE": str(len(data)),
                               "SHA1": hashlib.sha1(data).hexdigest(),
                               "MD5": hashlib.md5(data).hexdigest(), "BUILD_ID": "1",
                               "SLOT": row.slot or "0", "USE": row.enabled_use(),
                               "REPO": row.repo or "gentoo"})
    index.header["PACKAGES"] = str(len(index.packages))
    text = io.StringIO()
    index.write(text)
    (binhost / "Packages").write_text(text.getvalue())


def added_bytes(directory: Path) -> tuple[int, int]:
    """(bytes of inodes only this release has, its index's bytes), as allocated on disk."""
    added = index = 0
    for path in [directory, *directory.rglob("*")]:
        st = path.lstat()
        if st.st_nlink > 1 and not path.is_dir():
            continue  # a hardlink: the binhost's file
        if path.name in ("Packages", "Packages.gz"):
            index += st.st_blocks * 512
        else:
            added += st.st_blocks * 512
    return added, index


def main() -> None:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        path = init_config(tmp)
        config = config_mod.load(path)
        conn = db.connect(config.database, create=True)
        binhost = Path(config.binhost.path)
        binhost.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        make_binhost(binhost, conn)
        print(f"binhost: {PACKAGES} packages of {FILE_BYTES >> 10} KiB "
              f"(made in {time.perf_counter() - started:.1f} s)")
        started = time.perf_counter()
        info = release.create(config, conn, clock.utcnow(), "1.0")
        in_process = time.perf_counter() - started
        env = {**os.environ, "SWARM_CONFIG": str(path)}
        command = timed([bindir / "swarm-release", "create", "2.0"], env)
        added, index = added_bytes(release.root(config) / "2.0")
        started = time.perf_counter()
        release.promote(config, conn, "2.0", "stable", clock.utcnow(), "benchmark")
        promote = time.perf_counter() - started
        conn.close()
        print(f"create: {in_process:.2f} s in-process, {command:.2f} s swarm-release create "
              f"(target < 5 s: {'met' if max(in_process, command) < 5 else 'NOT met'})")
        print(f"a release adds {added:,} bytes besides its index (target < 1 MB: "
              f"{'met' if added < 1_000_000 else 'NOT met'}); its index: {index:,} bytes; "
              f"the packages it links: {info['bytes']:,} bytes")
        print(f"promote (reads and hashes every file): {promote:.2f} s")
        print(json.dumps({"packages": PACKAGES, "create_s": round(in_process, 3),
                          "command_s": round(command, 3), "added_bytes": added,
                          "index_bytes": index, "promote_s": round(promote, 3)}))


if __name__ == "__main__":
    main()
