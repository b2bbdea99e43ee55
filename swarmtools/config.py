"""The canonical config: one TOML file that every command reads.

Location: ``--config PATH``, else ``$SWARM_CONFIG``, else
``/etc/swarmtools/swarm.toml``. A value comes from, in order of precedence:
a command-line flag, the environment (``SWARM_<SECTION>_<KEY>``, e.g.
``SWARM_ORCHESTRATOR_DATABASE``), the file, the built-in default.
Relative paths in the file are taken relative to the file's directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEFAULT_PATH = Path("/etc/swarmtools/swarm.toml")

# Each key: (kind, default, help). kind is one of "path", "str", "int",
# "list", "env", "choice:a|b". A default may name another key of the same
# section in braces ("{state_dir}/swarm.db").
SCHEMA: dict[str, dict[str, tuple[str, object, str]]] = {
    "orchestrator": {
        "state_dir": ("path", "/var/lib/swarmtools", "directory for the database and logs"),
        "database": ("path", "{state_dir}/swarm.db", "the SQLite queue"),
        "staging_dir": ("path", "{state_dir}/staging", "where drones upload, one folder a drone"),
        "log_file": ("path", "{state_dir}/swarm.log", "errors of cron runs are appended here"),
        "ssh": ("str", "swarm@orchestrator", "ssh destination drones use to reach the gateway"),
        "ssh_command": ("list", ["ssh", "-o", "BatchMode=yes"], "ssh program and options drones use"),
    },
    "binhost": {
        "path": ("path", "/var/cache/binhost", "PKGDIR served to clients (on the orchestrator)"),
        "url": ("str", "http://orchestrator/binhost", "URL clients put in PORTAGE_BINHOST"),
        "rsync_target": ("str", "", "when the binhost is another host: [user@]host:/path to mirror to"),
        "grace_seconds": ("int", 86400, "how long a superseded package stays on disk"),
        "sync_interval_seconds": ("int", 120, "how often cron runs swarm-sync"),
        "gpg_key": ("str", "", "sign published packages with this GnuPG key (empty: unsigned)"),
        "gpg_home": ("path", "", "the GnuPG home holding that key (empty: ~/.gnupg)"),
    },
    "scan": {
        "command": (
            "list",
            ["emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "@world"],
            "the scan swarm-fresh runs; add --usepkg=y --getbinpkg=y to skip what the binhost has",
        ),
        "environment": ("env", {}, "extra environment for the scan (PORTAGE_BINHOST, ...)"),
        "timeout": ("int", 3600, "seconds before a scan is abandoned"),
    },
    "delegate": {
        "lease_seconds": ("int", 3600, "how long a claim holds without a heartbeat"),
        "online_seconds": ("int", 300, "a drone is online while its last heartbeat is this young"),
        "retry_seconds": ("int", 1800, "back-off after a failed build; doubles with each failure"),
        "retry_max_seconds": ("int", 86400, "the longest back-off"),
        "heartbeat_seconds": ("int", 60, "how often a drone sends a heartbeat, also while building"),
        "poll_seconds": ("int", 30, "how long an idle drone sleeps before asking again"),
    },
}

# One [drones.NAME] table a drone.
DRONE_SCHEMA: dict[str, tuple[str, object, str]] = {
    "host": ("str", "", "the drone's host name, for people"),
    "transport": ("choice:ssh|local", "ssh", "how the drone reaches the orchestrator"),
    "ssh_command": ("list", [], "this drone's ssh program and options (default orchestrator.ssh_command)"),
    "environment": ("env", {}, "extra environment for the drone's emerge"),
}

_DRONE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Config:
    """The effective config and the file it came from."""

    path: Path
    data: dict

    def __getitem__(self, section: str) -> dict:
        return self.data[section]

    @property
    def database(self) -> Path:
        return Path(self.data["orchestrator"]["database"])

    @property
    def staging_dir(self) -> Path:
        return Path(self.data["orchestrator"]["staging_dir"])

    @property
    def drones(self) -> dict[str, dict]:
        return self.data["drones"]

    def digest(self) -> str:
        """A hash of the effective config, so drones can report which one they run."""
        text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def locate(explicit: str | os.PathLike | None = None) -> Path:
    """The config file to read: the flag, else $SWARM_CONFIG, else the default."""
    if explicit:
        return Path(explicit)
    if os.environ.get("SWARM_CONFIG"):
        return Path(os.environ["SWARM_CONFIG"])
    return DEFAULT_PATH


def load(explicit: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """Read, validate and complete the config; raise ConfigError naming key and file."""
    path = locate(explicit)
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; create one with 'swarm-config init --dir DIR' "
            "and point --config or SWARM_CONFIG at it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return Config(path=path, data=_complete(raw, path, environ))


def _complete(raw: dict, path: Path, environ) -> dict:
    unknown = set(raw) - set(SCHEMA) - {"drones"}
    if unknown:
        raise ConfigError(f"{path}: unknown section or key '{sorted(unknown)[0]}'")
    base = path.parent.resolve()
    data: dict = {}
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}])")
        data[section] = _complete_table(table, keys, section, path, base, environ)
    drones = raw.get("drones", {})
    if not isinstance(drones, dict):
        raise ConfigError(f"{path}: 'drones' must be a table of [drones.NAME] tables")
    data["drones"] = {}
    for name, table in drones.items():
        if not _DRONE_NAME.match(name) or name == "quarantine":
            raise ConfigError(
                f"{path}: drone name 'drones.{name}' must be lower-case letters, digits, '.', '_' or '-'"
                " (and not 'quarantine')"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: 'drones.{name}' must be a table")
        data["drones"][name] = _complete_table(
            table, DRONE_SCHEMA, f"drones.{name}", path, base, {}
        )
    return data


def _complete_table(table, keys, section, path, base, environ) -> dict:
    unknown = set(table) - set(keys)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{section}.{sorted(unknown)[0]}'")
    out = {}
    # Keys without a {reference} first, so defaults like "{state_dir}/x" resolve.
    for key in sorted(keys, key=lambda k: "{" in str(keys[k][1])):
        kind, default, _ = keys[key]
        env_name = f"SWARM_{section}_{key}".upper().replace(".", "_").replace("-", "_")
        if env_name in environ and kind in ("path", "str", "int"):
            value = _from_env(environ[env_name], kind, env_name)
        elif key in table:
            value = _check_type(table[key], kind, f"{section}.{key}", path)
        else:
            value = default.format(**out) if isinstance(default, str) else default
        if kind == "path" and value:
            value = str((base / os.path.expanduser(value)).resolve())
        out[key] = value
    return {key: out[key] for key in keys}  # schema order, for people reading `show`


def _check_type(value, kind: str, key: str, path: Path):
    expected = {"path": str, "str": str, "int": int, "list": list, "env": dict}
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if value not in choices:
            raise ConfigError(f"{path}: '{key}' must be one of {', '.join(choices)}, not {value!r}")
        return value
    want = expected[kind]
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(
            f"{path}: '{key}' must be {_KIND_WORDS[kind]}, not {type(value).__name__} {value!r}"
        )
    if kind == "list" and not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: '{key}' must be a list of strings")
    if kind == "env" and not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{path}: '{key}' must map names to strings")
    if kind == "int" and value < 0:
        raise ConfigError(f"{path}: '{key}' must not be negative")
    return value


_KIND_WORDS = {
    "path": "a path string",
    "str": "a string",
    "int": "an integer",
    "list": "a list of strings",
    "env": "a table of strings",
}


def _from_env(text: str, kind: str, name: str):
    if kind != "int":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, not {text!r}") from None


def check(config: Config) -> list[str]:
    """Problems a command would hit later: missing directories, no emerge."""
    problems = []
    orch = config["orchestrator"]
    for key in ("state_dir",):
        if not Path(orch[key]).is_dir():
            problems.append(f"orchestrator.{key}: directory {orch[key]} does not exist")
    for key in ("database", "log_file"):
        parent = Path(orch[key]).parent
        if not parent.is_dir():
            problems.append(f"orchestrator.{key}: directory {parent} does not exist")
    if not config.staging_dir.is_dir():
        problems.append(f"orchestrator.staging_dir: directory {config.staging_dir} does not exist")
    if not Path(config["binhost"]["path"]).is_dir():
        problems.append(f"binhost.path: directory {config['binhost']['path']} does not exist")
    if config["binhost"]["gpg_key"] and not shutil.which("gpg"):
        problems.append("binhost.gpg_key: gpg is not installed")
    gpg_home = config["binhost"]["gpg_home"]
    if gpg_home and not Path(gpg_home).is_dir():
        problems.append(f"binhost.gpg_home: directory {gpg_home} does not exist")
    command = config["scan"]["command"]
    if not command:
        problems.append("scan.command: empty")
    else:
        search = config["scan"]["environment"].get("PATH", os.environ.get("PATH", ""))
        if shutil.which(command[0], path=search) is None:
            problems.append(f"scan.command: '{command[0]}' not found on PATH")
    return problems


def render_toml(data: dict) -> str:
    """Write a config dict as TOML (strings, ints, lists of strings, tables)."""
    lines: list[str] = []

    def table(name: str, values: dict) -> None:
        lines.append(f"[{name}]")
        nested = []
        for key, value in values.items():
            if isinstance(value, dict):
                nested.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in nested:
            lines.append(f"\n[{name}.{key}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        lines.append("")

    for section, values in data.items():
        if section == "drones":
            for drone, drone_values in values.items():
                table(f"drones.{drone}", drone_values)
        else:
            table(section, values)
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value) -> str:
    # JSON strings, integers and arrays of strings are valid TOML too.
    return json.dumps(value)


def binrepos_conf(config: Config, name: str = "swarm") -> str:
    """The /etc/portage/binrepos.conf entry a client needs for this binhost."""
    signed = bool(config["binhost"]["gpg_key"])
    lines = [
        f"# /etc/portage/binrepos.conf/{name}.conf: packages built by the swarm",
        f"[{name}]",
        f"sync-uri = {config['binhost']['url']}",
        "priority = 10",
    ]
    if signed:
        lines += ["# Signed with " + config["binhost"]["gpg_key"] + ": import its public key into",
                  "# /etc/portage/gnupg with ultimate or full trust (getuto, or gpg --homedir).",
                  "verify-signature = true"]
    else:
        lines += ["# swarm-sync does not sign (binhost.gpg_key is empty): say so knowingly.",
                  "verify-signature = false"]
    return "\n".join(lines) + "\n"


def init(directory: Path, scan_environment: dict[str, str] | None = None,
         force: bool = False) -> Path:
    """Write a working single-host config with everything under DIRECTORY."""
    directory = directory.resolve()
    path = directory / "swarm.toml"
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    try:
        for sub in ("state", "state/staging", "binhost"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}") from None
    data = {
        "orchestrator": {
            "state_dir": str(directory / "state"),
            "database": str(directory / "state" / "swarm.db"),
            "staging_dir": str(directory / "state" / "staging"),
            "log_file": str(directory / "state" / "swarm.log"),
            "ssh": "root@localhost",
        },
        "binhost": {"path": str(directory / "binhost"), "url": "http://127.0.0.1:8080"},
        "scan": {
            "command": SCHEMA["scan"]["command"][1],
            "environment": dict(scan_environment or {}),
        },
        "drones": {"local": {"host": "localhost", "transport": "local"}},
    }
    path.write_text(
        "# swarmtools config written by 'swarm-config init'; see 'swarm-config --help'.\n"
        + render_toml(data)
    )
    load(path)  # what we write must load
    return path
