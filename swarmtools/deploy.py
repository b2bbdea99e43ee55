"""The files that put a swarm on its hosts, for this install: ``swarm-config render``.

Whatever starts a swarm-* command on a host has a PATH of its own that no
install is sure to be on: cron's is ``/usr/bin:/bin``, sshd's forced command
gets sshd's, emerge's postsync hook goes through ``su``, systemd and OpenRC
want an absolute program. So every file here names this install's commands
by absolute path (the crontab through its own ``PATH=`` line, which is what
cron offers), and the config file they read. The copies in ``cron/`` and
``init/`` are these files for the Gentoo package (commands in ``/usr/bin``,
the default config); ``scripts/deploy-files`` writes them.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_PATH, Config
from .errors import ConfigError

# What each file is and where it goes (swarm-config render KIND).
ORCHESTRATOR_FILES = {
    "crontab": "crontab -u USER -",
    "postsync": "/etc/portage/postsync.d/swarm-fresh",
    "sshd": "/etc/ssh/sshd_config (the globals among the globals, the Match block at the end)",
    "authorized-keys": "~USER/.ssh/authorized_keys",
}
DRONE_FILES = {
    "systemd-unit": "/etc/systemd/system/swarm-drone@.service",
    "openrc-init": "/etc/init.d/swarm-drone",
    "openrc-conf": "/etc/conf.d/swarm-drone",
}
KINDS = ("orchestrator", *ORCHESTRATOR_FILES, *DRONE_FILES)

STATUS_PAGE = "/var/www/swarm/index.html"
METRICS_FILE = "/var/lib/node_exporter/swarm.prom"
# Written into shell, crontab, systemd and sshd files unquoted: anything else
# (a space, %, $, a quote) means something in one of them.
_PLAIN = re.compile(r"[A-Za-z0-9_./+@:-]+")


@dataclass(frozen=True)
class Host:
    """What the files name: this install's commands, the config they read, the swarm's user."""

    bin_dir: Path
    config: Path
    user: str = "swarm"

    def command(self, name: str) -> str:
        """The absolute path of swarm-NAME in this install."""
        return plain(str(self.bin_dir / name), "the command")


def plain(text: str, what: str) -> str:
    """TEXT, if it can go unquoted into every file here; else a ConfigError."""
    if not _PLAIN.fullmatch(text):
        raise ConfigError(f"{what} {text!r} cannot be written into a crontab, unit or sshd file "
                          "as it is: use a path of letters, digits and ._+@:/-")
    return text


def installed_bin_dir(argv0: str | None = None) -> Path:
    """Where this install's swarm-* commands are: beside the running one, else on PATH."""
    here = Path(os.path.abspath(argv0 or sys.argv[0])).parent
    if here.parent.name == "python-exec":
        # Gentoo's package: /usr/bin/swarm-x runs /usr/lib/python-exec/python3.N/swarm-x,
        # a directory an upgrade of Python removes. The files name /usr/bin's.
        here = here.parents[2] / "bin"
    if (here / "swarm-delegate").exists():
        return here
    found = shutil.which("swarm-delegate")
    if found is None:
        raise ConfigError("cannot tell where swarm-delegate is installed: pass --bin-dir")
    return Path(os.path.abspath(found)).parent


def swarm_user(config: Config) -> str:
    """The user the swarm's state belongs to: the owner of orchestrator.state_dir."""
    try:
        uid = config.state_dir.stat().st_uid
    except FileNotFoundError:
        raise ConfigError(f"orchestrator.state_dir {config.state_dir} does not exist: run "
                          "swarm-config init as the swarm's user, or pass --user") from None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise ConfigError(f"{config.state_dir} belongs to uid {uid}, which has no name: "
                          "pass --user") from None


