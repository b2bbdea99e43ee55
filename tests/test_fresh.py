"""swarm-fresh through its console script: counts, incremental rescans, errors, races."""

import json
import re
import sqlite3
import subprocess

import pytest
from conftest import EMERGE_DATA, emerge_files, write_index

SERVER = EMERGE_DATA / "server-pretend-emptytree-verbose.txt"
GNOME = EMERGE_DATA / "gnome-pretend-emptytree-verbose.txt"


def fresh_json(swarm, *args, input=None):
    r = swarm.run("swarm-fresh", "--json", *args, input=input)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("path", emerge_files(), ids=lambda p: p.name)
def test_every_real_output_fills_the_queue_and_a_rerun_changes_nothing(swarm, path):
    text = path.read_text()
    ebuilds = len(re.findall(r"^\[ebuild", text, re.MULTILINE))
    binaries = len(re.findall(r"^\[binary", text, re.MULTILINE))
    counts = fresh_json(swarm, "--from", str(path))
    # The swarm's binhost is empty: a [binary row is some other binary, built again.
    assert counts["added"] == ebuilds + binaries
    assert counts["binary"] == 0
    assert counts["total"] == ebuilds + binaries
    assert counts["requeued"] == counts["retired"] == 0
    before = swarm.dump()
    again = fresh_json(swarm, "--from", str(path))
    assert again["unchanged"] == again["total"] == counts["total"]
    assert swarm.dump()[: len(before)] == before  # only a new scans row is appended
    assert swarm.query("SELECT count(*) FROM packages")[0][0] == ebuilds + binaries
    assert swarm.query("SELECT count(*) FROM packages WHERE status = 'synced'")[0][0] == 0


