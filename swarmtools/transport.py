"""How a drone reaches the orchestrator: queue verbs and uploads, locally or over ssh.

Over ssh every call lands in the orchestrator's gateway (:mod:`gateway`),
which checks it; locally (a single-host swarm) the drone runs
``swarm-delegate`` and rsync itself. Nothing goes through a shell.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import Config
from .errors import ExitCode, SwarmError
from .staging import staged_path

log = logging.getLogger(__name__)

# A verb answers in seconds; one that does not has lost its connection.
VERB_TIMEOUT = 300
# Connection failures are retried this many times, waiting about 1, 2, 4, 8 s...
ATTEMPTS = 6
# ssh exits 255 when the connection fails (refused, dropped by MaxStartups,
# timed out); rsync's codes for a broken stream or socket.
_SSH_FAILED = 255
_RSYNC_CONNECTION_CODES = {10, 12, 30, 35, 255}
# Unless the config says otherwise: give up on a dead host or connection.
SSH_TIMEOUTS = ("ConnectTimeout=10", "ServerAliveInterval=15", "ServerAliveCountMax=4")
# How long a drone's shared connection stays open after its last session:
# a build's upload, report and next claim share one login, but an idle
# drone (asking every few minutes) holds no connection, and so no sshd
# process on the orchestrator (about 1.8 MiB each, measured).
CONTROL_PERSIST = 60
UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on the BSDs


class TransportError(SwarmError):
    """The orchestrator could not be reached (after retrying); the work is not lost."""


class Transport:
    """A drone's way to the orchestrator: `call` a verb, `upload` a file.

    Connection failures are retried with a jittered exponential back-off;
    every verb may be repeated safely (the orchestrator answers a repeated
    report or claim as it answered the first).
    """

    def __init__(self, config: Config, drone: str, sleep=time.sleep):
        self.config = config
        self.drone = drone
        self.sleep = sleep

    def call(self, verb: str, *args: str, input: str | None = None) -> dict | None:
        """Run `swarm-delegate VERB --json ARGS` for this drone; return its JSON or None."""
        words = ["swarm-delegate", verb, "--drone", self.drone, "--json", *args]
        proc = self._retrying(verb, lambda: self._run_verb(words, input), self._verb_retry)
        if proc.returncode != 0:
            message = proc.stderr.strip().splitlines()
            raise SwarmError(f"{verb} failed (exit {proc.returncode}): "
                             f"{message[-1] if message else 'no message'}")
        out = proc.stdout.strip()
        try:
            return json.loads(out) if out else None
        except json.JSONDecodeError:
            # E.g. a shell start-up file on the orchestrator that prints something.
            raise SwarmError(f"{verb}: the orchestrator answered with something else than "
                             f"JSON: {out[:100]!r}") from None

    def upload(self, local: Path, relative: str) -> None:
        """Copy a file to staging/DRONE/RELATIVE on the orchestrator."""
        command = ["rsync", "-t", "--partial", *self._rsync_target(local, relative)]

        def attempt():
            self._prepare_upload(relative)  # again on a retry: the folder may have gone
            return _run(command)
        proc = self._retrying(f"upload of {local.name}", attempt, self._upload_retry)
        if proc.returncode != 0:
            raise SwarmError(f"upload of {local.name} failed (rsync exit {proc.returncode}): "
                             f"{proc.stderr.strip()}")

    def _retrying(self, what: str, attempt, retry) -> subprocess.CompletedProcess:
        for number in range(1, ATTEMPTS + 1):
            proc = attempt()
            if not retry(proc):
                return proc
            if number == ATTEMPTS:
                break
            pause = min(2 ** (number - 1), 60) * random.uniform(0.5, 1.5)
            log.warning("%s: %s; again in %.1f s", what, _last_line(proc), pause)
            self.sleep(pause)
        raise TransportError(f"{what}: the orchestrator could not be reached after "
                             f"{ATTEMPTS} attempts ({_last_line(proc)})")

    def _verb_retry(self, proc: subprocess.CompletedProcess) -> bool:
        # 75: the database was busy; the rest: the connection, not the verb.
        return proc.returncode in (ExitCode.TEMPFAIL, _SSH_FAILED, -1)

    def _upload_retry(self, proc: subprocess.CompletedProcess) -> bool:
        if "swarm-delegate: error" in proc.stderr:  # the gateway said no: final
            return False
        # The folder made for the upload was removed before rsync entered it:
        # swarm-sync drops empty folders in staging. The next attempt makes it again.
        vanished = proc.returncode == 3 and "change_dir" in proc.stderr and "Receiver" in proc.stderr
        return proc.returncode in _RSYNC_CONNECTION_CODES or proc.returncode == -1 or vanished

    def _prepare_upload(self, relative: str) -> None:
        """Make what the upload needs on this side (the gateway does it over ssh)."""

    def _run_verb(self, words: list[str], input: str | None) -> subprocess.CompletedProcess:
        return _run(self._verb_command(words), input=input, timeout=VERB_TIMEOUT)

    def _verb_command(self, words: list[str]) -> list[str]:
        raise NotImplementedError

    def _rsync_target(self, local: Path, relative: str) -> list[str]:
        raise NotImplementedError


class LocalTransport(Transport):
    """Drone and orchestrator on one host: run swarm-delegate and rsync directly.

    Given ANSWER_HERE (the gateway's :func:`~swarmtools.gateway.answer_here`,
    which swarm-drone passes in: the drone's own modules know nothing of the
    orchestrator's), a verb runs in the drone's process instead of a
    swarm-delegate of its own.
    """

    def __init__(self, config: Config, drone: str, sleep=time.sleep, answer_here=None):
        super().__init__(config, drone, sleep)
        self.answer_here = answer_here

    def _run_verb(self, words, input):
        if self.answer_here is None:
            return super()._run_verb(words, input)
        return self.answer_here(self.config.path, self.drone, words, input)

    def _verb_command(self, words):
        return [_delegate_program(), *words[1:], "--config", str(self.config.path)]

    def _rsync_target(self, local, relative):
        return [str(local), str(staged_path(self.config, self.drone, relative))]

    def _prepare_upload(self, relative):
        staged_path(self.config, self.drone, relative).parent.mkdir(parents=True, exist_ok=True)


class SshTransport(Transport):
    """Over ssh to the orchestrator's gateway."""

    def __init__(self, config: Config, drone: str, sleep=time.sleep):
        super().__init__(config, drone, sleep)
        ssh = with_timeouts(config.drone(drone).ssh_command or config.orchestrator.ssh_command)
        self.ssh = with_multiplexing(ssh, drone)
        self.destination = config.orchestrator.ssh

    def _verb_command(self, words):
        return [*self.ssh, self.destination, shlex.join(words)]

    def _rsync_target(self, local, relative):
        return ["-e", shlex.join(self.ssh), str(local), f"{self.destination}:{relative}"]


def with_timeouts(ssh: list[str]) -> list[str]:
    """The ssh command with connect and keep-alive timeouts, unless it sets its own."""
    given = " ".join(ssh)
    extra = [word for option in SSH_TIMEOUTS if option.split("=")[0] not in given
             for word in ("-o", option)]
    return [ssh[0], *extra, *ssh[1:]]


def with_multiplexing(ssh: list[str], drone: str) -> list[str]:
    """The ssh command sharing one connection between a drone's sessions, unless it says.

    A session over an open connection skips the key exchange and the login:
    the orchestrator's sshd spends about a fifth less CPU on it. The control
    socket is the drone's own: two drones on one host (tests, a host with
    two drone names) must never share a connection, as the orchestrator
    knows a drone by the key it logged in with.
    """
    given = " ".join(ssh)
    if "ControlMaster" in given or "ControlPath" in given:
        return ssh
    directory = control_directory()
    # A unix socket's path holds about 100 bytes; %C is 40 hex digits.
    if directory is None or len(f"{directory}/{drone}-") + 40 > UNIX_PATH_MAX:
        return ssh
    persist = [] if "ControlPersist" in given else ["-o", f"ControlPersist={CONTROL_PERSIST}"]
    return [ssh[0], "-o", "ControlMaster=auto", "-o", f"ControlPath={directory}/{drone}-%C",
            *persist, *ssh[1:]]


def control_directory() -> Path | None:
    """A directory for control sockets only this user can enter, or None (no multiplexing)."""
    directory = Path(tempfile.gettempdir()) / f"swarmtools-ssh-{os.geteuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        log.warning("no ssh multiplexing: cannot make %s: %s", directory, exc.strerror)
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        log.warning("no ssh multiplexing: %s is not a private directory of this user", directory)
        return None
    return directory


def for_drone(config: Config, drone: str, answer_here=None) -> Transport:
    """The transport the config names for DRONE (ANSWER_HERE: see LocalTransport)."""
    if config.drone(drone).transport == "local":
        return LocalTransport(config, drone, answer_here=answer_here)
    return SshTransport(config, drone)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _run(command: list[str], input: str | None = None,
         timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, input=input, capture_output=True, text=True,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, -1, "", f"no answer in {timeout} s")
    except OSError as exc:  # ssh or rsync missing, say
        raise SwarmError(f"cannot run {command[0]}: {exc.strerror}") from None


def _delegate_program() -> str:
    # The swarm-delegate of this installation, beside the running interpreter.
    beside = Path(sys.executable).parent / "swarm-delegate"
    return str(beside) if beside.exists() else shutil.which("swarm-delegate") or "swarm-delegate"
