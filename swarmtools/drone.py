"""The drone worker: heartbeat, claim, build with emerge, upload, report.

Dependencies the binhost already has come from it as binaries
(``--usepkg=y --getbinpkg=y``, ``PORTAGE_BINHOST`` and ``getbinpkg`` in
FEATURES); claims are not yet held back until all dependencies are published
(dependency order is swarm-resolve's job), so a drone may still build some
from source. Only the claimed package's own binary is uploaded. While emerge runs the drone keeps
sending heartbeats, which extend its lease, so a build of hours keeps it;
a drone that dies stops them and its lease expires.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from . import __version__, clock, gpkg
from .config import Config
from .delegate import check_drone
from .errors import SwarmError
from .transport import Transport, for_drone

log = logging.getLogger(__name__)

PORTAGE_FACTS = ("ARCH", "CHOST", "CFLAGS", "ABI_X86", "MAKEOPTS", "PKGDIR", "PORTAGE_TMPDIR")


class Drone:
    """One drone's worker loop."""

    def __init__(self, config: Config, name: str, transport: Transport | None = None):
        check_drone(config, name)
        self.config = config
        self.name = name
        self.transport = transport or for_drone(config, name)
        self.env = build_environment(config, name)
        self.stop = threading.Event()
        self.child: subprocess.Popen | None = None
        self.portage = portage_settings(self.env)
        if not self.portage.get("PKGDIR"):
            raise SwarmError("portageq did not tell PKGDIR: is Portage set up on this drone?")

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
            "version": __version__,
        }

    def heartbeat(self) -> None:
        """Send the facts; the orchestrator extends this drone's leases."""
        answer = self.transport.call("heartbeat", input=json.dumps(self.facts()))
        if answer and not answer.get("config_matches", True):
            log.warning("this drone's config differs from the orchestrator's (digests differ)")

    def run(self, once: bool = False, drain: bool = False) -> int:
        """The loop; returns the exit code. once: one package; drain: until none is left."""
        poll = self.config.delegate.poll_seconds
        failed = False
        while not self.stop.is_set():
            try:
                self.heartbeat()
                job = self.transport.call("claim")
            except SwarmError as exc:
                if once or drain:
                    raise
                log.error("%s; trying again in %d s", exc, poll)
                self.stop.wait(poll)
                continue
            if job is None:
                if once or drain:
                    return 0
                log.debug("nothing to build; sleeping %d s", poll)
                self.stop.wait(poll)
                continue
            try:
                failed |= self.build(job) == "failed"
            except SwarmError as exc:
                # Upload or report failed: give the package back if we can;
                # otherwise its lease runs out and another drone takes it.
                if once or drain:
                    raise
                log.error("%s: %s; releasing it", job["cpv"], exc)
                self._try_release(job["cpv"])
                self.stop.wait(poll)
                continue
            if once:
                break
        return 1 if failed and once else 0

    def build(self, job: dict) -> str:
        """Build one claimed package, upload and report: 'built', 'failed' or 'released'."""
        cpv = job["cpv"]
        log.info("building %s", cpv)
        started = time.time()
        pkgdir = Path(self.portage["PKGDIR"])
        before = set(binpkgs(pkgdir, cpv))
        with tempfile.TemporaryDirectory(prefix="swarm-drone-") as tmp:
            build_log = Path(tmp) / "build.log"
            code = self._emerge(cpv, build_log)
            if self.stop.is_set():
                log.warning("stopping: releasing %s", cpv)
                self.transport.call("release", cpv)
                return "released"
            package = find_binpkg(pkgdir, cpv, before) if code == 0 else None
            if package is None:
                if code == 0:
                    with open(build_log, "a") as f:
                        f.write(f"\nswarm-drone: emerge succeeded but no binary package of {cpv}"
                                f" is in {self.portage['PKGDIR']}\n")
                remote_log = f"logs/{cpv}-{clock.stamp(clock.utcnow())}.log"
                self.transport.upload(build_log, remote_log)
                self.transport.call("report", cpv, "--failed", "--log", remote_log)
                log.error("%s failed (emerge exit %d) after %.0f s", cpv, code, time.time() - started)
                return "failed"
        category = cpv.split("/", 1)[0]
        pn = package.parent.name
        relative = f"{category}/{pn}/{package.name}"
        self.transport.upload(package, relative)
        size, digest = gpkg.file_digest(package)
        self.transport.call("report", cpv, "--ok", "--file", relative, "--size", str(size),
                            "--sha256", digest)
        log.info("built %s in %.0f s: %s", cpv, time.time() - started, relative)
        return "built"

    def _try_release(self, cpv: str) -> None:
        try:
            self.transport.call("release", cpv)
        except SwarmError as exc:
            log.warning("could not release %s: %s", cpv, exc)

    def _emerge(self, cpv: str, build_log: Path) -> int:
        command = ["emerge", "--oneshot", "--usepkg=y", "--getbinpkg=y", "--buildpkg=y",
                   "--color=n", "--nospinner", f"={cpv}"]
        heartbeat_seconds = self.config.delegate.heartbeat_seconds
        with open(build_log, "w") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            # Own session: on SIGTERM the whole build tree is stopped at once.
            self.child = subprocess.Popen(command, env=self.env, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
            try:
                while True:
                    try:
                        return self.child.wait(timeout=heartbeat_seconds)
                    except subprocess.TimeoutExpired:
                        self._beat_while_building()
            finally:
                self.child = None

    def _beat_while_building(self) -> None:
        try:
            self.heartbeat()
        except SwarmError as exc:
            # The orchestrator may be back before the lease runs out.
            log.warning("heartbeat failed while building: %s", exc)

    def terminate(self, *_signal) -> None:
        """SIGTERM/SIGINT: stop the build, release its lease, leave."""
        self.stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)


def build_environment(config: Config, name: str) -> dict[str, str]:
    """The environment of this drone's emerge: binaries from the binhost first."""
    env = {**os.environ, **config.drones[name].environment}
    env["PORTAGE_BINHOST"] = config.binhost.url
    # FEATURES from the environment is added to make.conf's, not a replacement.
    env["FEATURES"] = (env.get("FEATURES", "") + " getbinpkg").strip()
    return env


def portage_settings(env: dict[str, str]) -> dict[str, str]:
    """ARCH, CHOST, CFLAGS, ... as Portage sees them on this drone (portageq)."""
    proc = subprocess.run(["portageq", "envvar", "-v", *PORTAGE_FACTS], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
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
