"""Real emerge runs in throw-away prefixes built by swarmtools.prefix."""

import re
import subprocess
import sys

import pytest

pytest.importorskip("portage")  # the PyPI wheel, from the test extra

from swarmtools.prefix import EXAMPLE_REPO, create_prefix

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

LEAF = "app-misc/example-docs-1.0"  # no dependencies: builds alone


def merge_rows(stdout: str) -> dict[str, str]:
    """Map each CPV of an `emerge --pretend --color=n` list to its row type."""
    rows = {}
    for m in re.finditer(r"^\[(\w+)[^\]]*\] (\S+)", stdout, re.MULTILINE):
        # "dev-libs/libfoo-1.2:0/1.2::repo" -> "dev-libs/libfoo-1.2"
        rows[m.group(2).split("::")[0].split(":")[0]] = m.group(1)
    return rows


def example_cpvs() -> set[str]:
    """CAT/PF of every ebuild file in the example repository."""
    return {f"{p.parent.parent.name}/{p.stem}" for p in EXAMPLE_REPO.glob("*/*/*.ebuild")}


def test_pretend_world_lists_every_ebuild(tmp_path):
    prefix = create_prefix(tmp_path / "p")
    r = prefix.run(["emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "@world"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "!!!" not in r.stderr, r.stderr
    rows = merge_rows(r.stdout)
    assert len(example_cpvs()) >= 12
    assert rows == {cpv: "ebuild" for cpv in example_cpvs()}
    # Both slots of the slotted package are in the world and in the list.
    assert re.search(r"example-lang-1\.9:1::swarm-example", r.stdout)
    assert re.search(r"example-lang-2\.3:2::swarm-example", r.stdout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A prefix in which LEAF was built with --buildpkg (shared: ~2-3 s)."""
    prefix = create_prefix(tmp_path_factory.mktemp("builder"))
    r = prefix.run(["emerge", "--oneshot", "--buildpkg=y", "--color=n", "=" + LEAF])
    return prefix, r


def test_buildpkg_writes_gpkg(built):
    prefix, r = built
    assert r.returncode == 0, r.stdout + r.stderr
    cat, pf = LEAF.split("/")
    pn = pf.rsplit("-", 1)[0]
    # binpkg-multi-instance (default): PF-BUILD_ID.gpkg.tar
    assert [p.name for p in (prefix.pkgdir / cat / pn).glob("*.gpkg.tar")] == [f"{pf}-1.gpkg.tar"]
    # emerge --buildpkg writes the index itself; no `emaint binhost --fix` needed
    # (that is only for files copied into a PKGDIR by hand).
    assert f"CPV: {LEAF}" in (prefix.pkgdir / "Packages").read_text()
    assert (prefix.root / "var/db/pkg" / LEAF).is_dir()


@pytest.fixture
def http_server(built):
    """Serve the builder's PKGDIR on 127.0.0.1; yield (url, process)."""
    # Port 0 lets the kernel pick a free port (no race); -u so the
    # "Serving HTTP on 127.0.0.1 port N" line is not stuck in a buffer.
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
         "--directory", str(built[0].pkgdir), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = re.search(r" port (\d+)", proc.stdout.readline()).group(1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_client_sees_binary_from_binhost(tmp_path, built, http_server):
    url, server = http_server
    emerge = ["emerge", "--pretend", "--getbinpkg=y", "--usepkg=y", "--color=n", "=" + LEAF]

    # Control: the same command without a binhost can only offer the ebuild.
    plain = create_prefix(tmp_path / "plain").run(emerge)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert merge_rows(plain.stdout) == {LEAF: "ebuild"}

    client = create_prefix(tmp_path / "client", binhost_url=url)
    r = client.run(emerge)
    assert r.returncode == 0, r.stdout + r.stderr
    # Binaries may carry -BUILD_ID: "app-misc/example-docs-1.0-1".
    assert merge_rows(r.stdout) == {LEAF + "-1": "binary"}
    # "g": still to be downloaded, i.e. it came from the remote index.
    assert re.search(r"^\[binary +N g +\] " + re.escape(LEAF), r.stdout, re.MULTILINE), r.stdout

    server.terminate()
    log = server.communicate(timeout=10)[1]
    assert re.search(r'"GET /Packages(\.gz)? HTTP', log), log