def changed_scan(text: str) -> tuple[str, dict[str, str]]:
    """Bump one version, drop one package, flip one USE flag; fix the Total line."""
    lines = text.splitlines(keepends=True)
    rows = [i for i, l in enumerate(lines) if l.startswith("[ebuild")]
    bump, drop = rows[10], rows[20]
    flip = next(i for i in rows[30:] if re.search(r'USE="[^"]*(?<![(\w-])-(\w)', lines[i]))
    names = {}
    names["bumped"] = re.search(r"\] (\S+?)::", lines[bump]).group(1)
    lines[bump] = re.sub(r"(\] \S+?-)(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 1), lines[bump], 1)
    lines[flip] = re.sub(r'(USE="[^"]*?)(?<![(\w-])-(\w[\w+-]*)', r"\1\2", lines[flip], 1)
    names["flipped"] = re.search(r"\] (\S+?)::", lines[flip]).group(1)
    names["dropped"] = re.search(r"\] (\S+?)::", lines.pop(drop)).group(1)
    out = "".join(lines)
    out = re.sub(r"Total: (\d+)", lambda m: f"Total: {int(m.group(1)) - 1}", out)
    return out, names


def test_changed_scan_requeues_two_and_retires_one_with_history(swarm, tmp_path):
    fresh_json(swarm, "--from", str(SERVER))
    # A synced package that changes must be built again.
    conn = sqlite3.connect(swarm.db)
    conn.execute("UPDATE packages SET status = 'synced'")
    conn.commit()
    conn.close()
    text, names = changed_scan(SERVER.read_text())
    changed = tmp_path / "changed.txt"
    changed.write_text(text)
    counts = fresh_json(swarm, "--from", str(changed))
    assert (counts["requeued"], counts["retired"], counts["added"]) == (2, 1, 0)
    assert counts["unchanged"] == counts["total"] - 2
    history = swarm.query(
        "SELECT p.cpv, e.event, e.from_status, e.to_status, e.detail FROM events e"
        " JOIN packages p ON p.id = e.package_id WHERE e.event != 'added' ORDER BY e.id")
    requeued = [h for h in history if h[1] == "requeued"]
    assert len(requeued) == 2
    assert all((frm, to) == ("synced", "needed") for _, _, frm, to, _ in requeued)
    details = {cpv: detail for cpv, _, _, _, detail in requeued}
    assert details[names["flipped"]].startswith("use ")
    bumped = next(d for d in details.values() if d.startswith("cpv "))
    assert bumped.startswith(f"cpv {names['bumped']} -> ")
    retired = [h for h in history if h[1] == "retired"]
    assert [h[0] for h in retired] == [names["dropped"]]
    assert swarm.query("SELECT active FROM packages WHERE cpv = ?", (names["dropped"],)) == [(0,)]
    # And back again: the dropped package returns to the same row, history intact.
    counts = fresh_json(swarm, "--from", str(SERVER))
    assert (counts["added"], counts["requeued"]) == (1, 2)
    assert swarm.query("SELECT count(*) FROM packages")[0][0] == counts["total"]


def test_binary_rows_mark_queued_packages_synced(swarm):
    fresh_json(swarm, "--from", str(EMERGE_DATA / "varieties-24.txt"))
    # varieties-04: [binary   R    ] app-misc/binme-3-2::test_repo  USE="x*"
    write_index(swarm.root / "binhost", [{"CPV": "app-misc/binme-3", "BUILD_ID": "2",
                                          "IUSE": "x", "USE": "x", "REPO": "test_repo"}])
    counts = fresh_json(swarm, "--from", str(EMERGE_DATA / "varieties-04.txt"))
    assert (counts["binary"], counts["retired"], counts["total"]) == (1, 4, 1)  # 4 <= MASS_RETIRE_MIN
    assert swarm.query("SELECT status, build_id FROM packages WHERE cp = 'app-misc/binme'") == [("synced", 2)]


def test_binary_rows_from_elsewhere_are_not_published(swarm):
    # The same CPV on the swarm's binhost, but built with other USE: not this build.
    write_index(swarm.root / "binhost", [{"CPV": "app-misc/binme-3", "BUILD_ID": "2",
                                          "IUSE": "x", "USE": "", "REPO": "test_repo"}])
    counts = fresh_json(swarm, "--from", str(EMERGE_DATA / "varieties-04.txt"))
    assert (counts["binary"], counts["added"]) == (0, 1)
    assert swarm.query("SELECT status FROM packages") == [("needed",)]
    detail = swarm.query("SELECT detail FROM events WHERE event = 'added'")[0][0]
    assert "not on the swarm's binhost" in detail


def test_slot_change_requeues_the_same_row(swarm):
    row = "[ebuild  N     ] dev-lang/slotty-2.1:{}::r  0 KiB\nTotal: 1 package (1 new)\n"
    fresh_json(swarm, "--from", "-", input=row.format(2))
    counts = fresh_json(swarm, "--from", "-", input=row.format(3))
    assert (counts["requeued"], counts["added"], counts["retired"]) == (1, 0, 0)
    assert swarm.query("SELECT slot, active FROM packages") == [("3", 1)]


def test_dry_run_changes_nothing(swarm):
    fresh_json(swarm, "--from", str(SERVER))
    before = swarm.dump()
    counts = fresh_json(swarm, "--dry-run", "--force", "--from", str(GNOME))
    assert counts["dry_run"] is True and counts["added"] > 0 and counts["retired"] > 0
    assert swarm.dump() == before


def test_human_output_lists_changes_and_counts(swarm):
    r = swarm.run("swarm-fresh", "--from", str(EMERGE_DATA / "varieties-10.txt"))
    assert r.returncode == 0
    assert "added" in r.stdout and "app-misc/top-1" in r.stdout
    assert r.stdout.splitlines()[-1] == "4 added, 0 requeued, 0 retired, 0 unchanged, 0 binary, 4 total"
    assert swarm.run("swarm-fresh", "-q", "--from", str(EMERGE_DATA / "varieties-10.txt")).stdout == ""


@pytest.mark.parametrize("content, code, message", [
    (b"", 1, "input is empty"),
    (b"Segmentation fault\n", 1, "no merge list found"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 1, "not text"),
    (b"[ebuild  N     ] ???\n", 1, "not understood"),
    ("truncated", 1, "truncated"),
    ("missing", 2, "No such file"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(swarm, tmp_path, content, code, message):
    fresh_json(swarm, "--from", str(SERVER))
    before = swarm.dump()
    bad = tmp_path / "bad.txt"
    if content == "truncated":
        bad.write_text("".join(GNOME.read_text().splitlines(keepends=True)[:400]))
    elif content != "missing":
        bad.write_bytes(content)
    r = swarm.run("swarm-fresh", "--from", str(bad))
    assert r.returncode == code
    assert message in r.stderr and r.stderr.startswith("swarm-fresh: error: ")
    assert r.stderr.count("\n") == 1 and r.stdout == ""
    assert swarm.dump() == before


def test_two_runs_at_once_neither_corrupt_nor_double(swarm):
    procs = [subprocess.Popen(["swarm-fresh", "--json", "--from", str(GNOME)], env=swarm.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    counts = [json.loads(out) for out, _ in results]
    assert sorted(c["added"] for c in counts) == [0, 848]
    assert sorted(c["unchanged"] for c in counts) == [0, 848]
    assert swarm.query("SELECT count(*), count(DISTINCT cp || ':' || slot) FROM packages") == [(848, 848)]
    assert swarm.query("SELECT count(*) FROM events WHERE event = 'added'") == [(848,)]
    assert swarm.query("PRAGMA integrity_check") == [("ok",)]


def test_two_different_scans_at_once_leave_exactly_one_of_them(swarm):
    procs = [subprocess.Popen(["swarm-fresh", "-q", "--force", "--from", str(path)], env=swarm.env)
             for path in (GNOME, SERVER)]  # --force: either may retire the other's packages
    assert [p.wait() for p in procs] == [0, 0]
    active = swarm.query("SELECT count(*) FROM packages WHERE active = 1")[0][0]
    last = swarm.query("SELECT rows FROM scans ORDER BY id DESC LIMIT 1")[0][0]
    assert active == last and last in (848, 234)


def test_stdin_and_pipe_to_head(swarm):
    counts = fresh_json(swarm, "--from", "-", input=GNOME.read_text())
    assert counts["added"] == 848
    r = subprocess.run("swarm-status --packages | head -1", shell=True, env=swarm.env,
                       capture_output=True, text=True)
    assert r.stderr == "" and json.loads(r.stdout)["status"] == "needed"


def test_a_scan_that_would_empty_the_queue_is_refused(swarm):
    fresh_json(swarm, "--from", str(SERVER))
    before = swarm.dump()
    empty = ("These are the packages that would be merged, in order:\n\n"
             "Total: 0 packages, Size of downloads: 0 KiB\n")
    r = swarm.run("swarm-fresh", "--from", "-", input=empty)
    assert r.returncode == 1 and "would retire 234 of 234" in r.stderr
    assert swarm.dump() == before
    assert fresh_json(swarm, "--force", "--from", "-", input=empty)["retired"] == 234
    # Back unchanged: same rows, same states, nothing to rebuild.
    conn = sqlite3.connect(swarm.db)
    conn.execute("UPDATE packages SET status = 'synced'")
    conn.commit()
    conn.close()
    counts = fresh_json(swarm, "--from", str(SERVER))
    assert counts["added"] == 234
    assert swarm.query("SELECT DISTINCT status, active FROM packages") == [("synced", 1)]


def test_errors_are_appended_to_the_log_file(swarm, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("not emerge output\n")
    r = swarm.run("swarm-fresh", "-q", "--from", str(bad))
    assert r.returncode == 1
    log = (swarm.root / "state" / "swarm.log").read_text()
    assert log.rstrip().endswith(r.stderr.rstrip()) and log.startswith("20")
