"""How a drone reaches the orchestrator (local or ssh), and the ssh gateway.

On the orchestrator each drone's key is pinned in ``authorized_keys`` to
``swarm-delegate gateway --drone NAME``. The gateway reads
``SSH_ORIGINAL_COMMAND`` and lets through only the queue verbs, always for
NAME, and an rsync upload confined to ``staging/NAME/``. Nothing is ever
passed to a shell: the command is split with shlex, checked word by word,
and run as an argument list.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .config import Config
from .delegate import check_drone, staged_path
from .errors import ExitCode, SwarmError

QUEUE_VERBS = ("heartbeat", "claim", "report", "release")
# Options each verb may carry through the gateway; True: takes a value.
_VERB_OPTIONS = {
    "heartbeat": {"--json": False},
    "claim": {"--json": False},
    "report": {"--json": False, "--ok": False, "--failed": False, "--file": True,
               "--log": True, "--size": True, "--sha256": True},
    "release": {"--json": False},
}
_TAKES_CPV = ("report", "release")
# Matched with fullmatch: no trailing newline slips through.
_CPV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_.-]*/[A-Za-z0-9_][A-Za-z0-9+_.-]*")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9+_.,/=-]+")
# What `rsync -t --partial FILE host:PATH` sends to the server (swarm-drone's
# upload): option letters t (times), and v or z if asked, then the "e."
# capability string. No l (symlinks), no s (arguments hidden from us).
_RSYNC_FLAGS = re.compile(r"-t[vz]*(e\d*\.[A-Za-z]*)?")
_RSYNC_OPTIONS = {"--partial"}


class Refused(SwarmError):
    """The gateway will not run this command."""

    exit_code = ExitCode.USAGE


def gateway_command(config: Config, drone: str, original: str | None) -> list[str]:
    """Check SSH_ORIGINAL_COMMAND; return the argument list to run, or raise Refused."""
    check_drone(config, drone)  # a drone taken out of the config is locked out
    if not original:
        raise Refused("this key only runs swarmtools queue verbs and uploads; no shell")
    try:
        words = shlex.split(original)
    except ValueError as exc:
        raise Refused(f"cannot parse the command: {exc}") from None
    if not words:
        raise Refused("empty command")
    program = os.path.basename(words[0])
    if program == "swarm-delegate":
        return ["swarm-delegate", *_queue_args(words[1:], drone)]
    if program == "rsync":
        return _rsync_args(config, words[1:], drone)
    raise Refused(f"'{program}' is not allowed: only swarm-delegate {'|'.join(QUEUE_VERBS)} and rsync uploads")


def _queue_args(words: list[str], drone: str) -> list[str]:
    if not words or words[0] not in QUEUE_VERBS:
        raise Refused(f"only the verbs {', '.join(QUEUE_VERBS)} are allowed")
    verb, rest = words[0], words[1:]
    allowed = _VERB_OPTIONS[verb]
    args, positional, i = [verb, "--drone", drone], [], 0
    while i < len(rest):
        word = rest[i]
        name, eq, inline = word.partition("=")
        if name == "--drone":
            value = inline if eq else (rest[i + 1] if i + 1 < len(rest) else "")
            if value != drone:
                raise Refused(f"drone '{drone}' may not act as '{value}'")
            i += 1 if eq else 2
            continue
        if word.startswith("-"):
            if name not in allowed:
                raise Refused(f"option '{name}' is not allowed for {verb}")
            if allowed[name]:
                value = inline if eq else (rest[i + 1] if i + 1 < len(rest) else None)
                if value is None or not _SAFE_VALUE.fullmatch(value) or ".." in value.split("/"):
                    raise Refused(f"bad value for {name}: {value!r}")
                if name == "--log" and not value.startswith("logs/"):
                    raise Refused(f"build logs go under logs/, not {value!r}")
                args += [name, value]
                i += 1 if eq else 2
            else:
                if eq:
                    raise Refused(f"option '{name}' takes no value")
                args.append(name)
                i += 1
            continue
        positional.append(word)
        i += 1
    if verb in _TAKES_CPV:
        if len(positional) != 1 or not _CPV.fullmatch(positional[0]):
            raise Refused(f"{verb} takes one CATEGORY/PF, not {positional!r}")
        args.append(positional[0])
    elif positional:
        raise Refused(f"{verb} takes no arguments")
    return args


def _rsync_args(config: Config, words: list[str], drone: str) -> list[str]:
    # Expected: --server FLAGS [--partial] . DEST  (an upload; --sender would read files)
    if len(words) < 4 or words[0] != "--server" or words[-2] != ".":
        raise Refused("only an rsync upload (rsync FILE orchestrator:PATH) is allowed")
    flags, options, dest = words[1], words[2:-2], words[-1]
    if not _RSYNC_FLAGS.fullmatch(flags):
        raise Refused(f"rsync flags '{flags}' are not allowed (use rsync -t [--partial])")
    for option in options:
        if option not in _RSYNC_OPTIONS:
            raise Refused(f"rsync option '{option}' is not allowed")
    try:
        target = staged_path(config, drone, dest)
    except SwarmError as exc:
        raise Refused(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    # --munge-links: even a symlink that slipped through stays inert.
    return ["rsync", "--server", flags, *options, "--munge-links", ".", str(target)]


def run_gateway(config: Config, drone: str, original: str | None, run_verb) -> int:
    """Run what the drone asked for: a queue verb through run_verb(args), or rsync."""
    argv = gateway_command(config, drone, original)
    if argv[0] == "rsync":
        os.execvp("rsync", argv)
    run_verb(argv[1:])  # exits with the verb's code
    return 0


class Transport:
    """A drone's way to the orchestrator: queue verbs and uploads."""

    def __init__(self, config: Config, drone: str):
        self.config = config
        self.drone = drone
        settings = config.drones[drone]
        self.kind = settings["transport"]
        self.ssh = settings["ssh_command"] or config["orchestrator"]["ssh_command"]
        self.destination = config["orchestrator"]["ssh"]

    def call(self, verb: str, *args: str, input: str | None = None) -> dict | None:
        """Run `swarm-delegate VERB --json ARGS` for this drone; return its JSON or None."""
        words = ["swarm-delegate", verb, "--drone", self.drone, "--json", *args]
        if self.kind == "local":
            command = [_delegate_program(), *words[1:], "--config", str(self.config.path)]
        else:
            command = [*self.ssh, self.destination, shlex.join(words)]
        proc = _run(command, input=input)
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
        if self.kind == "local":
            target = staged_path(self.config, self.drone, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            command = ["rsync", "-t", "--partial", str(local), str(target)]
        else:
            command = ["rsync", "-t", "--partial", "-e", shlex.join(self.ssh), str(local),
                       f"{self.destination}:{relative}"]
        proc = _run(command)
        if proc.returncode != 0:
            raise SwarmError(f"upload of {local.name} failed (rsync exit {proc.returncode}): "
                             f"{proc.stderr.strip()}")


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
