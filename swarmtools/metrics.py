"""swarm-status --prometheus: the figures in Prometheus's text format.

For node_exporter's textfile collector (the way Gentoo admins already
watch their hosts): cron writes the file, node_exporter serves it. Every
value is status.summary()'s, under the same names as its JSON where it can.
"""

from __future__ import annotations

from . import clock
from .packages import STATES


def render(figures: dict) -> str:
    """The text exposition format (version 0.0.4) of status.summary()'s FIGURES."""
    out: list[str] = []

    def family(name: str, kind: str, help: str, samples: list[tuple[dict, float]]) -> None:
        # In this format HELP and TYPE name the samples, _total included for a
        # counter: else promtool finds no help text and node_exporter calls it untyped.
        if kind == "counter":
            name += "_total"
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")

    # Per build profile: a build two profiles share counts in both.
    profiles = figures["profiles"]
    family("swarm_packages", "gauge", "Packages a build profile wants, by state (retired ones "
           "apart).", [({"profile": name, "state": s}, p["states"][s])
                       for name, p in profiles.items() for s in STATES])
    family("swarm_packages_retired", "gauge", "Packages a profile's latest scan no longer "
           "lists, kept with their history.",
           [({"profile": name}, p["retired"]) for name, p in profiles.items()])
    family("swarm_packages_waiting", "gauge", "Needed packages waiting for dependencies to be "
           "published (on=failure: through a failed build).",
           [({"profile": name, "on": on}, p["waiting"][key]) for name, p in profiles.items()
            for on, key in (("dependencies", "on_dependencies"), ("failure", "on_failure"))])
    family("swarm_packages_kept_back", "gauge", "Needed packages an eligibility rule keeps from "
           "every drone now.", [({"profile": name, "rule": rule}, n)
                                for name, p in profiles.items() for rule, n in p["blocked"].items()])
    family("swarm_drones_online", "gauge", "Drones whose last heartbeat is recent.",
           [({}, figures["drones_online"])])
    family("swarm_drones_known", "gauge", "Drones configured or seen.",
           [({}, figures["drones_known"])])
    family("swarm_drone_online", "gauge", "1 while the drone's last heartbeat is recent.",
           [({"drone": d["drone"]}, int(d["online"])) for d in figures["drones"]])
    family("swarm_drone_building", "gauge", "Packages the drone holds a lease on.",
           [({"drone": d["drone"]}, d["building"]) for d in figures["drones"]])
    family("swarm_drone_drifted", "gauge", "Values in the drone's last heartbeat that differ "
           "from the config or the profile (config digest, version, CHOST, ARCH).",
           [({"drone": d["drone"]}, len(d["drift"])) for d in figures["drones"]])
    family("swarm_builds", "counter", "Builds reported, by drone and result: ok, failed (the "
           "package's own failure), dependency_wait (a dependency not published yet), "
           "drone_trouble (environment, fetch).",
           [({"drone": d["drone"], "result": result}, d[key]) for d in figures["drones"]
            for result, key in (("ok", "built"), ("failed", "failed"),
                                ("dependency_wait", "dependency_waits"),
                                ("drone_trouble", "drone_trouble"))])
    family("swarm_build_failures", "counter", "Failed builds reported, by drone and kind.",
           [({"drone": d["drone"], "kind": kind}, n) for d in figures["drones"]
            for kind, n in d["failures_by_kind"].items()])
    family("swarm_staging_bytes", "gauge", "Bytes waiting in staging.",
           [({}, figures["staging_bytes"])])
    family("swarm_oldest_received_seconds", "gauge", "Age of the oldest package waiting in "
           "staging for swarm-sync (0: none waits).",
           [({}, figures["oldest_received_seconds"] or 0)])
    for name, what, entry in (("swarm_last_scan_timestamp_seconds", "swarm-fresh scan",
                               figures["last_scan"]),
                              ("swarm_last_sync_timestamp_seconds", "swarm-sync run",
                               figures["last_sync"])):
        if entry:  # never ran: no sample, rather than a date in 1970
            family(name, "gauge", f"When the last {what} ended (Unix time).",
                   [({}, clock.parse(entry["at"]).timestamp())])
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
