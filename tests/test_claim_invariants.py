"""Never twice: concurrent claim processes, and a state machine of the transitions."""

import json
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from swarmtools import config as config_mod
from swarmtools import db, delegate
from swarmtools.emerge import parse_merge_list
from swarmtools.errors import SwarmError
from swarmtools.packages import STATES
from swarmtools.queue import apply_scan
from conftest import Swarm, add_drones, script, synthetic_scan

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
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Delegation(RuleBasedStateMachine):
    """Random claims, reports, releases, heartbeats and clock jumps on a small queue."""

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

    def teardown(self):
        if hasattr(self, "conn"):
            self.conn.close()
            self.tmp.cleanup()

    def held(self, drone):
        return [r[0] for r in self.conn.execute(
            "SELECT cpv FROM packages WHERE drone = ? AND status = 'delegated'", (drone,))]

    @rule(drone=st.sampled_from(DRONES))
    def claim(self, drone):
        delegate.claim(self.conn, self.config, drone, now=self.now)

    @rule(drone=st.sampled_from(DRONES), ok=st.booleans(), data=st.data())
    def report(self, drone, ok, data):
        held = self.held(drone)
        if not held:
            return
        cpv = data.draw(st.sampled_from(held))
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
        for cpv in self.held(drone)[:1]:
            delegate.release(self.conn, self.config, drone, cpv, now=self.now)

    @rule(drone=st.sampled_from(DRONES))
    def heartbeat(self, drone):
        delegate.heartbeat(self.conn, self.config, drone, {}, now=self.now)

    @rule(seconds=st.sampled_from([10, 1800, 3601, 7200]))
    def time_passes(self, seconds):
        self.now += timedelta(seconds=seconds)
        delegate.expire(self.conn, now=self.now)

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
