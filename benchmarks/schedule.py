"""Scheduling simulator: the real claim and report code on a virtual clock, over a real DAG.

    python benchmarks/schedule.py --dag tests/data/dags/gnome.json --fleet 4,2,1,1 --policy critical
    python benchmarks/schedule.py              # every DAG x the acceptance fleets x policies

A discrete-event simulation. The queue is a real swarmtools database: the
DAG's packages in their merge order, its edges turned into what gates each
claim by swarm-resolve's own code (``resolve.gating``, ``resolve.priorities``),
and drones with the fleet's speeds (a drone of speed 2 builds in half the
time). Free drones ask ``delegate.claim`` (the real rules and policy) at the
virtual time; a build takes the package's real median build time (the DAG's
``seconds``; a default where none was observed) over the drone's speed and
ends with ``delegate.record_built``; a build is published ``--publish-delay``
seconds later, and publication wakes the idle drones.

Policies:
  critical  gating on published dependencies, longest chain first, placed by
            drone speed (swarmtools' default)
  gated     gating, then merge order
  fifo      the seed's behaviour: merge order, no gating, and a drone that
            claims a package whose dependencies are not published compiles
            them itself first (duplicate builds, wasted build-seconds)

Gates (what must be published before a build): buildtime (the drone's
command: build dependencies installed as binaries, then --buildpkgonly) or
full (a plain `emerge =CPV`: runtime dependencies too).

Prints one JSON object a run: makespan, lower_bound, ratio, duplicates,
wasted_seconds, utilisation, and what was run. Lower bound:
max(longest chain of required packages at the fastest speed, total work /
sum of speeds).
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from swarmtools import clock, db, delegate, eligibility, packages, resolve
from swarmtools import config as config_mod
from swarmtools.emerge import parse_merge_list
from swarmtools.packages import Event, State
from swarmtools.placement import CriticalPath
from swarmtools.queue import apply_scan

DAGS = Path(__file__).resolve().parents[1] / "tests" / "data" / "dags"
FLEETS = ["1,1,1,1", "4,2,1,1", "2,2,1,1,1,1,0.5,0.5", "4,1,1,1,1,1,1,1"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def load(path: Path):
    """(nodes, edges, seconds) of a DAG file; unobserved build times get the median."""
    data = json.loads(path.read_text())
    known = [n["seconds"] for n in data["nodes"] if n["seconds"]]
    default = int(statistics.median(known))
    seconds = {n["id"]: int(n["seconds"] or default) for n in data["nodes"]}
    edges = {}
    for edge in data["edges"]:
        kinds = set(edge["kinds"])
        edges[(edge["to"], edge["from"])] = kinds  # (dependent, dependency)
    return data["nodes"], edges, seconds, default


def scan_text(nodes) -> str:
    rows = []
    for node in sorted(nodes, key=lambda n: n["order"]):
        slot = "" if node["slot"] == "0" else f":{node['slot']}"
        use = f' USE="{" ".join(node["use"])}"' if node["use"] else ""
        rows.append(f"[ebuild  N     ] {node['cpv']}{slot}::{node['repo']}{use} 0 KiB\n")
    return "".join(rows) + f"Total: {len(rows)} packages\n"


class Simulation:
    """One run: a queue, a fleet, a policy, a clock."""

    def __init__(self, dag: Path, fleet: list[float], policy: str, gate: str,
                 publish_delay: float, workdir: Path):
        self.policy_name, self.gate, self.publish_delay = policy, gate, publish_delay
        nodes, dag_edges, self.seconds, default = load(dag)
        path = config_mod.init(workdir)
        self.drones = [f"d{i}" for i in range(len(fleet))]
        self.speed = dict(zip(self.drones, fleet))
        self.config = config_mod.edit(path, {
            "drones": {d: {"transport": "local", "speed": s} for d, s in self.speed.items()},
            "delegate": {"lease_seconds": 10**9, "online_seconds": 10**9,
                         "policy": "first" if policy != "critical" else "critical"},
            "resolve": {"default_seconds": default}})
        self.conn = db.connect(self.config.database, create=True)
        apply_scan(self.conn, parse_merge_list(scan_text(nodes)), "simulation", T0)
        ids = {cpv: pid for pid, cpv in self.conn.execute("SELECT id, cpv FROM packages")}
        self.package = {n["id"]: ids[n["cpv"]] for n in nodes}
        self.node_of = {pid: nid for nid, pid in self.package.items()}
        order = {self.package[n["id"]]: n["order"] for n in nodes}
        edges = {(self.package[a], self.package[b]): k for (a, b), k in dag_edges.items()}
        self.requires, _ = resolve.gating(order, edges, gate)
        self.requires_full, _ = resolve.gating(order, edges, "full")
        self.expected = {self.package[n]: s for n, s in self.seconds.items()}
        priority = resolve.priorities(order, self.requires, self.expected)
        rows = resolve.queue_nodes(self.conn)
        resolve._store(self.conn, rows, edges, self.requires if policy != "fifo" else {},
                       self.expected, priority, {r.id: "simulated" for r in rows})
        for drone in self.drones:
            delegate.heartbeat(self.conn, self.config, drone, {"building": []}, T0)
        rules = eligibility.RULES if policy != "fifo" else tuple(
            r for r in eligibility.RULES if r.name != "dependencies")
        self.rules = rules
        self.busy_seconds = 0.0
        self.duplicates = 0
        self.wasted = 0.0

    def policy(self):
        return (CriticalPath(self.conn, self.config) if self.policy_name == "critical"
                else eligibility.FirstEligible())

    def run(self) -> dict:
        events: list = []
        sequence = 0
        idle = set(self.drones)
        synced = set()
        total = len(self.package)
        now = 0.0

        def push(at, kind, payload):
            nonlocal sequence
            sequence += 1
            heapq.heappush(events, (at, sequence, kind, payload))

        def try_claims(at):
            for drone in sorted(idle, key=lambda d: -self.speed[d]):
                moment = T0 + timedelta(seconds=at)
                job = delegate.claim(self.conn, self.config, drone, moment, policy=self.policy(),
                                     rules=self.rules, renew=False)
                if job is None:
                    continue
                pid = self.conn.execute("SELECT id FROM packages WHERE cpv = ?",
                                        (job["cpv"],)).fetchone()[0]
                work = self.seconds[self.node_of[pid]]
                if self.policy_name != "fifo":  # the claim code must never break the gate
                    assert self.requires.get(pid, set()) <= synced, job["cpv"]
                if self.policy_name == "fifo":  # the seed: missing dependencies built here too
                    missing = [d for d in self.requires_full.get(pid, ()) if d not in synced]
                    self.duplicates += len(missing)
                    extra = sum(self.seconds[self.node_of[d]] for d in missing)
                    self.wasted += extra / self.speed[drone]
                    work += extra
                took = work / self.speed[drone]
                self.busy_seconds += took
                idle.discard(drone)
                push(at + took, "built", (drone, pid, job["cpv"]))

        try_claims(0.0)
        while events:
            now, _, kind, payload = heapq.heappop(events)
            moment = T0 + timedelta(seconds=now)
            if kind == "built":
                drone, pid, cpv = payload
                delegate.record_built(self.conn, drone, cpv, f"{drone}/{cpv}.gpkg.tar", 1,
                                      "0" * 64, 1, moment)
                idle.add(drone)
                push(now + self.publish_delay, "published", pid)
                try_claims(now)
            else:
                with db.write(self.conn):
                    packages.move(self.conn, payload, expect=State.RECEIVED, to=State.SYNCED,
                                  event=Event.SYNCED, actor="simulation", at=clock.iso(moment))
                synced.add(payload)
                if len(synced) == total:
                    break
                try_claims(now)
        if len(synced) != total:
            raise SystemExit(f"simulation stuck: {total - len(synced)} packages never built")
        return self.figures(now)

    def figures(self, makespan: float) -> dict:
        fastest = max(self.speed.values())
        chain = max(resolve.priorities(
            dict(self.conn.execute("SELECT id, scan_order FROM packages")),
            self.requires, self.expected).values())
        work = sum(self.seconds.values())
        bound = max(chain / fastest, work / sum(self.speed.values()))
        return {"policy": self.policy_name, "gate": self.gate, "publish_delay": self.publish_delay,
                "fleet": ",".join(f"{s:g}" for s in self.speed.values()),
                "makespan": round(makespan), "lower_bound": round(bound),
                "ratio": round(makespan / bound, 3), "duplicates": self.duplicates,
                "wasted_seconds": round(self.wasted),
                "utilisation": round(self.busy_seconds / (makespan * len(self.drones)), 3)}


def simulate(dag: Path, fleet: str, policy: str, gate: str = "buildtime",
             publish_delay: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="swarm-schedule-") as tmp:
        sim = Simulation(dag, [float(s) for s in fleet.split(",")], policy, gate, publish_delay,
                         Path(tmp))
        result = sim.run()
        sim.conn.close()
    return {"dag": dag.name, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dag", type=Path, action="append")
    parser.add_argument("--fleet", action="append")
    parser.add_argument("--policy", action="append", choices=("critical", "gated", "fifo"))
    parser.add_argument("--gate", choices=resolve.GATES, default="buildtime")
    parser.add_argument("--publish-delay", type=float, default=0.0)
    parser.add_argument("--summary", action="store_true",
                        help="the acceptance table: critical beside fifo (the seed's behaviour) "
                             "on every DAG and fleet, then gates and publication delays")
    args = parser.parse_args()
    if args.summary:
        return summary()
    for dag in args.dag or sorted(DAGS.glob("*.json")):
        for fleet in args.fleet or FLEETS:
            for policy in args.policy or ("critical", "gated", "fifo"):
                print(json.dumps(simulate(dag, fleet, policy, args.gate, args.publish_delay)),
                      flush=True)


def summary() -> None:
    """What the note reports, as tables; the last line is one JSON object of every run."""
    runs = []
    print(f"{'dag':<7} {'fleet':<20} {'critical':>9} {'(dups)':>6} {'fifo/seed':>9} "
          f"{'dups':>5} {'wasted s':>9} {'gated':>6}")
    for dag in sorted(DAGS.glob("*.json")):
        for fleet in FLEETS:
            row = {p: simulate(dag, fleet, p) for p in ("critical", "fifo", "gated")}
            runs.extend(row.values())
            c, f, g = row["critical"], row["fifo"], row["gated"]
            print(f"{dag.stem:<7} {fleet:<20} {c['ratio']:>9.3f} {c['duplicates']:>6} "
                  f"{f['ratio']:>9.3f} {f['duplicates']:>5} {f['wasted_seconds']:>9} "
                  f"{g['ratio']:>6.3f}")
    print(f"\n{'dag':<7} {'fleet':<10} {'gate':<10} {'delay':>6} {'makespan':>9} {'ratio':>6}")
    for dag in sorted(DAGS.glob("*.json")):
        for gate in resolve.GATES:
            for delay in (0, 10, 120):
                r = simulate(dag, "4,2,1,1", "critical", gate, delay)
                runs.append(r)
                print(f"{dag.stem:<7} {'4,2,1,1':<10} {gate:<10} {delay:>6} {r['makespan']:>9} "
                      f"{r['ratio']:>6.3f}")
    print(json.dumps(runs))


if __name__ == "__main__":
    sys.exit(main())
