"""Package control: exclusion rules, failure memory, capability routing, grounding, why."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import DroneSwarm, Swarm, add_drones, ebuild, one_line_error, script, synthetic_scan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmtools import clock, db, delegate, exclude, routing
from swarmtools import config as config_mod
from swarmtools.build import failure_kind
from swarmtools.emerge import parse_merge_list
from swarmtools.packages import FailureKind
from swarmtools.queue import apply_scan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AMD64 = "x86_64-pc-linux-gnu"
CLASS_X = {"chost": AMD64, "cflags": "-O2 -pipe"}
CLASS_Y = {"chost": AMD64, "cflags": "-O3 -march=native"}


def scan(rows: list[str]) -> str:
    """An emerge --pretend --verbose list of ROWS (CATEGORY/PF and what follows)."""
    lines = "".join(f"[ebuild  N     ] {row}  0 KiB\n" for row in rows)
    return f"{lines}\nTotal: {len(rows)} packages ({len(rows)} new), Size of downloads: 0 KiB\n"


def beat(swarm: Swarm, drone: str, facts: dict) -> None:
    swarm.verb("heartbeat", drone, input=json.dumps(facts))


def claim(swarm: Swarm, drone: str) -> str | None:
    answers = swarm.verb("claim", drone)
    return answers[0]["cpv"] if answers else None


def claims(swarm: Swarm, drone: str, limit: int) -> list[str]:
    """Up to LIMIT fresh claims in one run (a second plain claim would renew the first)."""
    return [answer["cpv"] for answer in swarm.verb("claim", drone, limit=limit)]


def fail(swarm: Swarm, drone: str, cpv: str, kind: str = "build") -> dict:
    (answer,) = swarm.verb("report", drone, cpv=cpv, failed=True, kind=kind)
    return answer


def auto_rules(swarm: Swarm) -> list[dict]:
    r = swarm.run("swarm-exclude", "list", "--auto", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture
def control(tmp_path, monkeypatch) -> Swarm:
    """Drones x1, x2 (class X), y1 (class Y); no back-off, so a failed package comes back."""
    pytest.importorskip("portage")
    s = Swarm(tmp_path / "swarm")
    add_drones(s.config, {name: {"transport": "local"} for name in ("x1", "x2", "y1")})
    config_mod.edit(s.config, {"delegate": {"retry_seconds": 0, "policy": "first"}})
    monkeypatch.setenv("SWARM_CONFIG", str(s.config))
    db.connect(s.db, create=True).close()
    for name, facts in (("x1", CLASS_X), ("x2", CLASS_X), ("y1", CLASS_Y)):
        beat(s, name, facts)
    return s


# --- exclusion rules -------------------------------------------------------

ATOMS = ["app-misc/*", "*/*-bin", ">=dev-libs/lib-2", "dev-libs/lib:*", "sys-apps/*::gentoo",
         "=app-misc/tool-1.0", "sys-apps/core", "*/*", "dev-libs/lib:1"]
PACKAGES = ["app-misc/tool-1.0", "app-misc/tool-bin-2.0", "dev-libs/lib-1.5:1", "dev-libs/lib-2.1:2",
            "sys-apps/core-3", "sys-apps/core-bin-1", "media-libs/x-0.1", "dev-libs/other-bin-4"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(st.tuples(st.sampled_from(ATOMS),
                                st.sampled_from(["every", "d0", "d1", "d2", "class:X", "class:Y"])),
                      max_size=5),
       queue=st.lists(st.sampled_from(PACKAGES), min_size=1, max_size=8, unique=True),
       classes=st.lists(st.sampled_from(["X", "Y"]), min_size=3, max_size=3),
       order=st.randoms(use_true_random=False))
def test_claims_never_go_to_a_drone_a_rule_covers_and_always_to_the_others(rules, queue, classes,
                                                                           order):
    pytest.importorskip("portage")
    from portage.dep import Atom, match_from_list
    from portage.versions import _pkg_str

    with tempfile.TemporaryDirectory() as tmp:
        config = config_mod.edit(_init(Path(tmp)), {
            "drones": {f"d{i}": {"transport": "local"} for i in range(3)},
            "delegate": {"policy": "first"}})
        conn = db.connect(config.database, create=True)
        apply_scan(conn, parse_merge_list(scan([f"{p}::gentoo" for p in queue])), "test", T0)
        facts = {"X": CLASS_X, "Y": CLASS_Y}
        for i, name in enumerate(classes):
            delegate.heartbeat(conn, config, f"d{i}", facts[name], T0)
        for atom, scope in rules:
            drone = scope if scope.startswith("d") else None
            if scope.startswith("class:"):  # as failure memory makes them
                conn.execute("INSERT INTO exclusions (atom, class, reason, source, who, at)"
                             " VALUES (?, ?, 'test', 'auto', 'test', ?)",
                             (atom, routing.build_class(facts[scope[6:]]), T0.isoformat()))
            else:
                exclude.add(conn, config, [(1, atom)], "test", "test", T0, drone=drone)
        exclude.refresh(conn, config, T0)

        def covered(cpv: str, drone: str) -> bool:
            slot = next(p.partition(":")[2] or "0" for p in queue if p.split(":")[0] == cpv)
            pkg = _pkg_str(cpv, slot=slot, repo="gentoo")
            my_class = classes[int(drone[1:])]
            return any(match_from_list(Atom(atom, allow_wildcard=True, allow_repo=True), [pkg])
                       and scope in ("every", drone, f"class:{my_class}") for atom, scope in rules)

        drones = ["d0", "d1", "d2"]
        claimed, idle = {}, set()
        while len(idle) < len(drones):
            drone = order.choice([d for d in drones if d not in idle])
            job = delegate.claim(conn, config, drone, T0, renew=False)
            if job is None:
                idle.add(drone)
                continue
            assert not covered(job["cpv"], drone), (job["cpv"], drone, rules)
            claimed[job["cpv"]] = drone
        left = [r[0] for r in conn.execute("SELECT cpv FROM packages WHERE status = 'needed'")]
        # What is left is covered for every drone; everything else was handed out.
        for cpv in left:
            assert all(covered(cpv, d) for d in drones), (cpv, rules)
        assert set(claimed) | set(left) == {p.split(":")[0] for p in queue}
        conn.close()


def _init(root: Path) -> Path:
    return Path(config_mod.init(root))


def test_add_from_stdin_is_all_or_nothing_and_check_exits_like_grep(control):
    control.scan(scan(["app-misc/foo-1.0::gentoo", "dev-util/tool-bin-2::gentoo"]))
    r = control.run("swarm-exclude", "add", "-", "--reason", "bad",
                    input="# keep these\napp-misc/foo\n\n>=dev-util/x-1 extra\n")
    assert r.returncode == 2
    one_line_error(r, "swarm-exclude")
    assert "line 4" in r.stderr and "nothing was added" in r.stderr
    assert control.run("swarm-exclude", "list", "--json").stdout == ""
    r = control.run("swarm-exclude", "add", "-", "--reason", "licence", "--json",
                    input="*/*-bin   # binaries from upstream\nsys-kernel/never-here\n")
    assert r.returncode == 0, r.stderr
    added = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(a["atom"], a["matches"]) for a in added] == [("*/*-bin", 1),
                                                          ("sys-kernel/never-here", 0)]
    assert "rule 2 (sys-kernel/never-here) matches nothing" in r.stderr
    r = control.run("swarm-exclude", "check", "dev-util/tool-bin-2")
    assert r.returncode == 0 and "*/*-bin" in r.stdout and "licence" in r.stdout
    r = control.run("swarm-exclude", "check", "app-misc/foo-1.0")
    assert (r.returncode, r.stdout) == (1, "")
    r = control.run("swarm-exclude", "check", "not-a-cpv")
    assert r.returncode == 2
    one_line_error(r, "swarm-exclude")
    # Every drone is covered: nobody claims the -bin package.
    assert {claim(control, d) for d in ("x1", "x2", "y1")} == {"app-misc/foo-1.0", None}
    assert control.run("swarm-exclude", "remove", "*/*-bin").returncode == 0
    assert claim(control, "y1") == "dev-util/tool-bin-2"
    r = control.run("swarm-exclude", "remove", "999")
    assert r.returncode == 1


def test_failed_packages_piped_from_status_are_excluded_by_version(control):
    control.scan(scan(["app-misc/foo-1.0::gentoo", "app-misc/bar-2::gentoo"]))
    assert claim(control, "x1") == "app-misc/foo-1.0"
    fail(control, "x1", "app-misc/foo-1.0")
    listed = control.run("swarm-status", "--packages", "--state", "failed").stdout
    cpvs = "".join(json.loads(line)["cpv"] + "\n" for line in listed.splitlines())  # jq -r .cpv
    assert cpvs == "app-misc/foo-1.0\n"
    r = control.run("swarm-exclude", "add", "-", "--reason", "bug 123", input=cpvs)
    assert r.returncode == 0, r.stderr
    (rule,) = [json.loads(line) for line in
               control.run("swarm-exclude", "list", "--json").stdout.splitlines()]
    assert (rule["atom"], rule["matches"]) == ("=app-misc/foo-1.0", 1)
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.1").returncode == 1


def test_a_drone_rule_keeps_it_from_that_drone_only(control):
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    r = control.run("swarm-exclude", "add", "app-misc/foo", "--drone", "x1", "--reason", "old kernel")
    assert r.returncode == 0, r.stderr
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.0", "--drone", "x2").returncode == 1
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.0", "--drone", "x1").returncode == 0
    assert claim(control, "x1") is None
    why = json.loads(control.run("swarm-status", "--why", "app-misc/foo-1.0", "--json").stdout)
    x1 = next(d for d in why["drones"] if d["drone"] == "x1")
    assert x1["reasons"][0]["rule"] == "excluded" and "old kernel" in x1["reasons"][0]["why"]
    assert why["eligible_for"] == ["x2", "y1"]
    assert claim(control, "x2") == "app-misc/foo-1.0"


def test_a_package_is_not_left_to_a_faster_drone_a_rule_keeps_from_it(control):
    """The critical-path policy leaves a package to the drone that would finish it first,
    but only to one whose own rules let it build it: else nobody would ever claim it."""
    add_drones(control.config, {"x1": {"transport": "local"},
                                "x2": {"transport": "local", "speed": 4.0},
                                "y1": {"transport": "local"}})
    config_mod.edit(control.config, {"delegate": {"policy": "critical"}})
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    r = control.run("swarm-exclude", "add", "app-misc/foo", "--drone", "x2", "--reason", "no room")
    assert r.returncode == 0, r.stderr
    assert claim(control, "x1") == "app-misc/foo-1.0"


def with_exclusion_file(control, tmp_path, text: str, cpvs: list[str], **settings):
    """Exclusion file TEXT in the config (with more SETTINGS), then a scan of CPVS."""
    mask = tmp_path / "swarm.mask"
    mask.write_text(text)
    config_mod.edit(control.config, {"exclude": {"file": str(mask)}, **settings})
    control.scan(scan(cpvs))
    return mask


def test_the_exclusion_file_is_read_as_package_mask(control, tmp_path):
    mask = with_exclusion_file(control, tmp_path, "# kept in git\n>=app-misc/foo-2  # too new\n",
                               ["app-misc/foo-2.1::gentoo", "app-misc/bar-1::gentoo"])
    r = control.run("swarm-exclude", "check", "app-misc/foo-2.1")
    assert r.returncode == 0 and "swarm.mask line 2" in r.stdout
    assert claims(control, "x1", 2) == ["app-misc/bar-1"]
    mask.write_text("")  # the file changed: the next claim matches again
    assert claim(control, "x2") == "app-misc/foo-2.1"
    mask.write_text("this is not an atom\n")
    r = control.run("swarm-exclude", "list")
    assert r.returncode == 2 and "swarm.mask line 1" in r.stderr


def test_an_exclusion_file_that_is_not_utf8_keeps_the_previous_rules(control, tmp_path):
    mask = with_exclusion_file(control, tmp_path, "app-misc/foo\n",
                               ["app-misc/foo-1.0::gentoo", "app-misc/bar-1::gentoo"])
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.0").returncode == 0
    # Saved in Latin-1 by an editor: line 2 is no UTF-8 text; line 3 would exclude bar.
    mask.write_bytes(b"app-misc/foo\n# caf\xe9 owner's list\napp-misc/bar\n")
    r = control.run("swarm-delegate", "claim", "--drone", "x1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cpv"] == "app-misc/bar-1"  # the previous rules: foo only
    assert "swarm.mask line 2" in r.stderr and "UTF-8" in r.stderr
    assert claim(control, "x2") is None  # foo stays excluded
    for args in (["list"], ["check", "app-misc/foo-1.0"]):
        r = control.run("swarm-exclude", *args)
        assert r.returncode == 2, (args, r.stderr)
        one_line_error(r, "swarm-exclude")
        assert "swarm.mask line 2" in r.stderr and "UTF-8" in r.stderr
    r = control.run("swarm-exclude", "add", "app-misc/baz", "--reason", "not ours")
    assert r.returncode == 0, r.stderr
    mask.write_text("app-misc/bar\n")  # fixed: read again, foo is free
    assert claim(control, "x2") == "app-misc/foo-1.0"


def test_rules_are_matched_while_no_transaction_is_open(control, tmp_path, monkeypatch):
    """Portage matches rules while the database is free: claims never wait for it."""
    import portage.dep

    mask = with_exclusion_file(control, tmp_path, "app-misc/foo\n",
                               ["app-misc/foo-1.0::gentoo", "app-misc/bar-1::gentoo",
                                "sci-libs/big-2::gentoo"],
                               route=[{"match": "sci-libs/*", "requires": ["big"]}])
    config = config_mod.load(control.config)
    conn = db.connect(config.database)
    asked = []
    real = portage.dep.match_from_list

    def spy(atom, candidates):
        asked.append(conn.in_transaction)
        return real(atom, candidates)
    monkeypatch.setattr(portage.dep, "match_from_list", spy)
    added = exclude.add(conn, config, [(1, "app-misc/bar"), (2, "*/*")], "test", "test",
                        clock.utcnow(), drone="x2")
    assert [rule["matches"] for rule in added] == [1, 3]
    mask.write_text("app-misc/bar\n")  # the next claim matches the file again
    assert delegate.claim(conn, config, "x1", clock.utcnow())["cpv"] == "app-misc/foo-1.0"
    assert len(asked) >= 4 and not any(asked)
    conn.close()


def test_claims_go_on_while_thousands_of_rules_are_added(control):
    # The add used to count each rule's matches holding the write lock: quadratic, and
    # claims waited (20,000 rules: tens of seconds; 60,000: minutes, then "busy").
    control.scan(synthetic_scan(2000))
    lines = "".join(f"app-test/pkg{i % 2000}-1.0\n" for i in range(20_000))
    add = subprocess.Popen([script("swarm-exclude"), "add", "-", "--drone", "x2", "--reason",
                            "bulk"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=control.env)
    add.stdin.write(lines)
    add.stdin.close()
    waits = []
    while add.poll() is None:
        started = time.monotonic()
        r = control.run("swarm-delegate", "claim", "--drone", "x1", "--json")
        waits.append(time.monotonic() - started)
        assert r.returncode == 0, r.stderr
    assert add.returncode == 0, add.stderr.read()
    assert waits and max(waits) < 5, waits
    assert control.query("SELECT count(*) FROM excluded") == [(20_000,)]


# --- failure memory ----------------------------------------------------------

def test_three_failures_in_one_class_exclude_for_that_class_only(control):
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    answers = []
    for drone in ("x1", "x2", "x1"):
        assert claim(control, drone) == "app-misc/foo-1.0"
        answers.append(fail(control, drone, "app-misc/foo-1.0"))
    assert [a["excluded"] for a in answers] == [None, None, f"{AMD64}|-O2 -pipe"]
    (rule,) = auto_rules(control)
    assert rule["class"] == f"{AMD64}|-O2 -pipe" and "failed 3 times" in rule["reason"]
    assert claim(control, "x2") is None and claim(control, "x1") is None
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.0", "--drone", "x1").returncode == 0
    assert control.run("swarm-exclude", "check", "app-misc/foo-1.0", "--drone", "y1").returncode == 1
    # A drone of another class still gets it.
    assert claim(control, "y1") == "app-misc/foo-1.0"
    # A new version lifts the automatic exclusion.
    control.run("swarm-delegate", "release", "--drone", "y1", "app-misc/foo-1.0")
    control.scan(scan(["app-misc/foo-1.1::gentoo"]))
    assert auto_rules(control) == []
    assert claim(control, "x1") == "app-misc/foo-1.1"


def test_failing_in_every_class_excludes_everywhere(control):
    add_drones(control.config, {name: {"transport": "local"} for name in ("x1", "x2", "y1", "y2")})
    beat(control, "y2", CLASS_Y)
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    config_mod.edit(control.config, {"exclude": {"auto_failures": 1}})
    answers = []
    for drone in ("x1", "x2", "y1", "y2"):  # a class needs failures on two of its drones
        assert claim(control, drone) == "app-misc/foo-1.0"
        answers.append(fail(control, drone, "app-misc/foo-1.0")["excluded"])
    assert answers == [None, f"{AMD64}|-O2 -pipe", None, "everywhere"]
    assert [r["scope"] for r in auto_rules(control)] == [f"class {AMD64}|-O2 -pipe", "every drone"]
    assert all(claim(control, d) is None for d in ("x1", "x2", "y1", "y2"))


def _as_drone(control: Swarm, drone: str, command: str, input: str | None = None):
    """COMMAND as DRONE sends it over ssh: through the gateway its key is pinned to."""
    return control.run("swarm-delegate", "gateway", "--drone", drone, "--config",
                       str(control.config), input=input,
                       env={**control.env, "SSH_ORIGINAL_COMMAND": command})


def test_one_drone_cannot_exclude_a_package_for_the_fleet(control):
    # y1 sends x1's and x2's CHOST and CFLAGS, then fails the package again and again.
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    r = _as_drone(control, "y1", "swarm-delegate heartbeat --json", input=json.dumps(CLASS_X))
    assert r.returncode == 0, r.stderr
    answers = []
    for _ in range(3):
        r = _as_drone(control, "y1", "swarm-delegate claim --json")
        assert r.returncode == 0 and json.loads(r.stdout)["cpv"] == "app-misc/foo-1.0", r.stderr
        r = _as_drone(control, "y1", "swarm-delegate report app-misc/foo-1.0 --failed --json")
        assert r.returncode == 0, r.stderr
        answers.append(json.loads(r.stdout)["excluded"])
    assert answers == [None, None, None]
    assert auto_rules(control) == []
    # A failure on a second drone of the class: now it is excluded, and the rule says why.
    assert claim(control, "x1") == "app-misc/foo-1.0"
    assert fail(control, "x1", "app-misc/foo-1.0")["excluded"] is not None
    (rule,) = auto_rules(control)
    assert "failed 4 times on 2 drones of class" in rule["reason"], rule["reason"]
    assert "x1, y1" in rule["reason"]


def test_a_drone_that_changes_its_class_counts_in_one_class_only(control):
    add_drones(control.config, {name: {"transport": "local"} for name in ("x1", "x2", "y1", "y2")})
    beat(control, "y2", CLASS_Y)
    config_mod.edit(control.config, {"exclude": {"auto_failures": 1}})
    control.scan(scan(["app-misc/foo-1.0::gentoo"]))
    for drone in ("x1", "x2", "y1"):
        assert claim(control, drone) == "app-misc/foo-1.0"
        fail(control, drone, "app-misc/foo-1.0")
    # x2 now says it is of class Y: its failures count there, and no longer in class X.
    beat(control, "x2", CLASS_Y)
    assert claim(control, "x2") == "app-misc/foo-1.0"
    assert fail(control, "x2", "app-misc/foo-1.0")["excluded"] == f"{AMD64}|-O3 -march=native"
    assert [r["scope"] for r in auto_rules(control)] == [
        f"class {AMD64}|-O2 -pipe", f"class {AMD64}|-O3 -march=native"]


def test_a_full_disk_excludes_nothing(control):
    # One failure would be enough to exclude a package, were it the package's.
    config_mod.edit(control.config, {"exclude": {"auto_failures": 1}})
    control.scan(scan([f"app-misc/p{i}-1::gentoo" for i in range(4)]))
    for _ in range(8):  # every package twice on one drone: a full disk each time
        cpv = claim(control, "x1")
        answer = fail(control, "x1", cpv, kind="environment")
        assert (answer["status"], answer["attempts"], answer["excluded"]) == ("needed", 0, None)
    assert auto_rules(control) == []
    assert control.query("SELECT count(*) FROM packages WHERE status = 'needed'") == [(4,)]
    # Eight in a row grounded it (the drone's trouble), and another drone builds them.
    r = control.run("swarm-delegate", "claim", "--drone", "x1")
    assert r.returncode == 1 and "grounded until" in r.stderr
    assert claim(control, "x2") == "app-misc/p0-1"


def test_the_drone_tells_a_full_disk_and_a_fetch_failure_from_a_build_failure(tmp_path):
    log = tmp_path / "failure.log"
    log.write_text(">>> Compiling source\ncp: error writing '/dev/full': No space left on device\n"
                   " * ERROR: app-misc/foo-1::gentoo failed (compile phase):\n")
    assert failure_kind(log) == FailureKind.ENVIRONMENT
    log.write_text(">>> Downloading 'https://example.invalid/foo-1.tar.gz'\n"
                   "!!! Couldn't download 'foo-1.tar.gz'. Aborting.\n"
                   " * Fetch failed for 'app-misc/foo-1', Log file:\n")
    assert failure_kind(log) == FailureKind.FETCH
    log.write_text("foo.c:3:1: error: expected ';' before '}' token\n"
                   " * ERROR: app-misc/foo-1::gentoo failed (compile phase):\n")
    assert failure_kind(log) == FailureKind.BUILD


@pytest.mark.slow
def test_a_real_full_disk_is_the_drones_trouble(tmp_path):
    """The kernel's own ENOSPC (writing to /dev/full), in a real emerge on a real drone."""
    pytest.importorskip("portage")
    body = 'src_compile() { cp "${T}/environment" /dev/full || die "cannot write"; }\n'
    swarm = DroneSwarm(tmp_path, drones=("d1",), world=["app-misc/full"],
                       delegate={"lease_seconds": 60, "heartbeat_seconds": 1, "poll_seconds": 1},
                       extra_ebuilds={"app-misc/full/full-1.ebuild": ebuild(body)})
    config_mod.edit(swarm.config, {"exclude": {"auto_failures": 1}})
    swarm.scan()
    d1 = swarm.drone("d1", "--once")
    d1.communicate(timeout=180)
    assert swarm.query("SELECT kind FROM events WHERE event = 'build-failed'") == [("environment",)]
    assert swarm.query("SELECT status, attempts FROM packages") == [("needed", 0)]
    assert auto_rules(swarm) == []


