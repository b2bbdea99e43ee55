"""Drift: where a host's real settings differ from the one config.

A drone's facts (from its heartbeat, or fetched over ssh by ``swarm-config
check --remote``) are compared value by value with what the config and the
last scan say it must have; the binhost is fetched over HTTP and its index
compared with the one on disk. Each difference is one :class:`Finding`
naming the host, the key, the expected and the found value.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .config import DEFAULT, Config

REMOTE_TIMEOUT = 60  # seconds for one drone's facts (an ssh login and portageq)


@dataclass(frozen=True)
class Finding:
    """One checked value of one host."""

    host: str
    key: str
    expected: str
    found: str
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


def expected_of_drones(config: Config, current_profile: dict | None) -> dict[str, str]:
    """What every drone must have: the config's binhost, digest and version, the profile's CHOST.

    (Not the profile's digest: every claim names it, and a drone fetches
    the one it names; a drone that last built with an older one is not
    drifted. Its facts say which it used, for people.)
    """
    wanted = {"PORTAGE_BINHOST": config.binhost.url, "config digest": config.digest(),
              "swarmtools version": __version__}
    if current_profile:
        wanted.update({"CHOST": current_profile["chost"], "ARCH": current_profile["arch"]})
    return wanted


_FACT = {"config digest": "config_digest", "swarmtools version": "version", "CHOST": "chost",
         "ARCH": "arch"}


def _found(facts: dict, key: str) -> str:
    # Facts come from drones: anything unexpected is shown, never trusted.
    if key == "PORTAGE_BINHOST":
        binrepos = facts.get("binrepos")
        urls = [facts.get("binhost")] + (binrepos if isinstance(binrepos, list) else [])
        return " ".join(str(url) for url in urls if url)
    value = facts.get(_FACT[key])
    return "" if value is None else str(value)


def compare(host: str, facts: dict, expected: dict[str, str]) -> list[Finding]:
    """Each expected value against a drone's facts.

    PORTAGE_BINHOST matches when the swarm's URL is among the binhosts the
    drone uses (make.conf or binrepos.conf).
    """
    findings = []
    for key, want in expected.items():
        found = _found(facts, key)
        if key == "PORTAGE_BINHOST":
            ok = want.rstrip("/") in {url.rstrip("/") for url in found.split()}
        else:
            ok = found == want
        findings.append(Finding(host, key, want, found or "(not set)", ok))
    return findings


# What swarm-status flags from heartbeats: what the drone builds with. (Its
# own PORTAGE_BINHOST is for its own installs; check --remote looks at it.)
HEARTBEAT_KEYS = ("config digest", "swarmtools version", "CHOST", "ARCH")


def heartbeat_drift(facts: dict, expected: dict[str, str]) -> list[str]:
    """What the last heartbeat shows drifted, one phrase a value (swarm-status)."""
    if not facts:
        return []
    wanted = {k: v for k, v in expected.items() if k in HEARTBEAT_KEYS}
    return [f"{f.key} {f.found[:12]} (want {f.expected[:12]})" if "digest" in f.key else
            f"{f.key} {f.found} (want {f.expected})"
            for f in compare("", facts, wanted) if not f.ok]


def remote_facts(config: Config, drone: str) -> dict:
    """A drone's facts, read on the drone (swarm-drone --facts) through its check_command."""
    settings = config.drones[drone]
    # A drone of the local transport runs on this host; another is reached by ssh.
    prefix = settings.check_command or (
        [] if settings.transport == "local" or not settings.host else
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", settings.host])
    words = ["swarm-drone", "--drone", drone, "--facts"]
    # ssh joins its arguments into one shell command line: quote them.
    command = [*prefix, shlex.join(words)] if prefix and Path(prefix[0]).name == "ssh" else \
        [*prefix, *words]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=REMOTE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConnectionError(f"{shlex.join(command)}: {exc}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ConnectionError(f"{shlex.join(command)} exited {proc.returncode}: "
                              f"{lines[-1] if lines else 'no message'}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ConnectionError(f"{shlex.join(command)} printed no JSON facts") from None


def check_drones(config: Config, current_profile: dict | None) -> list[Finding]:
    """Every configured drone, reached where it runs."""
    expected = expected_of_drones(config, current_profile)
    findings = []
    for name in sorted(config.drones):
        try:
            facts = remote_facts(config, name)
        except ConnectionError as exc:
            findings.append(Finding(name, "reachable", "yes", str(exc), False))
            continue
        findings.extend(compare(name, facts, expected))
    return findings


def check_binhosts(config: Config) -> list[Finding]:
    """Every binhost as clients see it: its URL answers, with the index swarm-sync wrote."""
    return [finding for name in config.binhost_names()
            for finding in check_binhost(config.for_binhost(name),
                                         "binhost" if name == DEFAULT else f"binhost {name}")]


def check_binhost(config: Config, host: str = "binhost") -> list[Finding]:
    """The binhost ([binhost] of CONFIG) as clients see it (HOST: its name in findings)."""
    import urllib.error  # here: swarm-status imports this module every minute
    import urllib.request

    url = config.binhost.url.rstrip("/") + "/Packages"
    local = Path(config.binhost.path) / "Packages"
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT) as answer:
            served = answer.read()
    except urllib.error.HTTPError as exc:
        # Nothing published yet: no index on disk, none served. Anything
        # else means the URL is not the binhost swarm-sync writes.
        empty = exc.code == 404 and not local.exists()
        return [Finding(host, "reachable", url, f"HTTP {exc.code}"
                        + (" (nothing published yet)" if empty else ""), empty)]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return [Finding(host, "reachable", url, f"unreachable: {reason}", False)]
    findings = [Finding(host, "reachable", url, "yes", True)]
    if local.is_file():
        want, got = _timestamp(local.read_bytes()), _timestamp(served)
        findings.append(Finding(host, "index TIMESTAMP", want, got or "(none)", want == got))
    return findings


def _timestamp(index: bytes) -> str:
    for line in index.split(b"\n\n", 1)[0].decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name == "TIMESTAMP":
            return value.strip()
    return ""
