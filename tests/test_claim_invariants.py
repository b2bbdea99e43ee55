"""Never twice: concurrent claim processes, and a state machine of the transitions."""

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Swarm, add_drones, script, synthetic_scan
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from swarmtools import config as config_mod
from swarmtools import db, delegate
from swarmtools.emerge import parse_merge_list
from swarmtools.errors import SwarmError
from swarmtools.packages import STATES
from swarmtools.queue import apply_scan

PACKAGES = 2000
PROCESSES = 16


def test_sixteen_claim_processes_hand_out_every_package_exactly_once(swarm):
    add_drones(swarm.config, {f"d{i}": {"transport": "local"} for i in range(PROCESSES + 1)})
    r = swarm.run("swarm-fresh", "-q", "--from", "-", input=synthetic_scan(PACKAGES))
    assert r.returncode == 0, r.stderr
    # Each process claims until nothing is left: 16 x 200 places for 2,000 packages.
    procs = [subprocess.Popen([script("swarm-delegate"), "claim", "--drone", f"d{i}", "--json",
                               "--limit", str(PACKAGES // 10)], env=swarm.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    outputs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, [e for _, e in outputs]
    claims = [(f"d{i}", json.loads(line)["cpv"])
              for i, (out, _) in enumerate(outputs) for line in out.splitlines()]
    per_package = Counter(cpv for _, cpv in claims)
    assert len(per_package) == PACKAGES and set(per_package.values()) == {1}
    assert len({d for d, _ in claims}) > 1  # they really raced
    rows = swarm.query("SELECT cpv, drone, status FROM packages")
    assert {(d, c) for c, d, _ in rows} == set(claims)
    assert {s for _, _, s in rows} == {"delegated"}
    assert swarm.query("SELECT count(*), count(DISTINCT package_id) FROM events"
                       " WHERE event = 'claimed'") == [(PACKAGES, PACKAGES)]
    # (A drone that holds leases would get its own back: ask with one that holds none.)
    r = swarm.run("swarm-delegate", "claim", "--drone", f"d{PROCESSES}", "--json")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


DRONES = ("d1", "d2", "d3")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Delegation(RuleBasedStateMachine):
    """Random claims, reports, releases, heartbeats and clock jumps on a small queue.

    The drones behave as swarm-drone does: an idle drone's heartbeat rides on
    its claim, a building one beats every third of the lease naming what it
    knows it holds, and a claim's answer may be lost on the way. What each
    drone knows is modelled, so the invariant can say: a lease is held by a
    drone that knows it, or it is one whose answer was lost and runs out
    (or comes back with the drone's next claim), never extended.
    """

    @initialize()
    def setup(self):
        import tempfile
        from pathlib import Path

        self.tmp = tempfile.TemporaryDirectory()
        swarm = Swarm(Path(self.tmp.name))
        add_drones(swarm.config, {d: {"transport": "local"} for d in DRONES})
        self.config = config_mod.load(swarm.config, environ={})
        self.conn = db.connect(self.config.database, create=True)
        apply_scan(self.conn, parse_merge_list(synthetic_scan(6)), "test", T0)
        self.now = T0
        self.events = 6
        self.known = {d: set() for d in DRONES}  # what each drone believes it holds
        self.last_beat = dict.fromkeys(DRONES, T0)
        self.lost = {}  # (drone, cpv) -> when a claim's answer was lost

    def teardown(self):
        if hasattr(self, "conn"):
            self.conn.close()
            self.tmp.cleanup()

    def held(self, drone):
        return [r[0] for r in self.conn.execute(
            "SELECT cpv FROM packages WHERE drone = ? AND status = 'delegated'", (drone,))]

    def beat(self, drone):
        self.last_beat[drone] = self.now
        delegate.heartbeat(self.conn, self.config, drone,
                           {"building": sorted(self.known[drone])}, now=self.now)

    @rule(drone=st.sampled_from(DRONES), lost=st.booleans())
    def claim(self, drone, lost):
        if self.known[drone]:
            return  # a drone asks for work only when it builds nothing
        self.beat(drone)  # rides on the claim: one session
        job = delegate.claim(self.conn, self.config, drone, now=self.now)
        if job is None:
            return
        if lost:
            self.lost[(drone, job["cpv"])] = self.now
        else:
            self.known[drone].add(job["cpv"])
            self.lost.pop((drone, job["cpv"]), None)

    def forget(self, drone, cpv):
        self.known[drone].discard(cpv)

    @rule(drone=st.sampled_from(DRONES), ok=st.booleans(), data=st.data())
    def report(self, drone, ok, data):
        if not self.known[drone]:
            return
        cpv = data.draw(st.sampled_from(sorted(self.known[drone])))
        self.forget(drone, cpv)
        if cpv not in self.held(drone):  # its lease ran out: the report is refused
            with pytest.raises(SwarmError):
                delegate.release(self.conn, self.config, drone, cpv, self.now)
            return
        if ok:
            pf = cpv.split("/")[1]
            path = self.config.staging_dir / drone / "app-test" / f"{pf}-1.gpkg.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            delegate.report_built(self.conn, self.config, drone, cpv,
                                  f"app-test/{pf}-1.gpkg.tar", self.now)
        else:
            delegate.report_failed(self.conn, self.config, drone, cpv, self.now)

    @rule(drone=st.sampled_from(DRONES), other=st.sampled_from(DRONES))
    def report_for_another_is_refused(self, drone, other):
        for cpv in self.held(other):
            if drone != other:
                with pytest.raises(SwarmError):
                    delegate.release(self.conn, self.config, drone, cpv, self.now)

    @rule(drone=st.sampled_from(DRONES))
    def release(self, drone):
        for cpv in sorted(self.known[drone])[:1]:
            self.forget(drone, cpv)
            if cpv in self.held(drone):
                delegate.release(self.conn, self.config, drone, cpv, now=self.now)

    @rule(drone=st.sampled_from(DRONES))
    def heartbeat(self, drone):
        """A heartbeat at any time (a built package waiting for delivery, say)."""
        self.beat(drone)

    @rule()
    def a_third_of_the_lease_passes_and_building_drones_beat(self):
        self.now += timedelta(seconds=self.config.delegate.beat_seconds())
        delegate.expire(self.conn, now=self.now)
        for drone in DRONES:
            if self.known[drone]:
                self.beat(drone)

    @rule(seconds=st.sampled_from([10, 1800, 3601, 7200]))
    def time_passes(self, seconds):
        """Nobody beats meanwhile: a drone silent past its lease is dead (and forgets)."""
        self.now += timedelta(seconds=seconds)
        delegate.expire(self.conn, now=self.now)
        lease = timedelta(seconds=self.config.delegate.lease_seconds)
        for drone in DRONES:
            if self.now - self.last_beat[drone] >= lease:
                for cpv in self.known[drone]:  # its leases now run out, unextended
                    self.lost[(drone, cpv)] = self.last_beat[drone]
                self.known[drone] = set()

    @invariant()
    def a_lease_is_known_to_its_drone_or_runs_out(self):
        if not hasattr(self, "conn"):
            return
        lease = timedelta(seconds=self.config.delegate.lease_seconds)
        for cpv, drone, until in self.conn.execute(
                "SELECT cpv, drone, lease_until FROM packages WHERE status = 'delegated'"):
            if cpv in self.known[drone]:
                continue
            lost_at = self.lost.get((drone, cpv))
            assert lost_at is not None, f"{drone} holds {cpv} and never heard of it"
            assert datetime.fromisoformat(until) <= lost_at + lease, "an unknown lease extended"

    @invariant()
    def a_drone_that_beats_keeps_its_lease(self):
        if not hasattr(self, "conn"):
            return
        # Known leases of live drones (beating every third of the lease) never ran out.
        for drone, cpvs in self.known.items():
            for cpv in cpvs:
                assert cpv in self.held(drone), f"{drone} lost {cpv} while beating"

    @invariant()
    def one_state_and_at_most_one_lease(self):
        if not hasattr(self, "conn"):
            return
        rows = self.conn.execute("SELECT status, drone, lease_until FROM packages").fetchall()
        assert len(rows) == 6
        for status, drone, lease in rows:
            assert status in STATES
            assert (status == "delegated") == (lease is not None)
            if status == "delegated":
                assert drone in DRONES

    @invariant()
    def history_explains_every_state(self):
        if not hasattr(self, "conn"):
            return
        # The last event of each package ends in the state the package is in.
        for status, last in self.conn.execute(
                "SELECT p.status, (SELECT to_status FROM events e WHERE e.package_id = p.id"
                " ORDER BY e.id DESC LIMIT 1) FROM packages p"):
            assert status == last


TestDelegation = Delegation.TestCase
TestDelegation.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