# --- grounding -----------------------------------------------------------------

def test_a_broken_drone_is_grounded_and_its_failures_count_against_no_package(control):
    config_mod.edit(control.config, {"exclude": {"auto_failures": 2, "ground_after": 6}})
    cpvs = [f"app-misc/p{i}-1" for i in range(5)]
    control.scan(scan([f"{c}::gentoo" for c in cpvs]))
    assert claims(control, "x2", 4) == cpvs[:4]
    for cpv in cpvs[:4]:  # each fails once on another drone of x1's class
        fail(control, "x2", cpv)
    failed = []
    for _ in range(6):
        cpv = claim(control, "x1")
        assert cpv is not None
        failed.append(fail(control, "x1", cpv))
    assert [a["cpv"] for a in failed] == cpvs + cpvs[4:]
    # It did exclude on the way (a second drone's failure each)...
    assert [a["excluded"] for a in failed[:5]] == [f"{AMD64}|-O2 -pipe"] * 4 + [None]
    assert failed[-1]["grounded"]
    assert auto_rules(control) == []  # ...and the grounding lifted it
    for cpv in cpvs:
        assert control.run("swarm-exclude", "check", cpv, "--drone", "x2").returncode == 1
    assert control.query("SELECT cpv, status, attempts FROM packages ORDER BY cpv") == [
        (cpv, "needed", 1 if cpv in cpvs[:4] else 0) for cpv in cpvs]  # x2's failures count
    r = control.run("swarm-delegate", "claim", "--drone", "x1")
    assert r.returncode == 1
    one_line_error(r, "swarm-delegate")
    assert "x1' is grounded until" in r.stderr and "6 failures in a row" in r.stderr
    figures = json.loads(control.run("swarm-status", "--json").stdout)
    x1 = next(d for d in figures["drones"] if d["drone"] == "x1")
    assert x1["grounded_until"] and "6 failures in a row" in x1["grounded_reason"]
    assert "until " in control.run("swarm-status").stdout
    why = json.loads(control.run("swarm-status", "--why", cpvs[0], "--json").stdout)
    assert next(d for d in why["drones"] if d["drone"] == "x1")["reasons"][0]["rule"] == "grounded"
    # A drone of the same class builds them; a person lifts the grounding.
    assert claim(control, "x2") in cpvs
    assert control.run("swarm-delegate", "unground", "--drone", "x1").returncode == 0
    assert claim(control, "x1") in cpvs
    # The gateway does not let a drone lift its own grounding.
    r = control.run("swarm-delegate", "gateway", "--drone", "x1", "--config", str(control.config),
                    env={**control.env, "SSH_ORIGINAL_COMMAND": "swarm-delegate unground --drone x1"})
    assert r.returncode == 2


