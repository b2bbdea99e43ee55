"""The drone verbs (heartbeat, claim, report, release, profile) as plain functions.

``swarm-delegate VERB`` (click) and the ssh gateway (no click) both run
them through :func:`run`, so a drone gets the same answer either way.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO

from . import clock, db, delegate, profile
from .config import Config
from .crashpoints import crashpoint
from .errors import ExitCode, SwarmError
from .output import emit_json, emit_ndjson
from .packages import FailureKind

log = logging.getLogger(__name__)

VERBS = ("heartbeat", "claim", "report", "release", "profile")
MAX_FACTS_BYTES = 64 * 1024  # heartbeat facts: a few dozen short values
HOOK_VARIABLE = "SWARM_DELEGATE_TEST_HOOK"  # "claimed:pause=SECONDS", tests only


def read_facts(stream: IO[str]) -> dict:
    """A heartbeat's facts: one JSON object on stdin, of bounded size."""
    text = stream.read(MAX_FACTS_BYTES + 1)
    if len(text) > MAX_FACTS_BYTES:
        raise SwarmError(f"heartbeat facts larger than {MAX_FACTS_BYTES} bytes", ExitCode.USAGE)
    try:
        facts = json.loads(text, parse_constant=_not_a_number) if text.strip() else {}
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SwarmError(f"heartbeat facts are not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(facts, dict):
        raise SwarmError("heartbeat facts must be one JSON object", ExitCode.USAGE)
    return facts


def _not_a_number(constant: str):
    # Python's json reads NaN and Infinity; the standard (and every other
    # reader of swarm-status --json or index.json) does not.
    raise SwarmError(f"heartbeat facts: {constant} is not a number JSON has", ExitCode.USAGE)


def run(verb: str, config: Config, drone: str, *, as_json: bool = False,
        stdin: IO[str] | None = None, out: IO[str] | None = None, cpv: str | None = None,
        **options) -> None:
    """Run one verb for DRONE and print its answer (JSON, or a line for people) to OUT."""
    out = out or sys.stdout
    now = clock.utcnow()
    beats = verb == "heartbeat" or (verb == "claim" and options.get("heartbeat"))
    facts = read_facts(stdin or sys.stdin) if beats else None
    conn = db.connect(config.database)
    try:
        beat = delegate.heartbeat(conn, config, drone, facts, now) if beats else None
        if beat and not beat["config_matches"] and "config_digest" in facts:
            log.warning("warning: drone %s runs another config than the orchestrator's "
                        "(config digests differ)", drone)
        if verb == "heartbeat":
            _answer(out, as_json, beat, f"{drone}: {beat['leases_extended']} lease(s) extended "
                                   f"to {beat['lease_until']}")
        elif verb == "claim":
            claimed = []
            for number in range(options.get("limit") or 1):
                # Nothing at the first: the idle answer, read with the claim.
                job = delegate.claim(conn, config, drone, now, renew=number == 0,
                                     idle=number == 0 and bool(options.get("idle_info")))
                if job is None:
                    break
                claimed.append(job)
                if job["cpv"] is None:
                    break
            crashpoint(HOOK_VARIABLE, "claimed")
            if beat:  # the drone learns of a config drift from its claim as from a heartbeat
                claimed = [{**job, "config_matches": beat["config_matches"]} for job in claimed]
            if as_json:
                emit_ndjson(claimed, out)
            else:
                for job in claimed:
                    print(f"{job['cpv']}\tlease until {job['lease_until']}" if job["cpv"] else
                          f"nothing eligible; {job['in_progress']} being built or published, "
                          f"{job['retry_soon']} back-off(s) ending soon"
                          + (f"; ask again in {job['ask_again_seconds']} s"
                             if job["ask_again_seconds"] else ""), file=out)
        elif verb == "report":
            result = _report(conn, config, drone, cpv, now, **options)
            _answer(out, as_json, result, f"{cpv}: {result['status']}")
            if options.get("ok") and config.binhost.publish_on_report:
                from .sync import publish_soon

                publish_soon(config)
        elif verb == "release":
            result = delegate.release(conn, config, drone, cpv, now, options.get("because"),
                                      options.get("found"))
            _answer(out, as_json, result, f"{cpv}: released")
        elif verb == "profile":
            result = _bundle(conn, config, options["which"])
            _answer(out, as_json, result, result["tar"])
        else:
            raise SwarmError(f"unknown verb {verb!r}", ExitCode.USAGE)
    finally:
        conn.close()


def _report(conn, config: Config, drone: str, cpv: str, now, ok: bool = False,
            failed: bool = False, file: str | None = None, size: int | None = None,
            sha256: str | None = None, log: str | None = None, kind: str | None = None,
            missing: str | None = None) -> dict:
    if ok == failed:
        raise SwarmError("say --ok or --failed", ExitCode.USAGE)
    if ok:
        if not file or log or kind:
            raise SwarmError("--ok takes --file (and --size, --sha256), not --log or --kind",
                             ExitCode.USAGE)
        return delegate.report_built(conn, config, drone, cpv, file, now, size, sha256)
    if file or size is not None or sha256:
        raise SwarmError("--failed takes --log, --kind and --missing, not --file, --size or "
                         "--sha256", ExitCode.USAGE)
    if missing and kind != FailureKind.MISSING_DEPENDENCY:
        raise SwarmError(f"--missing goes with --kind {FailureKind.MISSING_DEPENDENCY}",
                         ExitCode.USAGE)
    if kind is not None and kind not in FailureKind.__members__.values():
        raise SwarmError(f"--kind is one of {', '.join(FailureKind)}, not {kind!r}",
                         ExitCode.USAGE)
    return delegate.report_failed(conn, config, drone, cpv, now, log,
                                  FailureKind(kind or FailureKind.BUILD),
                                  [c for c in (missing or "").split(",") if c])


def _bundle(conn, config: Config, which: str) -> dict:
    """A profile's bundle: by digest (what a claim names), or by profile name, with the
    profile as its last scan recorded it and its binhost (swarm-drone --base)."""
    if profile.DIGEST.fullmatch(which):
        return profile.read_bundle(conn, config, which)
    if which not in config.profile_names():
        raise SwarmError(f"no profile {which!r} (profiles: {', '.join(config.profile_names())})",
                         ExitCode.USAGE)
    recorded = profile.recorded(conn, which)
    if recorded is None:
        raise SwarmError(f"profile {which} has not been scanned yet (run swarm-fresh)")
    binhost = config.binhost_of(which)
    return {**profile.read_bundle(conn, config, recorded["digest"]), "profile": recorded,
            "binhost": {"name": binhost, "url": config.binhost_named(binhost).url}}


def _answer(out: IO[str], as_json: bool, result: dict, text: str) -> None:
    if as_json:
        emit_json(result, out)
    else:
        print(text, file=out)
