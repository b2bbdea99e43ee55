"""The ssh forced command: what a drone's key may do on the orchestrator.

Each drone's key is pinned in ``authorized_keys`` to
``swarm-delegate gateway --drone NAME``. The gateway reads
``SSH_ORIGINAL_COMMAND`` and lets through only the queue verbs, always for
NAME and with the options each verb needs (:data:`VERB_OPTIONS`), and an
rsync upload confined to ``staging/NAME/``. Nothing is ever passed to a
shell: the command is split with shlex, checked word by word, and run as
an argument list. This module is security policy: it is reviewed on its
own, and a test keeps :data:`VERB_OPTIONS` in step with the verbs' options.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import config as config_mod
from . import console, profile, staging, verbs
from .config import Config
from .errors import ExitCode, SwarmError
from .staging import staged_path

if TYPE_CHECKING:
    import subprocess

# Options each verb may carry through the gateway; True: takes a value.
VERB_OPTIONS = {
    "heartbeat": {"--json": False},
    "claim": {"--json": False, "--idle-info": False, "--heartbeat": False},
    "report": {"--json": False, "--ok": False, "--failed": False, "--file": True,
               "--log": True, "--size": True, "--sha256": True, "--kind": True,
               "--missing": True},
    "release": {"--json": False, "--because": True, "--found": True},
    "profile": {"--json": False},
}
# Options of `swarm-delegate VERB` a drone never needs (people may use them).
NOT_FOR_DRONES = {"claim": {"--limit"}}
_INTEGER_OPTIONS = {"--size"}
_TAKES_CPV = ("report", "release")
# Matched with fullmatch: no trailing newline slips through.
_CPV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9+_.-]*/[A-Za-z0-9_][A-Za-z0-9+_.-]*")
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")  # as config names a [profiles.NAME]
_SAFE_VALUE = re.compile(r"[A-Za-z0-9+_.,/=:-]+")
# What `rsync -t --partial FILE host:PATH` sends to the server (swarm-drone's
# upload): option letters t (times), v and z if asked, then the "e."
# capability string. No l (symlinks), no s (arguments hidden from us).
_RSYNC_FLAGS = re.compile(r"-[vz]*t[vz]*(e\d*\.[A-Za-z]*)?")
_RSYNC_OPTIONS = {"--partial"}


class Refused(SwarmError):
    """The gateway will not run this command."""

    exit_code = ExitCode.USAGE


@dataclass
class VerbRequest:
    """A queue verb a drone asked for, checked."""

    verb: str
    options: dict = field(default_factory=dict)  # keyword arguments of verbs.run
    cpv: str | None = None
    as_json: bool = False


def parse(config: Config, drone: str, original: str | None) -> VerbRequest | list[str]:
    """Check SSH_ORIGINAL_COMMAND: a VerbRequest, the rsync argv to run, or raise Refused.

    The one read a drone may make is a profile bundle by its digest (the
    Portage configuration it builds with), which the scan put there.
    """
    config.drone(drone)  # a drone taken out of the config is locked out
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
        return _verb_request(words[1:], drone)
    if program == "rsync":
        return _rsync_args(config, words[1:], drone)
    raise Refused(f"'{program}' is not allowed: only swarm-delegate "
                  f"{'|'.join(verbs.VERBS)} and rsync uploads")


def _verb_request(words: list[str], drone: str) -> VerbRequest:
    if not words or words[0] not in verbs.VERBS:
        raise Refused(f"only the verbs {', '.join(verbs.VERBS)} are allowed")
    request = VerbRequest(words[0])
    allowed = VERB_OPTIONS[request.verb]
    positional, rest, i = [], words[1:], 0
    while i < len(rest):
        word = rest[i]
        name, eq, inline = word.partition("=")
        if name == "--drone":
            value = inline if eq else (rest[i + 1] if i + 1 < len(rest) else "")
            if value != drone:
                raise Refused(f"drone '{drone}' may not act as '{value}'")
            i += 1 if eq else 2
            continue
        if not word.startswith("-"):
            positional.append(word)
            i += 1
            continue
        if name not in allowed:
            raise Refused(f"option '{name}' is not allowed for {request.verb}")
        if allowed[name]:
            value = inline if eq else (rest[i + 1] if i + 1 < len(rest) else None)
            request.options[_keyword(name)] = _checked_value(name, value)
            i += 1 if eq else 2
        else:
            if eq:
                raise Refused(f"option '{name}' takes no value")
            if name == "--json":
                request.as_json = True
            else:
                request.options[_keyword(name)] = True
            i += 1
    if request.verb in _TAKES_CPV:
        if len(positional) != 1 or not _CPV.fullmatch(positional[0]):
            raise Refused(f"{request.verb} takes one CATEGORY/PF, not {positional!r}")
        request.cpv = positional[0]
    elif request.verb == "profile":
        if len(positional) != 1 or not (profile.DIGEST.fullmatch(positional[0])
                                        or _PROFILE_NAME.fullmatch(positional[0])):
            raise Refused(f"profile takes one sha256 digest or profile name, not {positional!r}")
        request.options["which"] = positional[0]
    elif positional:
        raise Refused(f"{request.verb} takes no arguments")
    return request


def _keyword(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _checked_value(name: str, value: str | None):
    if value is None or not _SAFE_VALUE.fullmatch(value) or ".." in value.split("/"):
        raise Refused(f"bad value for {name}: {value!r}")
    if name == "--log" and not value.startswith("logs/"):
        raise Refused(f"build logs go under logs/, not {value!r}")
    if name in _INTEGER_OPTIONS:
        if not value.isdigit() or len(value) > 18:
            raise Refused(f"bad value for {name}: {value!r}")
        return int(value)
    return value


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
    room = config.delegate.staging_quota_mib * 2**20 - staging.area_bytes(config, drone)
    if room <= 0:
        raise SwarmError(f"staging/{drone}/ is full (delegate.staging_quota_mib = "
                         f"{config.delegate.staging_quota_mib}); nothing more until it is published")
    target.parent.mkdir(parents=True, exist_ok=True)
    # --munge-links: even a symlink that slipped through stays inert;
    # --max-size: rsync itself refuses a file beyond the drone's room.
    return ["rsync", "--server", flags, *options, "--munge-links", f"--max-size={room}", ".",
            str(target)]


def serve(config: Config, drone: str, original: str | None) -> None:
    """Run what the drone asked for: a queue verb, or rsync (which replaces this process)."""
    request = parse(config, drone, original)
    if isinstance(request, list):
        os.execvp("rsync", request)
    verbs.run(request.verb, config, drone, as_json=request.as_json, cpv=request.cpv,
              **request.options)


def answer_here(config_path, drone: str, words: list[str],
                input: str | None = None) -> subprocess.CompletedProcess:
    """A drone on the orchestrator's own host: run its `swarm-delegate VERB ...` in its process.

    What a process of its own would have answered, without starting one (a
    tenth of a second of CPU a verb): the words checked as the gateway
    checks an ssh drone's, the config file read again, an error as the
    exit code and the one line the command would have printed.
    """
    import subprocess  # (here: an ssh session of the gateway needs none)

    out, err, config = io.StringIO(), io.StringIO(), None
    try:
        config = config_mod.load(config_path)
        request = _verb_request(words[1:], drone)
        verbs.run(request.verb, config, drone, as_json=request.as_json, cpv=request.cpv,
                  stdin=io.StringIO(input or ""), out=out, **request.options)
        code = 0
    except (SwarmError, OSError, sqlite3.Error) as exc:
        code = console.fail(exc, config.orchestrator.log_file if config else None, err,
                            "swarm-delegate")
    return subprocess.CompletedProcess(words, code, out.getvalue(), err.getvalue())


def main(argv: list[str]) -> int:
    """`swarm-delegate gateway --drone NAME [--config PATH]`, the forced command.

    Reads no SWARM_* variable: what confines a drone is the forced command
    line and the config file it names (else /etc/swarmtools/swarm.toml),
    never an environment that sshd might let a client set. Loads nothing it
    does not need (no click): every ssh session of every drone pays for it.
    """
    console.setup_logging()
    drone = path = None
    log_file = None
    try:
        words = list(argv)
        while words:
            word = words.pop(0)
            name, eq, value = word.partition("=")
            if name in ("--drone", "--config") and (eq or words):
                value = value if eq else words.pop(0)
                drone, path = (value, path) if name == "--drone" else (drone, value)
            else:
                raise SwarmError(f"gateway takes --drone NAME [--config PATH], not {word!r}",
                                 ExitCode.USAGE)
        if not drone:
            raise SwarmError("gateway needs --drone NAME", ExitCode.USAGE)
        config = config_mod.load(path or config_mod.DEFAULT_PATH, environ={})
        log_file = config.orchestrator.log_file or None
        serve(config, drone, os.environ.get("SSH_ORIGINAL_COMMAND"))
    except (SwarmError, OSError, sqlite3.Error) as exc:
        return console.fail(exc, log_file)
    return 0