# --- capability routing ----------------------------------------------------------

def test_multilib_and_cuda_go_only_to_drones_that_have_them(control):
    control.scan(scan([
        'app-emulation/wine-9::gentoo  ABI_X86="32 64"',
        'sci-libs/torch-2::gentoo  USE="cuda"',
        'app-misc/plain-1::gentoo  USE="-cuda" ABI_X86="64 -32"']))
    beat(control, "x1", {**CLASS_X, "abi_x86": "64"})
    beat(control, "x2", {**CLASS_X, "abi_x86": "32 64"})
    # x1 has no multilib: never wine; nobody has CUDA: never torch.
    assert claims(control, "x1", 3) == ["app-misc/plain-1"]
    why = json.loads(control.run("swarm-status", "--why", "sci-libs/torch-2", "--json").stdout)
    assert why["eligible_for"] == []
    (general,) = why["reasons"]
    assert general["rule"] == "capability" and "cuda (USE cuda)" in general["why"]
    assert "no online drone" in general["why"]
    text = control.run("swarm-status", "--why", "app-emulation/wine-9").stdout
    assert "x1: capability: x1 lacks multilib (USE abi_x86_32)" in text
    figures = json.loads(control.run("swarm-status", "--json").stdout)
    assert figures["blocked"]["capability"] == 1  # torch; wine has x2
    assert claim(control, "x2") == "app-emulation/wine-9"
    assert claim(control, "y1") is None
    beat(control, "y1", {**CLASS_Y, "cuda": True})  # a CUDA drone comes online
    assert claim(control, "y1") == "sci-libs/torch-2"