def crontab(host: Host, status_page: str = STATUS_PAGE, metrics_file: str = METRICS_FILE) -> str:
    """The swarm user's crontab: its PATH= line finds this install's commands."""
    search = ":".join(dict.fromkeys([plain(str(host.bin_dir), "the command directory"),
                                     "/usr/bin", "/bin"]))
    lines = [
        f"# swarmtools on the orchestrator: {host.user}'s crontab (swarm-config render crontab).",
        f"# Install: swarm-config render crontab | crontab -u {host.user} -",
        "# Quiet when all is well: cron mails only errors, which also go to",
        "# orchestrator.log_file.",
        "",
        "# Cron runs commands with PATH=/usr/bin:/bin: this one finds swarmtools",
        "# (and emerge, rsync, ssh and gpg, which the commands run).",
        f"PATH={search}",
        f"SWARM_CONFIG={plain(str(host.config), 'the config file')}",
        "",
        "# Return expired leases (dead drones) and finished back-offs to 'needed'",
        "# even while no drone is asking (every claim does it too).",
        "*/5 * * * *  swarm-delegate expire --quiet",
        "",
        "# The queue follows the tree through /etc/portage/postsync.d/swarm-fresh;",
        "# this catches changes to /etc/portage (USE, the world file) and a hook that",
        "# found another scan running. No emerge runs when nothing changed.",
        "*/10 * * * * swarm-fresh --if-changed --quiet",
        "",
        "# Publish what the drones built: verified, copied, indexed; quiet when all",
        "# is well, exit 75 (silently) while another run holds the lock.",
        "*/2 * * * *  swarm-sync --quiet",
    ]
    if status_page or metrics_file:
        lines += ["", "# The status page (and its JSON twin, and failure logs beside it) for the",
                  "# web server that serves the binhost; the figures for node_exporter's",
                  "# textfile collector, renamed into place so it never reads half a file."]
    if status_page:
        lines.append(f"* * * * *    swarm-status --html {plain(status_page, 'the status page')}")
    if metrics_file:
        target = plain(metrics_file, "the metrics file")
        lines.append(f"* * * * *    swarm-status --prometheus > {target}.tmp && "
                     f"mv {target}.tmp {target}")
    lines += ["", "# A release each night when the binhost changed (clients pinned to a channel",
              "# move only when you promote one: swarm-release promote NAME).",
              "30 3 * * *   swarm-release create --if-changed --quiet"]
    return "\n".join(lines) + "\n"


def postsync(host: Host) -> str:
    """The Portage postsync hook: a scan after every emerge --sync, as the swarm's user."""
    scan = shlex.join([host.command("swarm-fresh"), "--config",
                       plain(str(host.config), "the config file"), "--quiet"])
    return f"""#!/bin/sh
# /etc/portage/postsync.d/swarm-fresh (swarm-config render postsync).
# Portage runs /etc/portage/postsync.d/* once after `emerge --sync` has synced
# every repository: re-scan the world so the queue follows the new tree.
# Always a scan (not --if-changed): a cron --if-changed run that read the tree
# half-way through the sync (rsync writes metadata/timestamp.chk early) saw
# the new timestamp over an old tree, and only a scan now is sure. A scan
# already running is waited for, then this one runs.
#
# emerge --sync runs this as root, but the swarm's state belongs to the swarm
# user: files root made there would lock that user out (swarm-fresh refuses
# to run as another user than the owner of the database). So, as root, the
# scan runs as SWARM_USER (set it in /etc/env.d or here). A host without that
# user is no orchestrator (a drone, or one not set up yet): nothing to do.
# Quiet when all is well; errors go to stderr (emerge --sync shows them) and
# to orchestrator.log_file.
SWARM_USER=${{SWARM_USER:-{host.user}}}
id "$SWARM_USER" >/dev/null 2>&1 || exit 0
scan={shlex.quote('exec ' + scan)}
if [ "$(id -u)" = 0 ]; then
    exec su -s /bin/sh "$SWARM_USER" -c "$scan"
fi
exec /bin/sh -c "$scan"
"""


def sshd_snippet(host: Host) -> str:
    """The sshd_config lines for the drones' logins (global limits, then a Match block)."""
    return f"""# Above the drone count:
MaxStartups 1100:30:2000
# One host cannot take every slot (OpenSSH 8.5+); raise it above the drone
# count if the drones share an address (NAT):
PerSourceMaxStartups 8
Match User {plain(host.user, 'the user')}
    AuthenticationMethods publickey
    PasswordAuthentication no
    PermitTTY no
    AllowTcpForwarding no
    X11Forwarding no
    LogLevel INFO
    # A drone multiplexes one session at a time:
    MaxSessions 4
"""


def gateway_command(host: Host, drone: str) -> str:
    """The forced command that pins DRONE's key to the gateway."""
    return " ".join([host.command("swarm-delegate"), "gateway", "--drone", plain(drone, "drone"),
                     "--config", plain(str(host.config), "the config file")])


