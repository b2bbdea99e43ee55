"""What a host must have, and where its real settings differ from the one config.

The orchestrator's own paths and programs are checked (:func:`problems`,
``swarm-config check``); the make.conf lines and binrepos.conf entry a drone
or client must have are drawn from the config (``swarm-config render``,
``swarm-config binrepos``).

A drone's facts (from its heartbeat, or fetched over ssh by ``swarm-config
check --remote``) are compared value by value with what the config and the
last scan say it must have; the binhost is fetched over HTTP and its index
compared with the one on disk. Each difference is one :class:`Finding`
naming the host, the key, the expected and the found value.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__, release
from .atoms import parse_atom
from .config import DEFAULT, Config
from .errors import SwarmError
from .exclude import file_rules
from .profile import HOST_LOCAL

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
        findings.append(isolation(name, config.drone(name).isolation, facts))
    return findings


LIVE = "none: builds in its live system"


def isolation(host: str, configured: str, facts: dict) -> Finding:
    """How a drone isolates its builds against its config: overlay, and able to; or live."""
    found, problem = facts.get("isolation"), facts.get("isolation_problem")
    shown = (LIVE if found == "none" else f"{found}: cannot ({problem})" if problem else
             str(found or "(not told: an older swarm-drone)"))
    return Finding(host, "isolation", LIVE if configured == "none" else configured, shown,
                   found == configured and not problem)


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


def problems(config: Config) -> list[str]:
    """Problems a command would hit later: missing directories, no emerge, no gpg."""
    found = []
    orch = config.orchestrator
    for name, directory in (("state_dir", orch.state_dir), ("staging_dir", orch.staging_dir),
                            ("database", Path(orch.database).parent),
                            ("log_file", Path(orch.log_file).parent if orch.log_file else None)):
        if directory and not Path(directory).is_dir():
            found.append(f"orchestrator.{name}: directory {directory} does not exist")
    for name in config.binhost_names():
        where = config.binhost_named(name).path
        if not Path(where).is_dir():
            label = "binhost" if name == DEFAULT else f"binhosts.{name}"
            found.append(f"{label}.path: directory {where} does not exist")
    for name, entry in config.profiles.items():
        if entry.config_root and not Path(entry.config_root, "etc", "portage").is_dir():
            found.append(f"profiles.{name}.config_root: {entry.config_root}/etc/portage "
                         "does not exist")
    if config.binhost.gpg_key and not shutil.which("gpg"):
        found.append("binhost.gpg_key: gpg is not installed")
    if config.binhost.gpg_home and not Path(config.binhost.gpg_home).is_dir():
        found.append(f"binhost.gpg_home: directory {config.binhost.gpg_home} does not exist")
    command = config.scan.command
    search = config.scan.environment.get("PATH", os.environ.get("PATH", ""))
    if shutil.which(command[0], path=search) is None:
        found.append(f"scan.command: '{command[0]}' not found on PATH")
    for number, route in enumerate(config.route, 1):
        try:
            parse_atom(route.match)
        except SwarmError as exc:
            found.append(f"[[route]] {number}: {exc}")
    try:
        file_rules(config)
    except SwarmError as exc:
        found.append(f"exclude.file: {exc}")
    return found


def binrepos_conf(config: Config, name: str = "swarm", channel: str | None = None) -> str:
    """The /etc/portage/binrepos.conf entry a client needs for this binhost (or a channel)."""
    where = f"{release.url(config)}/{channel}" if channel else config.binhost.url
    lines = [
        f"# /etc/portage/binrepos.conf/{name}.conf: packages built by the swarm"
        + (f", channel {channel} (swarm-release)" if channel else ""),
        f"[{name}]",
        f"sync-uri = {where}",
        "priority = 10",
    ]
    if config.binhost.gpg_key:
        lines += ["# Signed with " + config.binhost.gpg_key + ": import its public key into",
                  "# /etc/portage/gnupg with ultimate or full trust (getuto, or gpg --homedir).",
                  "verify-signature = true"]
    else:
        lines += ["# swarm-sync does not sign (binhost.gpg_key is empty): say so knowingly.",
                  "verify-signature = false"]
    return "\n".join(lines) + "\n"


def render_client(config: Config, profile: dict | None) -> str:
    """The make.conf lines and binrepos.conf entry a client of the binhost must have."""
    lines = ["# /etc/portage/make.conf on a client (swarm-config render client): binaries",
             "# first, from the swarm's binhost. Portage uses a binary only when its USE,",
             "# CHOST and so on match this host's: keep the profile's settings (the",
             "# scan's /etc/portage) here too."]
    if profile:
        lines.append(f'CHOST="{profile["chost"]}"')
    lines += ['FEATURES="${FEATURES} getbinpkg"',
              'EMERGE_DEFAULT_OPTS="${EMERGE_DEFAULT_OPTS} --getbinpkg"', ""]
    return "\n".join(lines) + "\n" + binrepos_conf(config)


def render_drone(config: Config, name: str, profile: dict | None) -> str:
    """The make.conf lines a drone must have, and its binrepos.conf entry."""
    drone = config.drones[name]
    lines = [f"# /etc/portage/make.conf on drone {name} (swarm-config render drone {name}).",
             "# swarm-drone builds with the build profile's configuration, fetched from the",
             "# orchestrator; of this file it keeps only host-local values:",
             f"#   {' '.join(HOST_LOCAL)}",
             "# The drone's own toolchain must match the profile's:"]
    if profile:
        lines += [f'CHOST="{profile["chost"]}"', f"# ARCH {profile['arch']} (from its profile)"]
    else:
        lines.append("# (no scan has recorded a profile yet: run swarm-fresh)")
    lines += ["# Its own installs come from the swarm's binhost too:",
              f'PORTAGE_BINHOST="{config.binhost.url}"', 'FEATURES="${FEATURES} getbinpkg"']
    if drone.environment:
        lines.append("# Besides, swarm-drone sets for its emerge (drones." + name + ".environment):")
        lines += [f"#   {k}={json.dumps(v) if chr(10) in v else v}"
                  for k, v in sorted(drone.environment.items())]
    return "\n".join(lines) + "\n\n" + binrepos_conf(config)
