"""swarm-fresh running the real emerge in a throw-away Portage prefix."""

import json
import shutil

import pytest

from swarmtools.prefix import EXAMPLE_REPO

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test


def scan(swarm):
    r = swarm.run("swarm-fresh", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ebuild_count() -> int:
    return len(list(EXAMPLE_REPO.glob("*/*/*.ebuild")))


def test_real_scan_queues_every_ebuild_in_merge_order(emerge_swarm):
    counts = scan(emerge_swarm)
    assert counts == {"added": ebuild_count(), "requeued": 0, "retired": 0,
                      "unchanged": 0, "binary": 0, "shared": 0,
                      "total": ebuild_count(), "forgotten": 0}
    rows = emerge_swarm.query("SELECT cp, slot, repo, scan_order FROM packages ORDER BY scan_order")
    assert {r[2] for r in rows} == {"swarm-example"}
    assert {(cp, slot) for cp, slot, _, _ in rows} >= {("dev-lang/example-lang", "1"),
                                                       ("dev-lang/example-lang", "2")}
    order = [cp for cp, *_ in rows]
    # Dependencies come before what needs them.
    assert order.index("sys-apps/example-base") < order.index("dev-libs/libfoo")
    assert order.index("dev-libs/libfoo") < order.index("dev-libs/libbar")
    assert order.index("dev-libs/libbar") < order.index("app-misc/example-app")
    assert scan(emerge_swarm)["unchanged"] == ebuild_count()


def test_version_bump_and_use_change_in_the_tree_requeue(emerge_swarm, prefix):
    scan(emerge_swarm)
    docs = prefix.repo / "app-misc" / "example-docs"
    shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
    (prefix.root / "etc" / "portage" / "package.use").write_text("app-misc/example-app -compress\n")
    counts = scan(emerge_swarm)
    # example-docs bumped, example-app's USE changed, libcompress no longer needed.
    assert (counts["requeued"], counts["retired"], counts["added"]) == (2, 1, 0)
    events = emerge_swarm.query(
        "SELECT p.cp, e.event, e.detail FROM events e JOIN packages p ON p.id = e.package_id"
        " WHERE e.event IN ('requeued', 'retired') ORDER BY p.cp")
    assert events == [
        ("app-misc/example-app", "requeued", "use compress -> -"),
        ("app-misc/example-docs", "requeued",
         "cpv app-misc/example-docs-1.0 -> app-misc/example-docs-1.1"),
        ("dev-libs/libcompress", "retired", "no longer in the merge list"),
    ]


def test_failed_emerge_is_an_error_and_changes_nothing(emerge_swarm, prefix):
    scan(emerge_swarm)
    before = emerge_swarm.dump()
    make_conf = prefix.root / "etc" / "portage" / "make.conf"
    make_conf.write_text(make_conf.read_text() + 'CFLAGS="-O2\n')  # emerge cannot start
    r = emerge_swarm.run("swarm-fresh")
    assert r.returncode == 1, r.stderr
    # Portage's own complaint may come first, as a warning; the error is emerge's.
    error = r.stderr.splitlines()[-1]
    assert error.startswith("swarm-fresh: error: 'emerge --pretend") and "exit code 1" in error
    assert emerge_swarm.dump() == before


def test_broken_world_file_does_not_empty_the_queue(emerge_swarm, prefix):
    scan(emerge_swarm)
    before = emerge_swarm.dump()
    # emerge warns on stderr, lists nothing, and exits 0.
    (prefix.root / "var" / "lib" / "portage" / "world").write_text("app-misc/no-such-package\n")
    r = emerge_swarm.run("swarm-fresh")
    assert r.returncode == 1
    assert "emerge: !!! Problems have been detected with your world file" in r.stderr
    assert "would retire 12 of 12" in r.stderr.splitlines()[-1]
    assert emerge_swarm.dump() == before
