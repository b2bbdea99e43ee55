"""The drone worker: heartbeat, claim, build, upload, report.

Each round a claim carries the heartbeat (one ssh session); the claimed
package is built by :mod:`build` (in a throw-away root, with the build
profile's settings); its binary, or its log, is uploaded and reported. While
emerge runs the drone keeps sending heartbeats that name the package, which
extend its lease, so a build of hours keeps it; a drone that dies stops them
and its lease expires.

A finished build is never thrown away for a network fault: its upload and
report are retried (the transport retries at once, the loop later) while
the drone keeps naming it in its heartbeats.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import shutil
import time
from pathlib import Path

from . import __version__, clock, gpkg
from .build import Builder, GiveBack, Outcome
from .config import Config
from .errors import ConfigError, ExitCode, SwarmError
from .packages import FailureKind
from .transport import Transport, TransportError, for_drone

log = logging.getLogger(__name__)

_FOUND = re.compile(r"[^A-Za-z0-9+_.,/=:-]")  # what the gateway lets through in --found


class Drone:
    """One drone's worker loop: the protocol with the orchestrator around its builds."""

    def __init__(self, config: Config, name: str, transport: Transport | None = None):
        config.drone(name)
        self.config = config
        self.name = name
        self.transport = transport or for_drone(config, name)
        self.builder = Builder(config, name)
        self.stop = self.builder.stop
        self.working_on: str | None = None  # named in every heartbeat
        self.beat_due = 0.0  # time.monotonic() when the next heartbeat is due while building

    def facts(self) -> dict:
        """What the orchestrator should know of this drone (heartbeat payload)."""
        portage = self.builder.portage
        jobs = re.search(r"-j\s*(\d+)", portage.get("MAKEOPTS", ""))
        pkgdir = Path(portage["PKGDIR"])
        return {
            "arch": portage.get("ARCH", ""),
            "machine": platform.machine(),
            "chost": portage.get("CHOST", ""),
            "cflags": portage.get("CFLAGS", ""),
            "abi_x86": portage.get("ABI_X86", ""),
            "cuda": bool(shutil.which("nvcc") or Path("/dev/nvidia0").exists()),
            "jobs": int(jobs.group(1)) if jobs else os.cpu_count(),
            "load": round(os.getloadavg()[0], 2),
            "free_disk": shutil.disk_usage(pkgdir if pkgdir.exists() else "/").free,
            "config_digest": self.config.digest(),
            "profile_digest": self.builder.profile_digest(),
            "binhost": portage.get("PORTAGE_BINHOST", ""),
            "binrepos": self.builder.binrepos,
            "version": __version__,
            **self.builder.facts(),
            "building": [self.working_on] if self.working_on else [],
        }

    def heartbeat(self) -> None:
        """Send the facts; the orchestrator extends the lease of what this drone builds."""
        self._heard(self.transport.call("heartbeat", input=json.dumps(self.facts())))

    def claim(self) -> dict | None:
        """Ask for work, the heartbeat riding along (one ssh session): a job or the idle answer."""
        job = self.transport.call("claim", "--idle-info", "--heartbeat",
                                  input=json.dumps(self.facts()))
        self._heard(job)
        return job

    def _heard(self, answer: dict | None) -> None:
        """The orchestrator has our facts (and any lease its full length): next beat due."""
        self.beat_due = time.monotonic() + self.config.delegate.beat_seconds()
        if answer and not answer.get("config_matches", True):
            log.warning("this drone's config differs from the orchestrator's (digests differ)")

    def start(self) -> None:
        """Before the loop: refuse to build where builds cannot be isolated (the config does
        not say isolation = "none"), and remove what builds of a killed drone left."""
        from filelock import FileLock, Timeout

        problem = self.builder.isolation_problem()
        if problem:
            raise ConfigError(f"drone {self.name} cannot build in a throw-away root: {problem}; "
                              f'set drones.{self.name}.isolation = "none" to build in its live '
                              "system")
        # Held while the loop runs: the layers it clears belong to no running build.
        self._lock = FileLock(self.builder.workdir / "drone.lock")
        try:
            self.builder.workdir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise SwarmError(f"drone {self.name} already runs on this host (it holds "
                             f"{self._lock.lock_file})", ExitCode.TEMPFAIL) from None
        except OSError as exc:
            raise SwarmError(f"cannot use the drone's work directory {self.builder.workdir}: "
                             f"{exc.strerror}") from None
        self.builder.clear_stale()

    def run(self, once: bool = False, drain: bool = False) -> int:
        """The loop; returns the exit code. once: one package; drain: until none is left.

        Sessions: a claim (with the heartbeat) while idle, backing off from
        poll_seconds to idle_max_seconds unless the orchestrator says
        sooner; while building, a heartbeat every third of the lease; then
        an upload and a report. So a lease is held only by a drone that
        names it at least every third of the lease, and a drone that asks
        for work is told of any lease it holds and forgot (the claim gives
        it back).
        """
        wait = Backoff(self.config.delegate.poll_seconds, self.config.delegate.idle_max_seconds)
        failed = False
        pending: Outcome | None = None
        while not self.stop.is_set():
            try:
                if pending is None:
                    job = self.claim()
                    if job is None or job["cpv"] is None:
                        # --drain: done when nothing could become eligible without
                        # a new scan: nothing being built or published, no back-off
                        # about to end.
                        if once or (drain and not ((job or {}).get("in_progress")
                                                   or (job or {}).get("retry_soon"))):
                            return 0
                        pause = wait.next((job or {}).get("ask_again_seconds"))
                        log.debug("nothing to build; asking again in %.0f s", pause)
                        self.stop.wait(pause)
                        continue
                    pending = self.build(job)
                    if pending is None:  # stopped, or given back: not built here
                        if once:
                            return 1
                        # Given back: this drone cannot build what the scan
                        # asks now; it backs off as if idle.
                        self.stop.wait(wait.next())
                        continue
                    wait.reset()
                else:
                    self.heartbeat()  # names the pending build: its lease stays
                failed |= pending.kind in (FailureKind.BUILD, FailureKind.STALLED) and not pending.package
                self.deliver(pending)
                pending = None
                wait.reset()  # delivered: the orchestrator is back, and work may follow
            except TransportError as exc:
                # The orchestrator is away; a built package waits, named in
                # every heartbeat, until it can be delivered.
                if once or drain:
                    raise
                pause = wait.next()
                log.error("%s; trying again in %.0f s", exc, pause)
                self.stop.wait(pause)
                continue
            except SwarmError as exc:
                if once or drain:
                    raise
                # The orchestrator refused it (the lease ended, say): nothing to keep.
                log.error("%s", exc)
                self._drop(pending)
                pending = None
                self.stop.wait(wait.next())
                continue
            if once:
                break
        return 1 if failed and once else 0

    def _drop(self, pending: Outcome | None) -> None:
        if pending is not None:
            log.warning("giving up %s", pending.cpv)
            if pending.workdir:
                pending.workdir.cleanup()
            self.working_on = None

    def build(self, job: dict) -> Outcome | None:
        """Build one claimed package: its Outcome, or None when stopped or given back (released).

        A drone that cannot build it as the scan asks (its tree, its CHOST,
        the profile, its build root) gives it back: never a build failure.
        """
        cpv = job["cpv"]
        try:
            env = self.builder.environment(job, self._fetch_profile)
            self.working_on = cpv
            outcome = self.builder.build(cpv, env, self._beat_if_due)
        except GiveBack as give_back:
            log.warning("giving %s back: %s", cpv, give_back.found)
            self._release(cpv, "--because", give_back.because, "--found",
                          _FOUND.sub("_", give_back.found)[:300])
            return None
        if outcome is None:
            log.warning("stopping: releasing %s", cpv)
            self._release(cpv)
        return outcome

    def _fetch_profile(self, digest: str) -> dict:
        return self.transport.call("profile", digest)

    def make_base(self, profile_name: str) -> int:
        """Create or update the build root from the binhost: PROFILE_NAME's @system, as binaries."""
        answer = self.transport.call("profile", profile_name)
        return self.builder.make_base(answer["profile"], answer["binhost"]["url"],
                                      self._fetch_profile)

    def deliver(self, outcome: Outcome) -> None:
        """Upload and report a finished build (safe to repeat)."""
        if outcome.package is not None:
            self.transport.upload(outcome.package, outcome.relative)
            size, digest = gpkg.file_digest(outcome.package)
            self.transport.call("report", outcome.cpv, "--ok", "--file", outcome.relative,
                                "--size", str(size), "--sha256", digest)
            log.info("reported %s: %s", outcome.cpv, outcome.relative)
        else:
            remote_log = f"logs/{outcome.cpv}-{clock.stamp(clock.utcnow())}.log"
            self.transport.upload(outcome.log, remote_log)
            extra = ["--missing", ",".join(outcome.missing)] if outcome.missing else []
            self.transport.call("report", outcome.cpv, "--failed", "--kind", str(outcome.kind),
                                "--log", remote_log, *extra)
            outcome.workdir.cleanup()
        self.working_on = None

    def _release(self, cpv: str, *why: str) -> None:
        try:
            self.transport.call("release", cpv, *why)
        except SwarmError as exc:
            log.warning("could not release %s: %s", cpv, exc)
        self.working_on = None

    def _beat_if_due(self) -> None:
        """While building: the heartbeat that keeps the lease, when due."""
        if time.monotonic() < self.beat_due:
            return
        try:
            self.heartbeat()
        except SwarmError as exc:
            # The orchestrator may be back before the lease runs out: try again soon.
            self.beat_due = time.monotonic() + min(self.config.delegate.poll_seconds,
                                                   self.config.delegate.beat_seconds())
            log.warning("heartbeat failed while building: %s", exc)

    def terminate(self, *_signal) -> None:
        """SIGTERM/SIGINT: stop the build, release its lease, leave."""
        self.builder.terminate()


class Backoff:
    """An idle drone's wait: doubling from SHORTEST to LONGEST, jittered, reset by work.

    The orchestrator's ask_again_seconds cuts a wait short (work may soon
    be eligible); it never lengthens one beyond LONGEST.
    """

    def __init__(self, shortest: float, longest: float):
        self.shortest, self.longest = shortest, longest
        self.current = shortest

    def next(self, ask_again: float | None = None) -> float:
        pause = self.current if ask_again is None else min(self.current, max(ask_again, 0))
        self.current = min(self.current * 2, self.longest)
        # Jitter: drones started together (after an outage) do not ask together.
        return max(pause, self.shortest) * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.current = self.shortest