def authorized_keys(host: Host, config: Config, keys: dict[str, str]) -> str:
    """The line of each drone in KEYS (its public key), ready to append; without KEYS,
    every drone of the ssh transport's, commented out, to fill in."""
    for name in sorted(keys):
        _check_drone(config, name)
    names = sorted(keys) or sorted(n for n, d in config.drones.items() if d.transport == "ssh")
    lines = []
    for name in names:
        options = f'command="{gateway_command(host, name)}",restrict'
        lines.append(f"{options} {keys[name]}" if name in keys else
                     f"# {options} <the public key of {name}: --key {name}=KEYFILE>")
    return "".join(line + "\n" for line in lines)


def public_key(text: str, origin: str) -> str:
    """The one public key line of an .pub file's TEXT."""
    keys = [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]
    if len(keys) != 1 or len(keys[0].split()) < 2 or "\"" in keys[0]:
        raise ConfigError(f"{origin}: not one ssh public key (e.g. ssh-ed25519 AAAA... comment)")
    return keys[0]


def systemd_unit(host: Host) -> str:
    """The systemd template unit swarm-drone@NAME.service."""
    return f"""# /etc/systemd/system/swarm-drone@.service (swarm-config render systemd-unit):
# the swarmtools drone NAME of swarm-drone@NAME, as root (it runs emerge).
# Install: systemctl daemon-reload && systemctl enable --now swarm-drone@NAME
[Unit]
Description=swarmtools drone %i: builds packages for the binhost
After=network-online.target
Wants=network-online.target

[Service]
Environment=SWARM_CONFIG={plain(str(host.config), 'the config file')}
ExecStart={host.command('swarm-drone')} --drone %i -v
# SIGTERM stops the build and releases its package; give it time to do so.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure
RestartSec=30

[Install]
WantedBy=multi-user.target
"""


def openrc_init(host: Host) -> str:
    """The OpenRC service script; /etc/conf.d/swarm-drone names the drone."""
    return f"""#!/sbin/openrc-run
# /etc/init.d/swarm-drone (swarm-config render openrc-init): the swarmtools
# drone that /etc/conf.d/swarm-drone names, as root (it runs emerge).
# Install: rc-update add swarm-drone default && rc-service swarm-drone start

description="swarmtools drone: builds packages for the binhost"
command="${{SWARM_DRONE_BIN:-{host.command('swarm-drone')}}}"
command_args="--syslog ${{SWARM_DRONE_OPTS}}"
command_background=true
pidfile="/run/${{RC_SVCNAME}}.pid"
# A build in progress is stopped and its package released on SIGTERM.
retry="TERM/60/KILL/5"

export SWARM_CONFIG SWARM_DRONE

depend() {{
	need net
	after logger
}}

start_pre() {{
	if [ -z "${{SWARM_DRONE}}" ]; then
		eerror "Set SWARM_DRONE in /etc/conf.d/${{RC_SVCNAME}}"
		return 1
	fi
}}
"""


def openrc_conf(host: Host, drone: str | None) -> str:
    """/etc/conf.d/swarm-drone for DRONE (None: left to fill in)."""
    name = plain(drone, "drone") if drone else ""
    return f"""# /etc/conf.d/swarm-drone (swarm-config render openrc-conf NAME)

# This drone's name: a [drones.NAME] table of the config.
SWARM_DRONE="{name}"

# The swarm's one config file (a copy of the orchestrator's).
SWARM_CONFIG="{plain(str(host.config), 'the config file')}"

# The swarm-drone of this install: OpenRC's PATH need not find it.
SWARM_DRONE_BIN="{host.command('swarm-drone')}"

# Extra options, e.g. "-v" to log each build.
SWARM_DRONE_OPTS="-v"
"""


def drone_service(host: Host, drone: str) -> str:
    """The service files that run DRONE: OpenRC's pair, or systemd's unit."""
    return "".join([
        f"\n# The service that runs swarm-drone --drone {drone} as root: OpenRC's two files,\n",
        "# then `rc-update add swarm-drone default`; or systemd's unit, then\n",
        f"# `systemctl enable --now swarm-drone@{drone}`.\n",
        _section(DRONE_FILES["openrc-conf"], openrc_conf(host, drone)),
        _section(DRONE_FILES["openrc-init"], openrc_init(host)),
        _section(DRONE_FILES["systemd-unit"], systemd_unit(host)),
    ])


