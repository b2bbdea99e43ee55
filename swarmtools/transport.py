"""How a drone reaches the orchestrator: queue verbs and uploads, locally or over ssh.

Over ssh every call lands in the orchestrator's gateway (:mod:`gateway`),
which checks it; locally (a single-host swarm) the drone runs
``swarm-delegate`` and rsync itself. Nothing goes through a shell.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .config import Config
from .errors import SwarmError
from .staging import staged_path


class Transport:
    """A drone's way to the orchestrator: `call` a verb, `upload` a file."""

    def __init__(self, config: Config, drone: str):
        self.config = config
        self.drone = drone

    def call(self, verb: str, *args: str, input: str | None = None) -> dict | None:
        """Run `swarm-delegate VERB --json ARGS` for this drone; return its JSON or None."""
        words = ["swarm-delegate", verb, "--drone", self.drone, "--json", *args]
        proc = _run(self._verb_command(words), input=input)
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
        proc = _run(["rsync", "-t", "--partial", *self._rsync_target(local, relative)])
        if proc.returncode != 0:
            raise SwarmError(f"upload of {local.name} failed (rsync exit {proc.returncode}): "
                             f"{proc.stderr.strip()}")

    def _verb_command(self, words: list[str]) -> list[str]:
        raise NotImplementedError

    def _rsync_target(self, local: Path, relative: str) -> list[str]:
        raise NotImplementedError


class LocalTransport(Transport):
    """Drone and orchestrator on one host: run swarm-delegate and rsync directly."""

    def _verb_command(self, words):
        return [_delegate_program(), *words[1:], "--config", str(self.config.path)]

    def _rsync_target(self, local, relative):
        target = staged_path(self.config, self.drone, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return [str(local), str(target)]


class SshTransport(Transport):
    """Over ssh to the orchestrator's gateway."""

    def __init__(self, config: Config, drone: str):
        super().__init__(config, drone)
        self.ssh = config.drones[drone].ssh_command or config.orchestrator.ssh_command
        self.destination = config.orchestrator.ssh

    def _verb_command(self, words):
        return [*self.ssh, self.destination, shlex.join(words)]

    def _rsync_target(self, local, relative):
        return ["-e", shlex.join(self.ssh), str(local), f"{self.destination}:{relative}"]


def for_drone(config: Config, drone: str) -> Transport:
    """The transport the config names for DRONE."""
    kind = config.drones[drone].transport
    return LocalTransport(config, drone) if kind == "local" else SshTransport(config, drone)


def _run(command: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, input=input, capture_output=True, text=True,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except OSError as exc:  # ssh or rsync missing, say
        raise SwarmError(f"cannot run {command[0]}: {exc.strerror}") from None


def _delegate_program() -> str:
    # The swarm-delegate of this installation, beside the running interpreter.
    beside = Path(sys.executable).parent / "swarm-delegate"
    return str(beside) if beside.exists() else shutil.which("swarm-delegate") or "swarm-delegate"
