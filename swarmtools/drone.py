"""The drone worker: heartbeat, claim, build with emerge, upload, report.

A claimed package's build-time dependencies are installed from the binhost
as binaries (``PORTAGE_BINHOST``, ``getbinpkg`` in FEATURES), then the
package alone is built with ``--buildpkgonly``; the drone never compiles
anything it did not claim (a missing binary dependency is reported as
such). Only the claimed package's own binary is uploaded. While emerge
runs the drone keeps sending heartbeats that name the package, which extend
its lease, so a build of hours keeps it; a drone that dies stops them and
its lease expires. A build that shows no progress (no output, no CPU time)
for ``delegate.max_silent_seconds`` is stopped and reported as stalled.

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
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__, clock, gpkg, profile
from .config import Config
from .emerge import parse_merge_list
from .errors import SwarmError
from .packages import FailureKind
from .transport import Transport, TransportError, for_drone

log = logging.getLogger(__name__)

# What portageq reads of the drone's own configuration: facts for the
# orchestrator, and the host-local values a profile's configuration keeps.
PORTAGE_FACTS = ("ARCH", "CHOST", "CFLAGS", "ABI_X86", "PORTAGE_BINHOST", "FEATURES",
                 *profile.HOST_LOCAL)
_FOUND = re.compile(r"[^A-Za-z0-9+_.,/=:-]")  # what the gateway lets through in --found
LOG_TAIL_BYTES = 4 << 20  # of a failed build's log: the end says why
CONSOLE_TAIL_BYTES = 256 << 10
STOP_GRACE_SECONDS = 10  # a build's whole session is killed this long after SIGTERM
WAIT_SLICE_SECONDS = 0.5  # how soon a running build notices a stop


@dataclass
class Outcome:
    """A finished build waiting to be delivered: its binary, or its log."""

    cpv: str
    package: Path | None = None  # the binary package (success)
    relative: str = ""  # where it goes under staging/DRONE/
    log: Path | None = None  # the log (failure)
    kind: FailureKind = FailureKind.BUILD
    missing: list[str] | None = None  # dependencies not on the binhost
    workdir: tempfile.TemporaryDirectory | None = None  # holds the log until delivered


class Drone:
    """One drone's worker loop."""

    def __init__(self, config: Config, name: str, transport: Transport | None = None):
        config.drone(name)
        self.config = config
        self.name = name
        self.transport = transport or for_drone(config, name)
        self.own_env = {**os.environ, **config.drones[name].environment}
        self.env = build_environment(config, name)
        self.job_env = self.env  # this build's: with its profile's PORTAGE_CONFIGROOT
        self.synced_for: str | None = None  # the scan's tree state it last synced towards
        self.stop = threading.Event()
        self.child: subprocess.Popen | None = None
        self.working_on: str | None = None  # named in every heartbeat
        self.beat_due = 0.0  # time.monotonic() when the next heartbeat is due while building
        # Its own settings (without the swarm's PORTAGE_BINHOST): facts, and
        # the host-local values kept under a profile's configuration.
        self.portage = portage_settings(self.own_env)
        self.binrepos = profile.binrepos_uris(self.own_env)
        if not self.portage.get("PKGDIR"):
            raise SwarmError("portageq did not tell PKGDIR: is Portage set up on this drone?")
        self.cache = (Path(self.portage.get("PORTAGE_TMPDIR") or "/var/tmp") / "swarmtools"
                      / name)  # profile bundles, and the PORTAGE_CONFIGROOT built from one

    def facts(self) -> dict:
        """What the orchestrator should know of this drone (heartbeat payload)."""
        jobs = re.search(r"-j\s*(\d+)", self.portage.get("MAKEOPTS", ""))
        pkgdir = Path(self.portage["PKGDIR"])
        return {
            "arch": self.portage.get("ARCH", ""),
            "machine": platform.machine(),
            "chost": self.portage.get("CHOST", ""),
            "cflags": self.portage.get("CFLAGS", ""),
            "abi_x86": self.portage.get("ABI_X86", ""),
            "cuda": bool(shutil.which("nvcc") or Path("/dev/nvidia0").exists()),
            "jobs": int(jobs.group(1)) if jobs else os.cpu_count(),
            "load": round(os.getloadavg()[0], 2),
            "free_disk": shutil.disk_usage(pkgdir if pkgdir.exists() else "/").free,
            "config_digest": self.config.digest(),
            "profile_digest": self.profile_digest(),
            "binhost": self.portage.get("PORTAGE_BINHOST", ""),
            "binrepos": self.binrepos,
            "version": __version__,
            "building": [self.working_on] if self.working_on else [],
        }

    def profile_digest(self) -> str | None:
        """The digest of the profile this drone last built with (None: never yet)."""
        try:
            return (self.cache / "configroot.digest").read_text().strip() or None
        except OSError:
            return None

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
                        # --drain: done when nothing is being built or published
                        # that could make more work eligible.
                        if once or (drain and not (job or {}).get("in_progress")):
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
                pending = self._drop(pending)
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
        return None

    def build(self, job: dict) -> Outcome | None:
        """Build one claimed package: its Outcome, or None when stopped (and given back).

        First its build-time dependencies (and their runtime ones) are
        installed from the binhost, as binaries only; then the package alone
        is built with --buildpkgonly. If anything but the claimed package
        would have to be compiled, nothing is: the package is reported as
        waiting for those dependencies (missing-binary-dependency).
        """
        cpv = job["cpv"]
        self.job_env = self.env
        if job.get("profile"):
            self.job_env, give_back = self.prepare(job["profile"])
            if give_back:
                because, found = give_back
                log.warning("giving %s back: %s", cpv, found)
                self._release(cpv, "--because", because, "--found",
                              _FOUND.sub("_", found)[:300])
                return None
        binhost = job.get("binhost") or {}
        if binhost.get("url"):
            # The binhost of the claim's profile: its dependencies come from
            # there (a binary of another binhost with other USE is not taken:
            # Portage's --binpkg-respect-use), and the build is published there.
            self.job_env = {**self.job_env, "PORTAGE_BINHOST": binhost["url"]}
            if binhost.get("name") != "default" and "PORTAGE_CONFIGROOT" in self.job_env:
                profile.only_binhost_from_environment(Path(self.job_env["PORTAGE_CONFIGROOT"]))
        self.working_on = cpv
        log.info("building %s", cpv)
        started = time.monotonic()
        pkgdir = Path(self.portage["PKGDIR"])
        before = set(binpkgs(pkgdir, cpv))
        workdir = tempfile.TemporaryDirectory(prefix="swarm-drone-")
        console = Path(workdir.name) / "console.log"
        logdir = Path(workdir.name) / "logs"
        logdir.mkdir()
        missing, code, stalled = self._build_steps(cpv, console, logdir)
        if self.stop.is_set():
            log.warning("stopping: releasing %s", cpv)
            workdir.cleanup()
            self._release(cpv)
            return None
        if missing:
            log.warning("%s: not on the binhost yet, not compiled here: %s", cpv, " ".join(missing))
            return Outcome(cpv, log=failure_log(cpv, console, logdir, Path(workdir.name)),
                           kind=FailureKind.MISSING_DEPENDENCY, missing=missing, workdir=workdir)
        package = find_binpkg(pkgdir, cpv, before) if code == 0 and not stalled else None
        if package is None:
            if code == 0 and not stalled:
                with open(console, "a") as f:
                    f.write(f"\nswarm-drone: emerge succeeded but no binary package of {cpv}"
                            f" is in {self.portage['PKGDIR']}\n")
            kept = failure_log(cpv, console, logdir, Path(workdir.name))
            kind = FailureKind.STALLED if stalled else failure_kind(kept)
            log.error("%s failed (%s, emerge exit %s) after %.0f s", cpv, kind, code,
                      time.monotonic() - started)
            return Outcome(cpv, log=kept, kind=kind, workdir=workdir)
        workdir.cleanup()
        log.info("built %s in %.0f s", cpv, time.monotonic() - started)
        relative = f"{cpv.split('/', 1)[0]}/{package.parent.name}/{package.name}"
        return Outcome(cpv, package=package, relative=relative)

    def prepare(self, wanted: dict) -> tuple[dict, tuple[str, str] | None]:
        """The environment to build with WANTED (a claim's profile), or why not (because, found).

        The drone must be of the profile's CHOST and ARCH and have the
        repositories the scan read, in the same state: else it runs its
        sync_command (once for each state the scan had), and if they still
        differ it gives the package back (never a build failure: the package
        is not at fault). Any trouble setting up the profile is a give-back
        too; only a lost orchestrator is an error of the loop.
        """
        try:
            return self._prepare(wanted)
        except TransportError:
            raise
        except Exception as exc:  # noqa: BLE001 - never a crash holding a lease
            log.error("cannot set up the build profile %s: %s", wanted.get("digest"), exc)
            return self.env, ("profile", str(exc))

    def _prepare(self, wanted: dict) -> tuple[dict, tuple[str, str] | None]:
        mine = {"CHOST": self.portage.get("CHOST", ""), "ARCH": self.portage.get("ARCH", "")}
        differ = [f"{k}={mine[k]}(profile:{wanted[k.lower()]})" for k in mine
                  if wanted.get(k.lower()) and mine[k] != wanted[k.lower()]]
        if differ:
            return self.env, ("settings", ",".join(differ))
        own_root, repositories = profile.local_repositories(self.own_env)
        differ = profile.tree_differences(wanted["tree"], repositories)
        command = self.config.drones[self.name].sync_command
        state = json.dumps(wanted["tree"], sort_keys=True)
        if differ and command and self.synced_for != state:
            # Once for each state of the scan: a tree newer than the scan's
            # does not become older by syncing again.
            self.synced_for = state
            log.warning("%s; syncing (%s)", differ[0], shlex.join(command))
            try:
                proc = subprocess.run(command, env=self.own_env, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True)
            except OSError as exc:
                log.error("cannot run %s: %s", shlex.join(command), exc.strerror)
            else:
                if proc.returncode:
                    log.error("%s exited %d: %s", shlex.join(command), proc.returncode,
                              (proc.stderr or proc.stdout).strip()[-500:])
            own_root, repositories = profile.local_repositories(self.own_env)
            differ = profile.tree_differences(wanted["tree"], repositories)
        if differ:
            return self.env, ("tree", "; ".join(differ))
        bundle = self.cache / f"{wanted['digest']}.tar"
        if not bundle.is_file():
            answer = self.transport.call("profile", wanted["digest"])
            bundle = profile.unpack(answer, wanted["digest"], self.cache)
        root = profile.assemble(bundle, self.cache / "configroot", repositories, own_root,
                                {k: self.portage.get(k, "") for k in (*profile.HOST_LOCAL,
                                                                      "FEATURES")})
        (self.cache / "configroot.digest").write_text(wanted["digest"] + "\n")
        return {**self.env, "PORTAGE_CONFIGROOT": str(root)}, None

    def _build_steps(self, cpv: str, console: Path, logdir: Path) -> tuple[list[str], int, bool]:
        """(missing dependencies, emerge's exit code, stalled) of building CPV."""
        from portage.versions import cpv_getkey

        binaries = ["--usepkg=y", "--getbinpkg=y", f"--usepkg-exclude={cpv_getkey(cpv)}"]
        deps = ["emerge", "--oneshot", "--color=n", "--nospinner", "--onlydeps",
                "--onlydeps-with-rdeps=n", *binaries, f"={cpv}"]
        missing, code = self._would_compile(deps, cpv, console)
        if missing or code or self.stop.is_set():
            return missing, code, False
        code, stalled = self._emerge(deps, console, logdir)
        if code or stalled or self.stop.is_set():
            return [], code, stalled
        build = ["emerge", "--oneshot", "--color=n", "--nospinner", "--buildpkgonly", f"={cpv}"]
        code, stalled = self._emerge(build, console, logdir)
        if code and not stalled and "requires all dependencies to be merged" in console.read_text(
                errors="replace"):
            missing, _ = self._would_compile(build, cpv, console)
        return missing, code, stalled

    def _would_compile(self, command: list[str], cpv: str, console: Path) -> tuple[list[str], int]:
        """What COMMAND would compile besides CPV (emerge --pretend), and emerge's exit code."""
        pretend = [command[0], "--pretend", *command[1:]]
        proc = subprocess.run(pretend, env=self.job_env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        with open(console, "a") as out:
            out.write(f"$ {shlex.join(pretend)}\n{proc.stdout}{proc.stderr}")
        rows = [line for line in proc.stdout.splitlines() if line.startswith("[")]
        if not rows:
            return [], proc.returncode
        merges = parse_merge_list(proc.stdout if proc.stdout.endswith("\n") else proc.stdout + "\n")
        compiled = [row.cpv for row in merges.packages() if row.kind == "ebuild" and row.cpv != cpv]
        return compiled, 0 if compiled else proc.returncode

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

    def _emerge(self, command: list[str], console: Path, logdir: Path) -> tuple[int, bool]:
        """Run an emerge with heartbeats and the stall watch; (exit code, stalled)."""
        silent_limit = self.config.delegate.max_silent_seconds
        # Progress is looked at locally (no session) a few times within the limit.
        check_every = min(60.0, max(silent_limit / 4, WAIT_SLICE_SECONDS))
        cpv = command[-1].lstrip("=")
        # Portage writes the real build log (PORTAGE_LOG_FILE) under PORT_LOGDIR.
        env = {**self.job_env, "PORT_LOGDIR": str(logdir)}
        with open(console, "a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            # Own session: on SIGTERM (or a stall) the whole build tree stops at once.
            self.child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            if self.stop.is_set():  # SIGTERM came before there was a child to stop
                _stop_session(self.child)
            progress, quiet_since = None, time.monotonic()
            next_check, killed_at = quiet_since, None
            try:
                while True:
                    try:
                        return self.child.wait(timeout=WAIT_SLICE_SECONDS), False
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if self.stop.is_set():
                        # emerge usually ends on SIGTERM; one that swallowed it
                        # (or waits for a child that ignores it) is killed.
                        killed_at = killed_at or now + STOP_GRACE_SECONDS
                        if now >= killed_at:
                            log.warning("%s: still running %d s after SIGTERM: killing it",
                                        cpv, STOP_GRACE_SECONDS)
                            _kill_session(self.child)
                            return self.child.wait(), False
                        continue
                    if now >= self.beat_due:
                        self._beat_while_building()
                    if not silent_limit or now < next_check:
                        continue
                    next_check = now + check_every
                    now_progress = (_tree_size(console, logdir), session_cpu(self.child.pid))
                    if now_progress != progress:
                        progress, quiet_since = now_progress, now
                    elif now - quiet_since >= silent_limit:
                        log.error("%s: no output and no CPU time for %d s: stopping it",
                                  cpv, silent_limit)
                        out.write(f"\nswarm-drone: no output and no CPU time for {silent_limit} s"
                                  " (delegate.max_silent_seconds): stopped\n")
                        out.flush()
                        _stop_session(self.child)
                        return self.child.wait(), True
            finally:
                self.child = None

    def _beat_while_building(self) -> None:
        try:
            self.heartbeat()
        except SwarmError as exc:
            # The orchestrator may be back before the lease runs out: try again soon.
            self.beat_due = time.monotonic() + min(self.config.delegate.poll_seconds,
                                                   self.config.delegate.beat_seconds())
            log.warning("heartbeat failed while building: %s", exc)

    def terminate(self, *_signal) -> None:
        """SIGTERM/SIGINT: stop the build, release its lease, leave."""
        self.stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:  # ended meanwhile
                pass


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


def _stop_session(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_session(child)
    except ProcessLookupError:
        pass


def _kill_session(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tree_size(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def session_cpu(session: int) -> int:
    """CPU clock ticks used by the processes of a session (a build tree), reaped ones included."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # After the command name: state ppid pgrp session ... utime stime cutime cstime.
        if int(fields[3]) == session:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks


def failure_log(cpv: str, console: Path, logdir: Path, workdir: Path) -> Path:
    """One file for the orchestrator: the end of Portage's build log, then of emerge's output."""
    pf = cpv.split("/", 1)[1]
    logs = sorted((p for p in logdir.rglob("*.log") if pf in p.name),
                  key=lambda p: p.stat().st_mtime)
    target = workdir / "failure.log"
    with open(target, "wb") as out:
        if logs:
            out.write(f"==> build log {logs[-1].name} (its last {LOG_TAIL_BYTES >> 20} MiB)\n"
                      .encode())
            out.write(_tail(logs[-1], LOG_TAIL_BYTES))
            out.write(b"\n")
        out.write(f"==> emerge output (its last {CONSOLE_TAIL_BYTES >> 10} KiB)\n".encode())
        out.write(_tail(console, CONSOLE_TAIL_BYTES))
    return target


# What a log says when the drone, not the package, is at fault. Such a
# failure never counts against the package (no exclusion, no attempt).
ENVIRONMENT_SIGNS = (
    re.compile(rb"No space left on device|Disk quota exceeded"),
    re.compile(rb"Cannot allocate memory|virtual memory exhausted|out of memory allocating"),
    re.compile(rb"Read-only file system"),
)
FETCH_SIGNS = (
    re.compile(rb"^!!! Fetch failed for ", re.M),
    re.compile(rb"^!!! Couldn't download '", re.M),
    re.compile(rb"Fetch failed for '[^']+'"),
)


def failure_kind(log_file: Path) -> FailureKind:
    """environment, fetch or build: what a failed build's log shows."""
    text = log_file.read_bytes()
    if any(sign.search(text) for sign in ENVIRONMENT_SIGNS):
        return FailureKind.ENVIRONMENT
    if any(sign.search(text) for sign in FETCH_SIGNS):
        return FailureKind.FETCH
    return FailureKind.BUILD


def _tail(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read()


def build_environment(config: Config, name: str) -> dict[str, str]:
    """The environment of this drone's emerge: binaries from the binhost first."""
    env = {**os.environ, **config.drones[name].environment}
    env["PORTAGE_BINHOST"] = config.binhost.url
    # FEATURES from the environment is added to make.conf's, not a replacement.
    env["FEATURES"] = (env.get("FEATURES", "") + " getbinpkg").strip()
    return env


def portage_settings(env: dict[str, str]) -> dict[str, str]:
    """ARCH, CHOST, CFLAGS, ... as Portage sees them on this drone (portageq)."""
    try:
        proc = subprocess.run(["portageq", "envvar", "-v", *PORTAGE_FACTS], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SwarmError(f"cannot run portageq ({exc.strerror}): is Portage installed on this "
                         "drone, and on the PATH of the drone's environment?") from None
    settings = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in PORTAGE_FACTS:
            words = shlex.split(value)
            settings[name] = words[0] if len(words) == 1 else " ".join(words)
    return settings


def binpkgs(pkgdir: Path, cpv: str) -> dict[Path, tuple[int, float]]:
    """The binary packages of CPV in PKGDIR, with (build id, mtime)."""
    category, pf = cpv.split("/", 1)
    found = {}
    for path in pkgdir.glob(f"{category}/*/{pf}*"):
        name = gpkg.parse_name(path.name)
        if name and name.pf == pf:
            found[path] = (name.build_id or 0, path.stat().st_mtime)
    return found


def find_binpkg(pkgdir: Path, cpv: str, before: set[Path]) -> Path | None:
    """The binary package emerge just wrote for CPV; else (reused with --usepkg) the newest."""
    found = binpkgs(pkgdir, cpv)
    new = {path: key for path, key in found.items() if path not in before}
    candidates = new or found
    return max(candidates, key=candidates.get) if candidates else None
