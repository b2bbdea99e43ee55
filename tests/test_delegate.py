"""Delegation in the library: claims, leases, heartbeats, reports, back-off."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import add_drones, synthetic_scan

from swarmtools import config as config_mod
from swarmtools import db, delegate, gpkg
from swarmtools.emerge import parse_merge_list
from swarmtools.errors import ConfigError, SwarmError
from swarmtools.queue import apply_scan

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def queue(swarm):
    """(config, connection) with 5 needed packages and drones d1, d2."""
    add_drones(swarm.config, {"d1": {"transport": "local"}, "d2": {"transport": "local"}})
    config = config_mod.load(swarm.config)
    conn = db.connect(config.database, create=True)
    apply_scan(conn, parse_merge_list(synthetic_scan(5)), "test", T0)
    yield config, conn
    conn.close()


def staged(config, drone: str, relative: str, content: bytes = b"gpkg") -> str:
    path = config.staging_dir / drone / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return relative


def statuses(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT cpv, status FROM packages").fetchall())


def test_claims_go_in_merge_order_to_one_drone_each(queue):
    config, conn = queue
    first = delegate.claim(conn, config, "d1", now=T0)
    second = delegate.claim(conn, config, "d2", now=T0)
    assert (first["cpv"], second["cpv"]) == ("app-test/pkg0-1.0", "app-test/pkg1-1.0")
    assert first["lease_until"] == (T0 + timedelta(seconds=3600)).isoformat()
    assert set(first) == {"cpv", "slot", "subslot", "repo", "use", "lease_until", "attempts",
                          "profile", "binhost"}  # null: no scan ran emerge (a saved --from scan)
    assert first["profile"] is None
    assert first["binhost"] == {"name": "default", "url": config.binhost.url}
    events = conn.execute("SELECT actor, event, from_status, to_status FROM events"
                          " WHERE event = 'claimed' ORDER BY id").fetchall()
    assert [tuple(e) for e in events] == [("d1", "claimed", "needed", "delegated"),
                                          ("d2", "claimed", "needed", "delegated")]


def test_nothing_eligible_is_none(queue):
    config, conn = queue
    for _ in range(5):
        assert delegate.claim(conn, config, "d1", now=T0, renew=False)
    assert delegate.claim(conn, config, "d1", now=T0, renew=False) is None


def test_unknown_drone_is_refused(queue):
    config, conn = queue
    with pytest.raises(ConfigError, match=r"\[drones.d9\]"):
        delegate.claim(conn, config, "d9", T0)


def test_lease_expires_without_heartbeat_and_heartbeat_extends_it(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    delegate.claim(conn, config, "d2", now=T0)
    later = T0 + timedelta(seconds=3000)
    answer = delegate.heartbeat(conn, config, "d1", {"arch": "amd64", "building": [job["cpv"]]},
                                now=later)
    assert answer["leases_extended"] == 1 and answer["config_matches"] is False
    # d2 sent no heartbeat: its lease runs out; d1's was extended.
    result = delegate.expire(conn, now=T0 + timedelta(seconds=3700))
    assert result == {"expired": 1, "retried": 0}
    assert statuses(conn)[job["cpv"]] == "delegated"
    assert statuses(conn)["app-test/pkg1-1.0"] == "needed"
    detail = conn.execute("SELECT detail FROM events WHERE event = 'expired'").fetchone()[0]
    assert "d2" in detail


def test_report_ok_records_the_staged_file(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    rel = staged(config, "d1", "app-test/pkg0/pkg0-1.0-3.gpkg.tar")
    size, digest = gpkg.file_digest(config.staging_dir / "d1" / rel)
    result = delegate.report_built(conn, config, "d1", job["cpv"], rel, T0, size, digest)
    assert result["status"] == "received" and result["file"] == "d1/" + rel
    row = conn.execute("SELECT status, drone, lease_until, build_id, size, digest FROM packages"
                       " WHERE cpv = ?", (job["cpv"],)).fetchone()
    assert tuple(row) == ("received", "d1", None, 3, 4, digest)


@pytest.mark.parametrize("relative, message", [
    ("../d2/app-test/pkg0/pkg0-1.0-1.gpkg.tar", "without '..'"),
    ("/etc/passwd", "without '..'"),
    ("app-test/pkg0/pkg9-1.0-1.gpkg.tar", "not a binary package of"),
    ("app-test/pkg0/missing/pkg0-1.0-1.gpkg.tar", "no uploaded file"),
])
def test_report_refuses_files_outside_or_wrong(queue, relative, message):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    staged(config, "d2", "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    with pytest.raises(SwarmError, match=message):
        delegate.report_built(conn, config, "d1", job["cpv"], relative, T0)
    assert statuses(conn)[job["cpv"]] == "delegated"


def test_report_refuses_a_symlink_out_of_the_staging_area(queue, tmp_path):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    outside = tmp_path / "elsewhere"
    (outside / "app-test" / "pkg0").mkdir(parents=True)
    (outside / "app-test" / "pkg0" / "pkg0-1.0-1.gpkg.tar").write_bytes(b"x")
    (config.staging_dir / "d1").mkdir(parents=True, exist_ok=True)
    (config.staging_dir / "d1" / "app-test").symlink_to(outside / "app-test")
    with pytest.raises(SwarmError, match="outside"):
        delegate.report_built(conn, config, "d1", job["cpv"], "app-test/pkg0/pkg0-1.0-1.gpkg.tar", T0)


def test_report_checks_size_and_digest(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    rel = staged(config, "d1", "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    with pytest.raises(SwarmError, match="incomplete"):
        delegate.report_built(conn, config, "d1", job["cpv"], rel, T0, size=99)
    with pytest.raises(SwarmError, match="corrupt"):
        delegate.report_built(conn, config, "d1", job["cpv"], rel, T0, sha256="0" * 64)


def test_only_the_holder_may_report_or_release(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    rel = staged(config, "d2", "app-test/pkg0/pkg0-1.0-1.gpkg.tar")
    with pytest.raises(SwarmError, match="holds no lease"):
        delegate.report_built(conn, config, "d2", job["cpv"], rel, T0)
    with pytest.raises(SwarmError, match="holds no lease"):
        delegate.release(conn, config, "d2", job["cpv"], T0)
    with pytest.raises(SwarmError, match="holds no lease"):
        delegate.report_failed(conn, config, "d1", "app-test/pkg4-1.0", T0)
    assert delegate.release(conn, config, "d1", job["cpv"], T0)["status"] == "needed"
    assert delegate.claim(conn, config, "d2", now=T0)["cpv"] == job["cpv"]


def test_failures_back_off_doubling_and_keep_the_log(queue):
    config, conn = queue
    cpv = "app-test/pkg0-1.0"
    backoff = config.delegate.retry_seconds
    now = T0
    for attempt in (1, 2):
        job = delegate.claim(conn, config, "d1", now=now)
        assert job["cpv"] == cpv and job["attempts"] == attempt - 1
        log = staged(config, "d1", f"logs/{cpv}-{attempt}.log", b"compile error\n")
        result = delegate.report_failed(conn, config, "d1", cpv, now, log)
        assert result["attempts"] == attempt
        assert result["retry_after"] == (now + timedelta(seconds=backoff)).isoformat()
        assert Path(result["log"]).read_text() == "compile error\n"
        assert not (config.staging_dir / "d1" / log).exists()
        # In back-off: others are handed out, not this one.
        assert delegate.claim(conn, config, "d2", now=now)["cpv"] != cpv
        now += timedelta(seconds=backoff)
        backoff *= 2
    assert statuses(conn)[cpv] == "failed"
    delegate.expire(conn, now=now)
    assert statuses(conn)[cpv] == "needed"
    events = [e[0] for e in conn.execute(
        "SELECT e.event FROM events e JOIN packages p ON p.id = e.package_id"
        " WHERE p.cpv = ? ORDER BY e.id", (cpv,))]
    assert events == ["added", "claimed", "build-failed", "retry", "claimed", "build-failed", "retry"]


def test_retired_packages_are_not_handed_out(queue):
    config, conn = queue
    apply_scan(conn, parse_merge_list(synthetic_scan(3)), "test", T0)
    cpvs = []
    while job := delegate.claim(conn, config, "d1", now=T0, renew=False):
        cpvs.append(job["cpv"])
    assert cpvs == ["app-test/pkg0-1.0", "app-test/pkg1-1.0", "app-test/pkg2-1.0"]


def test_a_claim_whose_answer_was_lost_gets_the_same_lease_again(queue):
    config, conn = queue
    first = delegate.claim(conn, config, "d1", now=T0)
    # The answer never reached d1, which asks again (its heartbeat names nothing).
    delegate.heartbeat(conn, config, "d1", {"building": []}, now=T0 + timedelta(seconds=5))
    again = delegate.claim(conn, config, "d1", now=T0 + timedelta(seconds=10))
    assert again["cpv"] == first["cpv"]
    assert again["lease_until"] == (T0 + timedelta(seconds=3610)).isoformat()
    assert conn.execute("SELECT count(*) FROM packages WHERE status = 'delegated'").fetchone()[0] == 1
    # While d1 says it builds it, a claim brings new work.
    delegate.heartbeat(conn, config, "d1", {"building": [first["cpv"]]}, now=T0)
    assert delegate.claim(conn, config, "d1", now=T0)["cpv"] != first["cpv"]


def test_only_the_leases_a_drone_says_it_works_on_are_extended(queue):
    config, conn = queue
    jobs = [delegate.claim(conn, config, "d1", now=T0, renew=False) for _ in range(5)]  # --limit 5
    working = jobs[0]["cpv"]
    for minutes in range(10, 70, 10):  # heartbeats for an hour, naming one package
        answer = delegate.heartbeat(conn, config, "d1", {"building": [working]},
                                    now=T0 + timedelta(minutes=minutes))
        assert answer["leases_extended"] == 1
    assert delegate.expire(conn, now=T0 + timedelta(seconds=3601)) == {"expired": 4, "retried": 0}
    assert [c for c, s in statuses(conn).items() if s == "delegated"] == [working]


def test_a_package_retired_while_delegated_loses_its_lease(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    # The next scan no longer wants pkg0 (the other four stay).
    text = synthetic_scan(5).replace("[ebuild  N     ] app-test/pkg0-1.0::gentoo  0 KiB\n", "")
    apply_scan(conn, parse_merge_list(text.replace("Total: 5", "Total: 4")), "test", T0)
    assert statuses(conn)[job["cpv"]] == "needed"
    answer = delegate.heartbeat(conn, config, "d1", {"building": [job["cpv"]]}, now=T0)
    assert answer["leases_extended"] == 0
    with pytest.raises(SwarmError, match="holds no lease"):
        delegate.release(conn, config, "d1", job["cpv"], T0)
    retired = conn.execute("SELECT e.from_status, e.to_status, e.detail FROM events e"
                           " WHERE e.event = 'retired'").fetchone()
    assert tuple(retired)[:2] == ("delegated", "needed") and "lease of d1 ended" in retired[2]


def test_repeated_reports_and_releases_are_answered_as_the_first(queue):
    config, conn = queue
    job = delegate.claim(conn, config, "d1", now=T0)
    rel = staged(config, "d1", "app-test/pkg0/pkg0-1.0-3.gpkg.tar")
    size, digest = gpkg.file_digest(config.staging_dir / "d1" / rel)
    first = delegate.report_built(conn, config, "d1", job["cpv"], rel, T0, size, digest)
    again = delegate.report_built(conn, config, "d1", job["cpv"], rel, T0, size, digest)
    assert again == first
    job = delegate.claim(conn, config, "d1", now=T0)
    first = delegate.report_failed(conn, config, "d1", job["cpv"], T0)
    again = delegate.report_failed(conn, config, "d1", job["cpv"], T0)
    assert (again["status"], again["attempts"]) == (first["status"], first["attempts"]) == ("failed", 1)
    job = delegate.claim(conn, config, "d1", now=T0)
    assert delegate.release(conn, config, "d1", job["cpv"], T0) == \
        delegate.release(conn, config, "d1", job["cpv"], T0)
    events = [e[0] for e in conn.execute("SELECT event FROM events WHERE event != 'added' ORDER BY id")]
    assert events == ["claimed", "built", "claimed", "build-failed", "claimed", "released"]


def test_a_drone_held_from_a_package_does_not_get_it_but_others_do(queue):
    config, conn = queue
    from swarmtools import packages

    with db.write(conn):
        pkg0 = conn.execute("SELECT id FROM packages WHERE cpv = 'app-test/pkg0-1.0'").fetchone()[0]
        packages.hold(conn, pkg0, "d1", (T0 + timedelta(hours=1)).isoformat(), "bad upload")
    assert delegate.claim(conn, config, "d1", now=T0)["cpv"] == "app-test/pkg1-1.0"
    assert delegate.claim(conn, config, "d2", now=T0)["cpv"] == "app-test/pkg0-1.0"


def test_an_idle_answer_says_when_to_ask_again(queue):
    config, conn = queue  # defaults: poll 30 s, idle ceiling 300 s
    for _ in range(5):
        assert delegate.claim(conn, config, "d1", now=T0, renew=False)
    d = delegate.idle_answer(conn, config, T0)
    # Builds in progress may make work eligible: sooner than the ceiling,
    # but no sooner than the idle fleet affords (one claim a second) or poll.
    assert (d["in_progress"], d["ask_again_seconds"]) == (5, 30)

    def idle_fleet(n):
        for i in range(n):
            conn.execute("INSERT OR REPLACE INTO drones (name, last_heartbeat, facts)"
                         " VALUES (?, ?, '{}')", (f"idle{i}", T0.isoformat()))
        conn.commit()
    idle_fleet(120)
    assert delegate.idle_answer(conn, config, T0)["ask_again_seconds"] == 120
    idle_fleet(1000)
    assert delegate.idle_answer(conn, config, T0)["ask_again_seconds"] == 300
    later = T0 + timedelta(seconds=config.delegate.online_seconds + 1)
    assert delegate.idle_drones(conn, config, later) == 0  # not heard from: not counted
    # Nothing in progress, a back-off ending in 100 s: ask then; nothing at all: own back-off.
    for i in range(5):
        delegate.report_failed(conn, config, "d1", f"app-test/pkg{i}-1.0", T0, None,
                               delegate.FailureKind.BUILD, [])
    ends = conn.execute("SELECT min(retry_after) FROM packages").fetchone()[0]
    soon = datetime.fromisoformat(ends) - timedelta(seconds=100)
    assert delegate.idle_answer(conn, config, soon) == {
        "cpv": None, "in_progress": 0, "retry_soon": 5, "ask_again_seconds": 100}
    # Beyond the idle ceiling, a back-off is not about to end: a drain leaves it for later.
    assert delegate.idle_answer(conn, config, soon - timedelta(seconds=300))["retry_soon"] == 0
    conn.execute("UPDATE packages SET active = 0")
    conn.commit()
    assert delegate.idle_answer(conn, config, soon)["ask_again_seconds"] is None


def test_an_idle_drone_backs_off_doubling_to_the_ceiling_and_work_resets_it():
    from swarmtools.drone import Backoff

    wait = Backoff(30, 300)
    waits = [wait.next() for _ in range(6)]
    for got, base in zip(waits, [30, 60, 120, 240, 300, 300]):
        assert 0.75 * base <= got <= 1.25 * base
    assert wait.next(ask_again=45) <= 1.25 * 45  # the orchestrator says sooner
    assert wait.next(ask_again=10_000) <= 1.25 * 300  # never later than the ceiling
    wait.reset()
    assert wait.next() <= 1.25 * 30


def test_a_building_drone_is_online_while_its_lease_lives(queue):
    from swarmtools import status

    config, conn = queue
    delegate.heartbeat(conn, config, "d1", {"building": []}, now=T0)  # as the claim carries it
    assert delegate.claim(conn, config, "d1", now=T0)

    def online(at):
        return {d["drone"]: d["online"] for d in status.drone_table(conn, config, at)}["d1"]
    # It beats every third of the lease, so its last heartbeat may be older than the window.
    assert online(T0 + timedelta(seconds=config.delegate.online_seconds + 60))
    assert not online(T0 + timedelta(seconds=config.delegate.lease_seconds + 1))


def _counting_compiles(conn) -> list[int]:
    """Count SQL compilations on CONN: the authorizer is asked only while SQLite compiles."""
    import sqlite3

    compiled = [0]

    def authorize(*_):
        compiled[0] += 1
        return sqlite3.SQLITE_OK
    conn.set_authorizer(authorize)
    return compiled


def test_a_warm_claim_compiles_no_sql_again(swarm):
    # A state bound as a parameter next to a partial index made SQLite compile
    # the claim's query again at every run: most of a claim's time (issue 23).
    add_drones(swarm.config, {"d1": {"transport": "local"}, "d2": {"transport": "local"}})
    config = config_mod.load(swarm.config)
    conn = db.connect(config.database, create=True)
    apply_scan(conn, parse_merge_list(synthetic_scan(20)), "test", T0)
    compiled = _counting_compiles(conn)
    held: list[str] = []
    for round_ in range(6):
        for drone in ("d1", "d2"):
            delegate.heartbeat(conn, config, drone, {"building": held}, now=T0)
        if round_ == 2:  # warm: every statement a claim runs has been compiled once
            compiled[0] = 0
        held.append(delegate.claim(conn, config, "d1", now=T0)["cpv"])
        held.append(delegate.claim(conn, config, "d2", now=T0, renew=False)["cpv"])
    assert compiled[0] == 0
    conn.close()


def test_a_claim_does_not_cost_more_for_the_leases_already_held(queue):
    config, conn = queue
    apply_scan(conn, parse_merge_list(synthetic_scan(80)), "test", T0)
    steps = [0]

    def step():
        steps[0] += 1
        return 0
    conn.set_progress_handler(step, 1)
    cost = []
    for _ in range(70):
        steps[0] = 0
        delegate.claim(conn, config, "d1", now=T0, renew=False)
        cost.append(steps[0])
    assert cost[69] == cost[10], (cost[10], cost[69])


def test_a_heartbeat_with_a_number_json_lacks_stores_nothing(queue):
    config, conn = queue
    with pytest.raises(SwarmError, match="NaN or Infinity"):
        delegate.heartbeat(conn, config, "d1", {"load": float("nan")}, now=T0)
    with pytest.raises(SwarmError, match="building must be a list of strings"):
        delegate.heartbeat(conn, config, "d1", {"building": "app-test/pkg0-1.0"}, now=T0)
    assert conn.execute("SELECT count(*) FROM drones").fetchone()[0] == 0