def orchestrator(host: Host, config: Config, keys: dict[str, str], status_page: str = STATUS_PAGE,
                 metrics_file: str = METRICS_FILE) -> str:
    """Every file of the orchestrator, each under the name of where it goes."""
    return "".join(_section(where.replace("USER", host.user), text) for where, text in [
        (ORCHESTRATOR_FILES["crontab"], crontab(host, status_page, metrics_file)),
        (ORCHESTRATOR_FILES["postsync"], postsync(host)),
        (ORCHESTRATOR_FILES["sshd"], sshd_snippet(host)),
        (ORCHESTRATOR_FILES["authorized-keys"], authorized_keys(host, config, keys)),
    ]).lstrip("\n")


def _check_drone(config: Config, name: str) -> None:
    if name not in config.drones:
        raise ConfigError(f"no drone '{name}' in {config.path} "
                          f"(drones: {', '.join(sorted(config.drones)) or 'none'})")


def _section(where: str, text: str) -> str:
    # As head(1) and tail(1) separate files.
    return f"\n==> {where} <==\n{text}"


def host_for(config: Config, bin_dir: str | None = None, user: str | None = None) -> Host:
    """The Host of CONFIG: this install's commands unless BIN_DIR; USER, else the swarm's
    (the owner of the state: only the orchestrator's files name it)."""
    where = Path(os.path.abspath(bin_dir)) if bin_dir else installed_bin_dir()
    return Host(bin_dir=where, config=Path(os.path.abspath(config.path)),
                user=user or swarm_user(config))


def read_keys(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """NAME=KEYFILE items (KEYFILE - for stdin) as each drone's public key."""
    keys = {}
    for item in items:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"--key wants NAME=KEYFILE (a drone's .pub file, - for stdin), "
                              f"not {item!r}")
        try:
            text = sys.stdin.read() if where == "-" else Path(where).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the public key of {name}: {exc}") from None
        keys[name] = public_key(text, where)
    return keys


def render(config: Config, kind: str, name: str | None = None, *, bin_dir: str | None = None,
           user: str | None = None, keys: tuple[str, ...] = (), status_page: str = STATUS_PAGE,
           metrics_file: str = METRICS_FILE) -> str:
    """The file KIND (one of KINDS) for this host; NAME is the drone of openrc-conf."""
    if kind not in KINDS:
        raise ConfigError(f"no file '{kind}' (one of {', '.join(KINDS)})")
    if (name is not None) != (kind == "openrc-conf"):
        raise ConfigError("render openrc-conf takes the drone's NAME" if kind == "openrc-conf"
                          else f"render {kind} takes no NAME")
    if name is not None:
        _check_drone(config, name)
    if keys and kind not in ("authorized-keys", "orchestrator"):
        raise ConfigError(f"render {kind} takes no --key")
    if kind in DRONE_FILES:  # they name no user
        host = host_for(config, bin_dir, user or "swarm")
        return (openrc_conf(host, name) if kind == "openrc-conf" else
                systemd_unit(host) if kind == "systemd-unit" else openrc_init(host))
    host = host_for(config, bin_dir, user)
    if kind == "crontab":
        return crontab(host, status_page, metrics_file)
    if kind == "postsync":
        return postsync(host)
    if kind == "sshd":
        return sshd_snippet(host)
    if kind == "authorized-keys":
        return authorized_keys(host, config, read_keys(keys))
    return orchestrator(host, config, read_keys(keys), status_page, metrics_file)


def gentoo_host() -> Host:
    """The Host the Gentoo package's copies in cron/ and init/ are for."""
    return Host(bin_dir=Path("/usr/bin"), config=DEFAULT_PATH, user="swarm")


def package_files() -> dict[str, str]:
    """The repository's cron/ and init/ files, as the Gentoo package installs them."""
    host = gentoo_host()
    return {"cron/crontab": crontab(host),
            "cron/postsync.d/swarm-fresh": postsync(host),
            "init/swarm-drone.initd": openrc_init(host),
            "init/swarm-drone.confd": openrc_conf(host, None),
            "init/swarm-drone@.service": systemd_unit(host)}
