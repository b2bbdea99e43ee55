"""The orchestrator's cost per drone: simulated drones against the real sshd and gateway.

N drones, each with its own ssh key, talk to one real sshd on loopback whose
forced command is the real gateway (swarm-delegate gateway). Each drone is
the real drone (swarmtools.drone.Drone: its settings read by portageq from a
Portage prefix, its loop of heartbeats, claims, uploads with rsync, reports,
retries) in a thread; only the build is simulated: it waits its (compressed)
time, heartbeating as the real one does, and leaves a small file to upload.
Time is compressed by SPEED: every interval of the config (poll, idle
ceiling, lease), ssh's ControlPersist and the build time are divided by it,
so the session pattern is the real one, SPEED times faster.

Two mixes:
  idle  every drone asks an empty queue; measured once their back-off has
        reached its ceiling (the steady state of a complete binhost), for
        DURATION seconds or four ceilings;
  busy  every drone builds packages of BUILD_MINUTES each, for four builds.
Per mix it prints: ssh sessions per drone per (uncompressed) minute, the
orchestrator's CPU per session (sshd and everything it runs: the gateway,
rsync, SQLite) and per drone, errors the drones logged, and the derived
number of drones 2 cores at 50 % CPU serve (1 CPU-second per second), and
the memory of sshd's process tree with the drones connected (multiplexed
connections stay open). The orchestrator's CPU is read from /proc: sshd
and every process under it, alive or reaped. Sessions are counted from
sshd's log ("Starting session", LogLevel VERBOSE), logins apart
("Accepted publickey"). It then starts BURST drones at once (a reconnect
after an outage) and counts verbs that failed even after retries, with
sshd's default MaxStartups unless --max-startups says otherwise.
--no-multiplex gives every session its own connection, as before.

The last line is one JSON object: idle_drones, busy_drones,
cpu_ms_per_session, burst_failed_verbs; and idle_sessions, busy_sessions,
builds_reported (received by the orchestrator in the busy mix) and
errors_logged. A drone whose loop crashes ends the run (exit 1).

    python benchmarks/fleet.py [--drones 24] [--duration 60] [--speed 10] [--burst 64]
    python benchmarks/fleet.py --quick   # 2 drones, 300x, a burst of 4: seconds, same steps
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # sshd.py

from sshd import start_sshd
from timing import init_config

from swarmtools import config as config_mod
from swarmtools import db
from swarmtools.build import WAIT_SLICE_SECONDS, Outcome
from swarmtools.drone import Drone
from swarmtools.errors import SwarmError
from swarmtools.prefix import create_prefix
from swarmtools.transport import CONTROL_PERSIST, for_drone

TICKS = os.sysconf("SC_CLK_TCK")
# The config's defaults, uncompressed (a building drone beats every third of the lease).
DEFAULTS = {"poll_seconds": 30, "idle_max_seconds": 300, "lease_seconds": 3600,
            "online_seconds": 900}
QUICK = {"drones": 2, "duration": 1, "speed": 300, "burst": 4, "queue": 200}
log = logging.getLogger("swarmtools.drone.simulated")  # counted with the drone's own


class SimulatedDrone(Drone):
    """The real drone; its build (Drone.build) a wait of the build time and a small file.

    Drone.build is the one call of the loop that builds (a claimed job in,
    an Outcome to deliver out, None when stopped); everything else is
    Drone's own, its settings read by portageq as on a real drone.
    """

    def __init__(self, config, name: str, build_seconds: float, pkgdir: Path):
        super().__init__(config, name)
        self.build_seconds, self.pkgdir = build_seconds, pkgdir

    def build(self, job: dict) -> Outcome | None:
        cpv = job["cpv"]
        self.working_on = cpv  # as Drone.build: every heartbeat names it
        started = time.monotonic()
        deadline = started + self.build_seconds
        beat_due = started + self.config.delegate.beat_seconds()  # the claim was a heartbeat
        while not self.stop.wait(min(WAIT_SLICE_SECONDS, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            if time.monotonic() >= beat_due:
                beat_due = self.beat()
        if self.stop.is_set():
            return None
        category, pf = cpv.split("/")
        package = self.pkgdir / f"{pf}-1.gpkg.tar"
        package.write_bytes(b"simulated build " * 256)
        return Outcome(cpv, package=package, relative=f"{category}/x/{pf}-1.gpkg.tar")

    def beat(self) -> float:
        """A heartbeat while building, as the real build sends; when the next is due."""
        delegate = self.config.delegate
        try:
            self.heartbeat()
        except SwarmError as exc:
            # As the real drone: try again sooner, the orchestrator may be back.
            log.warning("heartbeat failed while building: %s", exc)
            return time.monotonic() + min(delegate.poll_seconds, delegate.beat_seconds())
        return time.monotonic() + delegate.beat_seconds()


def orchestrator_cpu(pid: int) -> float:
    """CPU seconds of sshd and everything under it, alive or reaped.

    A multiplexed connection's sshd lives as long as the drone's master: the
    sessions it ran are reaped by it, not by the listener, so the live tree
    is read too (each process's own time and its reaped children's).
    """
    total = 0.0
    for child in _tree(pid):
        fields = _stat(child)
        if fields:
            total += sum(int(v) for v in fields[11:15]) / TICKS  # utime stime cutime cstime
    return total


def orchestrator_memory(pid: int) -> tuple[int, int]:
    """(bytes, processes) of the sshd tree: what open connections cost in memory.

    Proportional set size: a page shared by N processes counts 1/N to each,
    so the sum is what the tree really holds (resident sizes would count
    sshd's shared libraries once a process).
    """
    pss = processes = 0
    for child in _tree(pid):
        try:
            rollup = Path(f"/proc/{child}/smaps_rollup").read_text()
        except OSError:
            continue
        processes += 1
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return pss, processes


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # ppid
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class ErrorCount(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def setup(root: Path, drones: int, fleet: int, speed: float, max_startups: str, multiplex: bool):
    """Config, sshd and names of DRONES drones, the first FLEET of them run by Drone."""
    path = init_config(root / "swarm")
    config_mod.edit(path, {"scan": {"resolve": False}})  # its packages are in no tree
    names = [f"d{n:04d}" for n in range(drones)]
    bindir = Path(sys.executable).parent
    gateway = bindir / "swarm-delegate"
    server = start_sshd(root / "sshd", {name: f"{gateway} gateway --drone {name} --config {path}"
                                         for name in names},
                        ("LogLevel VERBOSE", f"MaxStartups {max_startups}"))  # a line a session
    # Their Portage, for portageq: the least that finds it (the gateway reads
    # the config at every session, and a real drone's entry names none).
    prefix = create_prefix(root / "prefix")
    portage = {"PORTAGE_OVERRIDE_EPREFIX": str(prefix.root),
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    config_mod.edit(path, {
        "orchestrator": {"ssh": server.destination},
        "binhost": {"publish_on_report": False},
        "delegate": {k: max(1, round(v / speed)) for k, v in DEFAULTS.items()},
        "drones": {name: {"transport": "ssh", "ssh_command": server.ssh_command(name) + (
            ["-o", f"ControlPersist={max(1, round(CONTROL_PERSIST / speed))}"] if multiplex
            else ["-o", "ControlMaster=no"]), **({"environment": portage} if n < fleet else {})}
            for n, name in enumerate(names)}})
    return path, server, names


def run_mix(path: Path, server, names: list[str], root: Path, duration: float,
            build_seconds: float, queue: int, warmup: float = 0) -> dict:
    """Run the drones for WARMUP + DURATION seconds; count sessions and CPU in DURATION."""
    config = config_mod.load(path)
    conn = db.connect(config.database, create=True)
    conn.close()
    env = {**os.environ, "SWARM_CONFIG": str(path)}
    if queue:
        scan = root / f"scan-{queue}.txt"
        rows = "".join(f"[ebuild  N     ] app-bench/pkg{i}-1.0::gentoo  0 KiB\n" for i in range(queue))
        scan.write_text(rows + f"\nTotal: {queue} packages\n")
        subprocess.run([Path(sys.executable).parent / "swarm-fresh", "-q", "--from", str(scan)],
                       env=env, check=True)
    errors = ErrorCount()
    logging.getLogger("swarmtools").addHandler(errors)
    drones = []
    for name in names:
        pkgdir = root / "pkgdirs" / name
        pkgdir.mkdir(parents=True, exist_ok=True)
        drones.append(SimulatedDrone(config, name, build_seconds, pkgdir))
    crashed: list[str] = []
    threads = [threading.Thread(target=_run, args=(d, crashed), daemon=True) for d in drones]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    sessions_before, logins_before = _counts(server)
    cpu_before = orchestrator_cpu(server.process.pid)
    started = time.monotonic()
    time.sleep(duration)
    memory, processes = orchestrator_memory(server.process.pid)  # the drones' connections open
    for d in drones:
        d.terminate()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.monotonic() - started
    time.sleep(1)  # the last sessions end and are reaped (the stop's own few are counted)
    logging.getLogger("swarmtools").removeHandler(errors)
    if crashed:
        sys.exit(f"fleet.py: error: a drone's loop crashed: {crashed[0]}")
    sessions, logins = (now - before for now, before in
                        zip(_counts(server), (sessions_before, logins_before)))
    cpu = orchestrator_cpu(server.process.pid) - cpu_before
    return {"sessions": sessions, "logins": logins, "cpu": cpu, "elapsed": elapsed,
            "errors": errors.records, "memory": memory, "processes": processes,
            "received": _received(env)}


def _run(drone: Drone, crashed: list[str]) -> None:
    try:
        drone.run()
    except BaseException as exc:
        crashed.append(f"{drone.name}: {exc!r}")
        raise


def _received(env: dict) -> int:
    """Builds the orchestrator holds as received (not published: publish_on_report is off)."""
    status = subprocess.run([Path(sys.executable).parent / "swarm-status", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(status.stdout)["states"]["received"]


def _counts(server) -> tuple[int, int]:
    """(sessions, logins) in sshd's log: a multiplexed connection has many sessions."""
    text = server.log_text()
    return text.count("Starting session:"), text.count("Accepted publickey")


def derive(result: dict, drones: int, speed: float) -> dict:
    swarm_minutes = result["elapsed"] * speed / 60  # the time the drones lived, uncompressed
    per_drone_minute = result["sessions"] / drones / swarm_minutes
    per_session = result["cpu"] / max(1, result["sessions"])
    cpu_per_drone_second = per_session * per_drone_minute / 60
    return {"sessions_per_drone_minute": per_drone_minute, "cpu_ms_per_session": per_session * 1000,
            "cpu_ms_per_drone_minute": cpu_per_drone_second * 60 * 1000,
            "drones_per_2_cores_at_50": 1.0 / cpu_per_drone_second if cpu_per_drone_second else None}


def burst(path: Path, server, names: list[str], root: Path) -> dict:
    """Every drone asks at once, as after an outage: verbs that failed even after retries."""
    config = config_mod.load(path)
    failed, retried = [], []
    barrier = threading.Barrier(len(names))

    def one(name):
        transport = for_drone(config, name)
        barrier.wait()
        try:
            transport.call("claim", "--idle-info")
        except Exception as exc:  # noqa: BLE001 - counted, with its message
            failed.append(f"{name}: {exc}")

    errors = ErrorCount()
    logging.getLogger("swarmtools").addHandler(errors)
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logging.getLogger("swarmtools").removeHandler(errors)
    retried = [r for r in errors.records if "again in" in r]
    return {"failed": failed, "retries": len(retried),
            "dropped_by_sshd": server.log_text().count("past MaxStartups")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drones", type=int, default=24)
    parser.add_argument("--duration", type=float, default=60, help="seconds a mix runs")
    # Below the box's saturation (~15 sessions/s here): a saturated orchestrator
    # slows the drones down and hides sessions they would make.
    parser.add_argument("--speed", type=float, default=10, help="time compression")
    parser.add_argument("--max-startups", default="10:30:100",
                        help="sshd's MaxStartups (its default: 10:30:100)")
    parser.add_argument("--build-minutes", type=float, default=3.5)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--no-multiplex", action="store_true",
                        help="a connection a session (ControlMaster=no), as before multiplexing")
    parser.add_argument("--queue", type=int, default=100_000, help="packages the busy mix builds from")
    parser.add_argument("--quick", action="store_true",
                        help=f"defaults {QUICK}: seconds, the suite's check that it still runs")
    if parser.parse_args().quick:
        parser.set_defaults(**QUICK)  # what the command line names still wins
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        root = Path(tmp)
        path, server, names = setup(root, max(args.drones, args.burst), args.drones, args.speed,
                                    args.max_startups, not args.no_multiplex)
        try:
            fleet = names[:args.drones]
            print(f"{args.drones} drones, time compressed {args.speed:g}x (poll "
                  f"{DEFAULTS['poll_seconds']} s up to {DEFAULTS['idle_max_seconds']} s idle, "
                  f"lease {DEFAULTS['lease_seconds']} s, builds {args.build_minutes:g} min)")
            ceiling = DEFAULTS["idle_max_seconds"] / args.speed
            # Idle: measured once the drones' back-off has reached its ceiling
            # (the ramp from poll_seconds, with jitter), for four ceilings.
            ramp = 1.25 * (ceiling - DEFAULTS["poll_seconds"] / args.speed) * 2
            build_seconds = args.build_minutes * 60 / args.speed
            for mix, build, queue, warmup, duration in (
                    ("idle", 0, 0, ramp, max(args.duration, 4 * ceiling)),
                    # Busy: long enough for four builds a drone, to see the steady state.
                    ("busy", build_seconds, args.queue, 0, max(args.duration, 4 * build_seconds))):
                result = run_mix(path, server, fleet, root, duration, build, queue, warmup)
                d = derive(result, len(fleet), args.speed)
                figures[mix] = {**d, "sessions": result["sessions"], "received": result["received"],
                                "errors": len(result["errors"])}
                print(f"{mix}: {result['sessions']} sessions over {result['logins']} logins, "
                      f"{result['cpu']:.1f} CPU s in "
                      f"{result['elapsed']:.0f} s; {d['sessions_per_drone_minute']:.2f} sessions per "
                      f"drone per minute, {d['cpu_ms_per_session']:.0f} ms CPU per session, "
                      f"{d['cpu_ms_per_drone_minute']:.0f} ms per drone per minute; "
                      f"{len(result['errors'])} errors logged; drones per 2 cores at 50 %: "
                      f"{d['drones_per_2_cores_at_50']:.0f}; sshd tree {result['processes']} "
                      f"processes, {result['memory'] / 2**20:.0f} MiB (PSS; "
                      f"{result['memory'] / len(fleet) / 2**20:.1f} MiB a drone)")
                for message in result["errors"][:5]:
                    print(f"  {message}")
            shot = burst(path, server, names[:args.burst], root)
            print(f"burst of {args.burst}: {len(shot['failed'])} verbs failed after retries, "
                  f"{shot['retries']} retries, {shot['dropped_by_sshd']} connections sshd "
                  "dropped past MaxStartups (over the whole run)")
            for message in shot["failed"][:5]:
                print(f"  {message}")
        finally:
            server.stop()
    idle, busy = figures["idle"], figures["busy"]
    print(json.dumps({"idle_drones": round(idle["drones_per_2_cores_at_50"]),
                      "busy_drones": round(busy["drones_per_2_cores_at_50"]),
                      "cpu_ms_per_session": round((idle["cpu_ms_per_session"]
                                                   + busy["cpu_ms_per_session"]) / 2, 1),
                      "burst_failed_verbs": len(shot["failed"]),
                      "idle_sessions": idle["sessions"], "busy_sessions": busy["sessions"],
                      "builds_reported": busy["received"],
                      "errors_logged": idle["errors"] + busy["errors"]}))


if __name__ == "__main__":
    main()