def test_routes_and_mandatory_features(control):
    config_mod.edit(control.config, {
        "route": [{"match": "sci-libs/*", "requires": ["big-memory"]}],
        "drones": {"y1": {"transport": "local", "features": ["big-memory"],
                          "mandatory_features": ["big-memory"]}}})
    control.scan(scan(["sci-libs/big-1::gentoo", "app-misc/small-1::gentoo"]))
    assert claims(control, "x1", 2) == ["app-misc/small-1"]  # sci-libs/big needs big-memory
    control.run("swarm-delegate", "release", "--drone", "x1", "app-misc/small-1")
    # y1 takes only what requires big-memory.
    assert claims(control, "y1", 3) == ["sci-libs/big-1"]
    why = json.loads(control.run("swarm-status", "--why", "app-misc/small-1", "--json").stdout)
    y1 = next(d for d in why["drones"] if d["drone"] == "y1")
    assert "takes only packages that require big-memory" in y1["reasons"][0]["why"]


def test_status_counts_what_keeps_packages_back(control):
    control.scan(scan(["app-misc/a-1::gentoo", "app-misc/b-1::gentoo", "app-misc/c-1::gentoo"]))
    control.run("swarm-exclude", "add", "app-misc/a", "--reason", "no")
    config_mod.edit(control.config, {"delegate": {"retry_seconds": 3600}})
    assert claim(control, "x1") == "app-misc/b-1"
    fail(control, "x1", "app-misc/b-1")
    figures = json.loads(control.run("swarm-status", "--json").stdout)
    assert figures["blocked"]["excluded"] == 1
    text = control.run("swarm-status").stdout
    assert "kept back:     excluded 1" in text
