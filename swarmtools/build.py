"""One build on a drone: the build profile, the throw-away root, the emerge steps, the outcome.

A claimed package is built in two steps, each checked with ``--pretend``
first: its build-time dependencies (and their runtime ones) are installed
from the binhost as binaries only, then the package alone is built with
``--buildpkgonly``. If anything but the claimed package would be compiled,
nothing is: the package is reported as waiting for those dependencies.

Every step runs in the drone's throw-away root (:mod:`cleanroom`): the build
root (the drone's own system, or a clean base) under an overlay whose upper
layer is removed when the build ends. So the dependencies a build installs
never reach the drone's system, and each build starts from the build root
alone: what an earlier build (for another profile, with other USE) installed
is gone. With ``isolation = "none"`` the steps run in the drone's live
system, as Portage does by default.

While emerge runs, the drone's heartbeats go on (a callback) and a build
that shows no progress (no output, and under 2 % of a core's CPU time) for
``delegate.max_silent_seconds`` is stopped and reported as stalled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import cleanroom, gpkg, profile
from .config import Config
from .emerge import parse_merge_list
from .errors import SwarmError
from .packages import FailureKind

log = logging.getLogger(__name__)

# What portageq reads of the drone's own configuration: facts for the
# orchestrator, where its system is, and the host-local values a profile's
# configuration keeps.
PORTAGE_FACTS = ("ARCH", "CHOST", "CFLAGS", "ABI_X86", "PORTAGE_BINHOST", "FEATURES", "EROOT",
                 "EPREFIX", *profile.HOST_LOCAL)
LOG_TAIL_BYTES = 4 << 20  # of a failed build's log: the end says why
CONSOLE_TAIL_BYTES = 256 << 10
STOP_GRACE_SECONDS = 10  # a build's whole session is killed this long after SIGTERM
WAIT_SLICE_SECONDS = 0.5  # how soon a running build notices a stop
IDLE_CPU_SHARE = 0.02  # below 2 % of a core, a build that writes nothing is not working
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BUILDS = "builds"  # under the work directory: one folder of layers a build


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


class GiveBack(Exception):
    """This drone cannot build the package as the scan asks (not the package's fault).

    BECAUSE is a reason the orchestrator knows (delegate.GIVE_BACK).
    """

    def __init__(self, because: str, found: str):
        super().__init__(found)
        self.because, self.found = because, found


class Builder:
    """How this drone builds: its own Portage settings, its work directory, its build root."""

    def __init__(self, config: Config, name: str):
        settings = config.drone(name)
        self.config, self.name = config, name
        self.own_env = {**os.environ, **settings.environment}
        self.env = build_environment(config, name)
        # Its own settings (without the swarm's PORTAGE_BINHOST): facts, and
        # the host-local values kept under a profile's configuration.
        self.portage = portage_settings(self.own_env)
        if not self.portage.get("PKGDIR"):
            raise SwarmError("portageq did not tell PKGDIR: is Portage set up on this drone?")
        self.binrepos = profile.binrepos_uris(self.own_env)
        # Profile bundles, the configuration root built from one, the builds' layers.
        self.workdir = Path(self.portage.get("PORTAGE_TMPDIR") or "/var/tmp") / "swarmtools" / name
        self.isolation = settings.isolation
        self.build_root = settings.build_root
        self.eroot = os.path.normpath(self.portage.get("EROOT") or "/")
        # A base is a ROOT as emerge --root makes one: its system is at EPREFIX inside it.
        self.lower = (os.path.join(settings.build_root, self.portage.get("EPREFIX", "").lstrip("/"))
                      if settings.build_root else self.eroot)
        self.synced_for: str | None = None  # the scan's tree state it last synced towards
        self.repositories: dict[str, Path] | None = None  # as the last profile set-up read them
        self.stop = threading.Event()
        self.child: subprocess.Popen | None = None

    @property
    def emerge_log(self) -> Path:
        """What the builds' emerge wrote to emerge.log (their own is thrown away with them)."""
        return self.workdir / "emerge.log"

    def facts(self) -> dict:
        """What the orchestrator should know of how this drone builds."""
        return {"isolation": self.isolation, "build_root": self.build_root or self.eroot}

    def profile_digest(self) -> str | None:
        """The digest of the profile this drone last built with (None: never yet)."""
        try:
            return (self.workdir / "configroot.digest").read_text().strip() or None
        except OSError:
            return None

    # The throw-away root.

    def room(self, layers: Path, passed: list[Path], env: dict[str, str]) -> cleanroom.Room:
        """The room of a build with ENV: the build root, and what it shares with the drone
        (PASSED, writable, besides PKGDIR, DISTDIR and CCACHE_DIR)."""
        # (Read by this build's profile set-up already, as a rule: Portage's config is slow.)
        repositories = self.repositories or profile.local_repositories(self.own_env)[1]
        writable = [Path(self.portage["PKGDIR"]), *passed]
        for key in ("DISTDIR", "CCACHE_DIR"):  # downloads and the compiler cache are shared
            if self.portage.get(key) and Path(self.portage[key]).is_dir():
                writable.append(Path(self.portage[key]))
        # Its configuration: the profile's, or (a claim without one) this drone's own.
        config_root = Path(env.get("PORTAGE_CONFIGROOT") or self.eroot, "etc", "portage")
        read_only = [*repositories.values(), config_root]
        binds = [cleanroom.Bind(str(p), True) for p in writable]
        binds += [cleanroom.Bind(str(p)) for p in read_only if p.exists()]
        return cleanroom.Room(self.lower, self.eroot, str(layers), tuple(binds),
                              (str(self.workdir),))

    def isolation_problem(self) -> str | None:
        """Why this drone cannot build in a throw-away root (None: it can, or builds live)."""
        if self.isolation == "none":
            return None
        layers = self.workdir / BUILDS / f"probe-{os.getpid()}"
        return cleanroom.probe(self.room(layers, [], self.env))

    def clear_stale(self) -> None:
        """Remove the layers a killed drone left (none may be in use: the drone's lock)."""
        for name in cleanroom.clear_stale(self.workdir / BUILDS):
            log.info("removed the layers of an earlier build: %s", name)

    # The build profile.

    def environment(self, job: dict, fetch: Callable[[str], dict]) -> dict[str, str]:
        """The environment to build JOB with: its profile and binhost; raises GiveBack.

        FETCH(digest) asks the orchestrator for a profile bundle.
        """
        env = self.env
        if job.get("profile"):
            env = self.prepare(job["profile"], fetch)
        binhost = job.get("binhost") or {}
        if binhost.get("url"):
            # The binhost of the claim's profile: its dependencies come from
            # there (a binary of another binhost with other USE is not taken:
            # Portage's --binpkg-respect-use), and the build is published there.
            env = {**env, "PORTAGE_BINHOST": binhost["url"]}
            if binhost.get("name") != "default" and "PORTAGE_CONFIGROOT" in env:
                profile.only_binhost_from_environment(Path(env["PORTAGE_CONFIGROOT"]))
        return env

    def prepare(self, wanted: dict, fetch: Callable[[str], dict]) -> dict[str, str]:
        """The environment to build with WANTED (a claim's profile); raises GiveBack.

        The drone must be of the profile's CHOST and ARCH and have the
        repositories the scan read, in the same state: else it runs its
        sync_command (once for each state the scan had), and if they still
        differ it gives the package back (never a build failure: the package
        is not at fault). Any trouble setting up the profile is a give-back
        too; only a lost orchestrator (TransportError) is an error of the loop.
        """
        from .transport import TransportError

        try:
            return self._prepare(wanted, fetch)
        except (GiveBack, TransportError):
            raise
        except Exception as exc:  # noqa: BLE001 - never a crash holding a lease
            log.error("cannot set up the build profile %s: %s", wanted.get("digest"), exc)
            raise GiveBack("profile", str(exc)) from None

    def _prepare(self, wanted: dict, fetch: Callable[[str], dict]) -> dict[str, str]:
        mine = {"CHOST": self.portage.get("CHOST", ""), "ARCH": self.portage.get("ARCH", "")}
        differ = [f"{k}={mine[k]}(profile:{wanted[k.lower()]})" for k in mine
                  if wanted.get(k.lower()) and mine[k] != wanted[k.lower()]]
        if differ:
            raise GiveBack("settings", ",".join(differ))
        own_root, repositories = self._synced_towards(wanted["tree"])
        bundle = self.workdir / f"{wanted['digest']}.tar"
        if not bundle.is_file():
            bundle = profile.unpack(fetch(wanted["digest"]), wanted["digest"], self.workdir)
        root = profile.assemble(bundle, self.workdir / "configroot", repositories, own_root,
                                {k: self.portage.get(k, "") for k in (*profile.HOST_LOCAL,
                                                                      "FEATURES")})
        (self.workdir / "configroot.digest").write_text(wanted["digest"] + "\n")
        return {**self.env, "PORTAGE_CONFIGROOT": str(root)}

    def _synced_towards(self, tree: dict[str, str]) -> tuple[Path, dict[str, Path]]:
        """This host's config root and repositories, synced once towards TREE; raises GiveBack."""
        own_root, repositories = profile.local_repositories(self.own_env)
        differ = profile.tree_differences(tree, repositories)
        command = self.config.drone(self.name).sync_command
        state = json.dumps(tree, sort_keys=True)
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
            differ = profile.tree_differences(tree, repositories)
        if differ:
            raise GiveBack("tree", "; ".join(differ))
        self.repositories = repositories
        return own_root, repositories

    # The build.

    def build(self, cpv: str, env: dict[str, str], beat: Callable[[], None]) -> Outcome | None:
        """Build CPV with ENV: its Outcome, or None when stopped; raises GiveBack.

        BEAT is called while emerge runs (the drone's heartbeats).
        """
        log.info("building %s", cpv)
        started = time.monotonic()
        pkgdir = Path(self.portage["PKGDIR"])
        before = set(binpkgs(pkgdir, cpv))
        workdir = tempfile.TemporaryDirectory(prefix="swarm-drone-")
        console, logdir = Path(workdir.name) / "console.log", Path(workdir.name) / "logs"
        logdir.mkdir()
        room = layers = None
        if self.isolation != "none":
            (self.workdir / BUILDS).mkdir(parents=True, exist_ok=True)
            layers = Path(tempfile.mkdtemp(prefix=cpv.replace("/", "_") + "-",
                                           dir=self.workdir / BUILDS))
            room = self.room(layers, [logdir], env)
        try:
            steps = _Steps(self, env, room, console, logdir, beat)
            missing, code, stalled = steps.run(cpv)
        finally:
            if room is not None:
                self._keep_emerge_log(layers)
                cleanroom.remove(layers)
        if self.stop.is_set():
            workdir.cleanup()
            return None
        if code == cleanroom.UNAVAILABLE and (why := cleanroom.failure(console.read_text(
                errors="replace"))):
            workdir.cleanup()
            raise GiveBack("isolation", why)
        if missing:
            log.warning("%s: not on the binhost yet, not compiled here: %s", cpv, " ".join(missing))
            return Outcome(cpv, log=failure_log(cpv, console, logdir, Path(workdir.name)),
                           kind=FailureKind.MISSING_DEPENDENCY, missing=missing, workdir=workdir)
        package = find_binpkg(pkgdir, cpv, before) if code == 0 and not stalled else None
        if package is None:
            if code == 0 and not stalled:
                with open(console, "a") as f:
                    f.write(f"\nswarm-drone: emerge succeeded but no binary package of {cpv}"
                            f" is in {pkgdir}\n")
            kept = failure_log(cpv, console, logdir, Path(workdir.name))
            kind = FailureKind.STALLED if stalled else failure_kind(kept)
            log.error("%s failed (%s, emerge exit %s) after %.0f s", cpv, kind, code,
                      time.monotonic() - started)
            return Outcome(cpv, log=kept, kind=kind, workdir=workdir)
        workdir.cleanup()
        log.info("built %s in %.0f s", cpv, time.monotonic() - started)
        relative = f"{cpv.split('/', 1)[0]}/{package.parent.name}/{package.name}"
        return Outcome(cpv, package=package, relative=relative)

    def _keep_emerge_log(self, layers: Path) -> None:
        """Append what the build's emerge logged (in its upper layer) to the drone's emerge.log."""
        written = layers / "upper1" / "var" / "log" / "emerge.log"
        if written.is_file():
            with open(self.emerge_log, "ab") as out, open(written, "rb") as source:
                shutil.copyfileobj(source, out)

    def make_base(self, wanted: dict, binhost_url: str, fetch: Callable[[str], dict]) -> int:
        """Install or update the profile WANTED's @system, as binaries, into the build root.

        Portage's own ROOT install (emerge --root): nothing is compiled, and
        nothing of this drone's system changes. Returns emerge's exit code.
        """
        if not self.build_root:
            raise SwarmError(f"drones.{self.name}.build_root is empty: name the directory of "
                             "the base (a stage3 unpacked there, or an empty one)")
        env = {**self.prepare(wanted, fetch), "PORTAGE_BINHOST": binhost_url}
        command = ["emerge", "--root", self.build_root, "--usepkgonly", "--getbinpkg",
                   "--update", "--deep", "--newuse", "--color=n", "--nospinner", "@system"]
        log.info("%s", shlex.join(command))
        return subprocess.run(command, env=env, stdin=subprocess.DEVNULL).returncode

    def terminate(self) -> None:
        """Stop the build that runs (SIGTERM to its session)."""
        self.stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:  # ended meanwhile
                pass


class _Steps:
    """The emerge runs of one build, in its room (or live), supervised."""

    def __init__(self, builder: Builder, env: dict[str, str], room: cleanroom.Room | None,
                 console: Path, logdir: Path, beat: Callable[[], None]):
        self.builder, self.env, self.room = builder, env, room
        self.console, self.logdir, self.beat = console, logdir, beat

    def run(self, cpv: str) -> tuple[list[str], int, bool]:
        """(missing dependencies, emerge's exit code, stalled) of building CPV."""
        from portage.versions import cpv_getkey

        stop = self.builder.stop
        binaries = ["--usepkg=y", "--getbinpkg=y", f"--usepkg-exclude={cpv_getkey(cpv)}"]
        deps = ["emerge", "--oneshot", "--color=n", "--nospinner", "--onlydeps",
                "--onlydeps-with-rdeps=n", *binaries, f"={cpv}"]
        missing, code = self.would_compile(deps, cpv)
        if missing or code or stop.is_set():
            return missing, code, False
        code, stalled = self.emerge(deps)
        if code or stalled or stop.is_set():
            return [], code, stalled
        # Compiled, always: a binary of the same CPV and USE in PKGDIR (built
        # for another profile, against other dependencies) is not this build.
        build = ["emerge", "--oneshot", "--color=n", "--nospinner", "--buildpkgonly",
                 "--usepkg=n", "--getbinpkg=n", f"={cpv}"]
        code, stalled = self.emerge(build, {"FEATURES": self.env.get("FEATURES", "")
                                            + " -getbinpkg"})
        if code and not stalled and "requires all dependencies to be merged" in \
                self.console.read_text(errors="replace"):
            missing, _ = self.would_compile(build, cpv)
        return missing, code, stalled

    def _wrapped(self, command: list[str]) -> list[str]:
        return command if self.room is None else self.room.command(command)

    def _popen(self, command: list[str], **kw) -> subprocess.Popen:
        # In a room the build dies with the drone, even with SIGKILL (its PID namespace).
        # (preexec_fn: builds are started by the drone's one thread.)
        return subprocess.Popen(self._wrapped(command), stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=cleanroom.die_with_parent if self.room else None,  # noqa: PLW1509
                                **kw)

    def would_compile(self, command: list[str], cpv: str) -> tuple[list[str], int]:
        """What COMMAND would compile besides CPV (emerge --pretend), and emerge's exit code."""
        pretend = [command[0], "--pretend", *command[1:]]
        child = self._popen(pretend, env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
        self.builder.child = child
        try:
            stdout, stderr = child.communicate()
        finally:
            self.builder.child = None
        with open(self.console, "a") as out:
            out.write(f"$ {shlex.join(pretend)}\n{stdout}{stderr}")
        rows = [line for line in stdout.splitlines() if line.startswith("[")]
        if not rows:
            return [], child.returncode
        merges = parse_merge_list(stdout if stdout.endswith("\n") else stdout + "\n")
        compiled = [row.cpv for row in merges.packages() if row.kind == "ebuild" and row.cpv != cpv]
        return compiled, 0 if compiled else child.returncode

    def emerge(self, command: list[str], extra: dict[str, str] | None = None) -> tuple[int, bool]:
        """Run an emerge (with EXTRA environment) with heartbeats and the stall watch;
        (exit code, stalled)."""
        stop = self.builder.stop
        silent_limit = self.builder.config.delegate.max_silent_seconds
        # Progress is looked at locally (no session) a few times within the limit.
        check_every = min(60.0, max(silent_limit / 4, WAIT_SLICE_SECONDS))
        cpv = command[-1].lstrip("=")
        # Portage writes the real build log (PORTAGE_LOG_FILE) under PORT_LOGDIR.
        env = {**self.env, **(extra or {}), "PORT_LOGDIR": str(self.logdir)}
        with open(self.console, "a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            # Own session: on SIGTERM (or a stall) the whole build tree stops at once.
            child = self._popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            self.builder.child = child
            if stop.is_set():  # SIGTERM came before there was a child to stop
                _stop_session(child)
            output, cpu_mark, quiet_since = None, 0, time.monotonic()
            next_check, killed_at = quiet_since, None
            try:
                while True:
                    try:
                        return child.wait(timeout=WAIT_SLICE_SECONDS), False
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if stop.is_set():
                        # emerge usually ends on SIGTERM; one that swallowed it
                        # (or waits for a child that ignores it) is killed.
                        killed_at = killed_at or now + STOP_GRACE_SECONDS
                        if now >= killed_at:
                            log.warning("%s: still running %d s after SIGTERM: killing it",
                                        cpv, STOP_GRACE_SECONDS)
                            _kill_session(child)
                            return child.wait(), False
                        continue
                    self.beat()
                    if not silent_limit or now < next_check:
                        continue
                    next_check = now + check_every
                    now_output, cpu = _tree_size(self.console, self.logdir), session_cpu(child.pid)
                    if now_output != output or _busy(cpu - cpu_mark, now - quiet_since):
                        output, cpu_mark, quiet_since = now_output, cpu, now
                    elif now - quiet_since >= silent_limit:
                        log.error("%s: no output and (almost) no CPU time for %d s: stopping it",
                                  cpv, silent_limit)
                        out.write("\nswarm-drone: no output and (almost) no CPU time for"
                                  f" {silent_limit} s (delegate.max_silent_seconds): stopped\n")
                        out.flush()
                        _stop_session(child)
                        return child.wait(), True
            finally:
                self.builder.child = None


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


def _busy(ticks: int, seconds: float) -> bool:
    """Whether TICKS of CPU time in SECONDS is work, not an idle process's trickle: emerge
    itself, waiting for a hung phase, wakes up now and then (a tick every few seconds)."""
    return ticks > 1 + IDLE_CPU_SHARE * seconds * CLOCK_TICKS


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
    re.compile(rb"^!!! Fetch failed for ", re.MULTILINE),
    re.compile(rb"^!!! Couldn't download '", re.MULTILINE),
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
    env = {**os.environ, **config.drone(name).environment}
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
    """The binary package emerge just wrote for CPV (None: it wrote none)."""
    new = {path: key for path, key in binpkgs(pkgdir, cpv).items() if path not in before}
    return max(new, key=new.get) if new else None
