"""The canonical config: one TOML file that every command reads.

Location: ``--config PATH``, else ``$SWARM_CONFIG``, else
``/etc/swarmtools/swarm.toml``. A value comes from, in order of precedence:
a command-line flag, the environment (``SWARM_<SECTION>_<KEY>``, e.g.
``SWARM_ORCHESTRATOR_DATABASE``), the file, the built-in default.
Relative paths in the file are taken relative to the file's directory.

The schema is the section dataclasses below: each field is a key, with its
kind, default, limits and help (shown by ``swarm-config show`` as comments
and by ``swarm-config --help``). A loaded :class:`Config` is read with
attributes: ``config.delegate.lease_seconds``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .output import write_atomic

DEFAULT_PATH = Path("/etc/swarmtools/swarm.toml")
INT_MAX = 2**31 - 1  # larger values overflow dates and SQLite alike


def key(default, help: str, *, kind: str = "", minimum: int | None = None,
        maximum: int = INT_MAX, choices: tuple[str, ...] = (), required: bool = False,
        environ: bool = True):
    """One config key: its default, help line and checks (a dataclass field)."""
    metadata = {"help": help, "kind": kind, "minimum": minimum, "maximum": maximum,
                "choices": choices, "required": required, "environ": environ}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Orchestrator:
    """The host that keeps the queue and runs the gateway."""

    state_dir: str = key("/var/lib/swarmtools", "directory for the database and logs",
                         kind="path", required=True)
    database: str = key("{state_dir}/swarm.db", "the SQLite queue", kind="path", required=True)
    staging_dir: str = key("{state_dir}/staging", "where drones upload, one folder a drone",
                           kind="path", required=True)
    log_file: str = key("{state_dir}/swarm.log", "errors of cron runs are appended here",
                        kind="path")
    ssh: str = key("swarm@orchestrator", "ssh destination drones use to reach the gateway")
    ssh_command: list = key(["ssh", "-o", "BatchMode=yes"], "ssh program and options drones use")


@dataclass(frozen=True)
class BinhostSettings:
    """The directory clients fetch binary packages from."""

    path: str = key("/var/cache/binhost", "PKGDIR served to clients (on the orchestrator)",
                    kind="path", required=True)
    url: str = key("http://orchestrator/binhost", "URL clients put in PORTAGE_BINHOST",
                   required=True)
    rsync_target: str = key("", "when the binhost is another host: [user@]host:/path to mirror to")
    rsync_ssh_command: list = key(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"],
                                  "ssh program and options for that mirror")
    grace_seconds: int = key(86400, "how long a superseded package stays on disk", minimum=0)
    sync_interval_seconds: int = key(120, "how often cron runs swarm-sync", minimum=1)
    publish_on_report: bool = key(True, "start a swarm-sync (in the background, coalesced) as "
                                        "soon as a drone reports a build")
    gpg_key: str = key("", "sign published packages with this GnuPG key (empty: unsigned)")
    gpg_home: str = key("", "the GnuPG home holding that key (empty: ~/.gnupg)", kind="path")
    releases_path: str = key("{path}/../releases", "dated releases and the channels clients pin "
                             "(swarm-release; on the binhost's filesystem: hardlinks)", kind="path")
    releases_url: str = key("", "URL clients reach releases_path at (empty: 'releases' beside "
                                "url)")
    releases_keep: int = key(10, "releases swarm-release prune keeps, besides any a channel "
                                 "ever pointed at", minimum=1)


@dataclass(frozen=True)
class Scan:
    """How swarm-fresh learns what the world needs."""

    command: list = key(
        ["emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "--with-bdeps=y",
         "--usepkg=y", "--getbinpkg=y", "@world"],
        "the scan swarm-fresh runs; with --getbinpkg it asks binhost.url what is built",
        required=True)
    environment: dict = key({}, "extra environment for the scan (PORTAGE_CONFIGROOT, ...)",
                            kind="env")
    timeout: int = key(3600, "seconds before a scan is abandoned", minimum=1)
    resolve: bool = key(True, "run swarm-resolve after each scan, so the queue is gated on "
                              "dependencies from its first claim (swarm-fresh --no-resolve, or "
                              "false here, leaves it to a swarm-resolve of your own)")


@dataclass(frozen=True)
class Delegate:
    """Leases, heartbeats and back-offs."""

    lease_seconds: int = key(3600, "how long a claim holds without a heartbeat", minimum=1)
    online_seconds: int = key(900, "a drone is online while it was heard from this recently "
                                   "or holds a live lease", minimum=1)
    retry_seconds: int = key(1800, "back-off after a failed build; doubles with each failure",
                             minimum=0)
    retry_max_seconds: int = key(86400, "the longest back-off", minimum=0)
    heartbeat_seconds: int = key(0, "how often a building drone sends a heartbeat (0: a third "
                                    "of lease_seconds); an idle drone's rides on its claim",
                                 minimum=0)
    poll_seconds: int = key(30, "the shortest wait of an idle drone before asking again",
                            minimum=1)
    idle_max_seconds: int = key(300, "the longest wait of an idle drone: its wait doubles from "
                                     "poll_seconds up to this, unless the orchestrator says "
                                     "sooner", minimum=1)
    policy: str = key("critical", "which eligible package a drone gets: critical (the longest "
                                  "chain first, placed by drone speed) or first (queue order)",
                      kind="choice", choices=("critical", "first"))
    max_silent_seconds: int = key(7200, "a build with no output and (almost) no CPU time, under "
                                        "2 % of a core, this long is stopped and reported "
                                        "stalled (0: never)", minimum=0)
    staging_quota_mib: int = key(20480, "the most a drone may keep in its staging area",
                                 minimum=1)

    def beat_seconds(self) -> float:
        """The spacing of a building drone's heartbeats: each leaves 2/3 of the lease."""
        return self.heartbeat_seconds or self.lease_seconds / 3


@dataclass(frozen=True)
class Exclude:
    """What is not built, or not on which drones: rules and failure memory (swarm-exclude)."""

    file: str = key("", "a package.mask-style file of atoms never built (one a line, # comments)",
                    kind="path")
    auto_failures: int = key(3, "build failures of a package on drones of one build class "
                                "(CHOST, CFLAGS), two of them at least, that exclude it for "
                                "that class", minimum=1)
    auto_days: int = key(30, "how long such an automatic exclusion lasts (a new version or USE "
                             "ends it sooner)", minimum=1)
    ground_after: int = key(8, "failures in a row that ground a drone (its toolchain, not the "
                               "packages)", minimum=2)
    ground_seconds: int = key(3600, "how long a grounded drone gets no work", minimum=1)


@dataclass(frozen=True)
class Route:
    """One [[route]] table: packages that need drones with some features."""

    match: str = key("", "atom of the packages (wildcards allowed, as in swarm-exclude)",
                     required=True)
    requires: list = key([], "features a drone must have to build them", required=True)


@dataclass(frozen=True)
class Resolve:
    """The dependency graph and the expected build times behind priorities."""

    emerge_logs: list = key([], "emerge.log files to learn build times from (as qlop does)")
    default_seconds: int = key(900, "the expected build time of a package never seen built",
                               minimum=1)


@dataclass(frozen=True)
class DroneSettings:
    """One [drones.NAME] table a drone."""

    host: str = key("", "the drone's host name, for people")
    speed: float = key(0.0, "how fast it builds, 1 the norm (0: learn it from its builds)",
                       minimum=0)
    features: list = key([], "what it can build besides what its facts show (e.g. big-memory)")
    mandatory_features: list = key([], "it only builds packages that require all of these")
    transport: str = key("ssh", "how the drone reaches the orchestrator", kind="choice",
                         choices=("ssh", "local"))
    ssh_command: list = key([], "this drone's ssh program and options "
                                "(default orchestrator.ssh_command)")
    environment: dict = key({}, "extra environment for the drone's emerge", kind="env")
    check_command: list = key([], "how swarm-config check --remote runs a program on the drone "
                                  "(e.g. [\"ssh\", \"root@d1\"]; empty: ssh HOST, or here for the "
                                  "local transport)")
    sync_command: list = key(["emerge", "--sync"], "what the drone runs when its ebuild "
                                                   "repositories are not at the scan's state "
                                                   "(empty: it gives the package back)")
    isolation: str = key("overlay", "how a build is kept from the drone's system: overlay (a "
                                    "throw-away root over build_root, in a private mount "
                                    "namespace) or none (its live system, as plain emerge)",
                         kind="choice", choices=("overlay", "none"))
    build_root: str = key("", "the tree builds see under their overlay: empty, the drone's own "
                              "system; or a clean base (a stage3, kept up to date by "
                              "swarm-drone --base)", kind="path")


@dataclass(frozen=True)
class Profile:
    """One [profiles.NAME] table a build profile: a distribution the swarm keeps built."""

    config_root: str = key("", "its PORTAGE_CONFIGROOT on the orchestrator: make.conf, package.*, "
                               "world file, make.profile (empty: scan.environment's)", kind="path")
    sets: list = key([], "what it wants built: sets and atoms in place of scan.command's @ "
                         "arguments (empty: the command's own, @world)")
    environment: dict = key({}, "extra environment for its scan, over scan.environment",
                            kind="env")
    binhost: str = key("default", "where it publishes: default ([binhost]) or NAME of a "
                                  "[binhosts.NAME]; profiles sharing one share their builds")


@dataclass(frozen=True)
class OtherBinhost:
    """One [binhosts.NAME] table: another binhost a profile may publish to."""

    path: str = key("", "its PKGDIR served to clients (on the orchestrator)", kind="path",
                    required=True)
    url: str = key("", "the URL clients of its profiles put in PORTAGE_BINHOST", required=True)
    rsync_target: str = key("", "when it is on another host: [user@]host:/path to mirror to")
    gpg_key: str = key("", "sign its packages with this GnuPG key (empty: [binhost]'s)")


DEFAULT = "default"  # the profile without [profiles], and the binhost [binhost]

# The file's top level: single tables, then collections of named tables.
SECTIONS: dict[str, type] = {
    "orchestrator": Orchestrator,
    "binhost": BinhostSettings,
    "scan": Scan,
    "delegate": Delegate,
    "resolve": Resolve,
    "exclude": Exclude,
}
NAMED_TABLES: dict[str, type] = {"drones": DroneSettings, "profiles": Profile, "binhosts": OtherBinhost}
ARRAYS_OF_TABLES: dict[str, type] = {"route": Route}

_DRONE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_RESERVED_NAMES = {"quarantine", "logs"}  # folders of staging_dir


@dataclass(frozen=True)
class Config:
    """The effective config and the file it came from."""

    path: Path
    orchestrator: Orchestrator
    binhost: BinhostSettings
    scan: Scan
    delegate: Delegate
    resolve: Resolve
    exclude: Exclude
    drones: dict[str, DroneSettings]
    profiles: dict[str, Profile]
    binhosts: dict[str, OtherBinhost]
    route: list[Route]
    # A view for one profile (for_profile): its scan and binhost in place of
    # [scan] and [binhost], so one profile's code reads config.scan as ever.
    profile: str = DEFAULT

    @property
    def database(self) -> Path:
        return Path(self.orchestrator.database)

    @property
    def staging_dir(self) -> Path:
        return Path(self.orchestrator.staging_dir)

    @property
    def state_dir(self) -> Path:
        return Path(self.orchestrator.state_dir)

    def profile_names(self) -> list[str]:
        """The build profiles: the [profiles.NAME] tables, else one, default ([scan], [binhost])."""
        return sorted(self.profiles) or [DEFAULT]

    def binhost_names(self) -> list[str]:
        """default ([binhost]) and each [binhosts.NAME]."""
        return [DEFAULT, *sorted(self.binhosts)]

    def binhost_named(self, name: str) -> BinhostSettings:
        """Binhost NAME: [binhost], or a [binhosts.NAME] with [binhost]'s other settings
        (grace, ssh for the mirror, GnuPG home; releases are [binhost]'s alone)."""
        if name == DEFAULT:
            return self.binhost
        try:
            other = self.binhosts[name]
        except KeyError:
            raise ConfigError(f"{self.path}: no binhost '{name}' (binhosts: "
                              f"{', '.join(self.binhost_names())})") from None
        return dataclasses.replace(self.binhost, path=other.path, url=other.url,
                                   rsync_target=other.rsync_target,
                                   gpg_key=other.gpg_key or self.binhost.gpg_key)

    def drone(self, name: str) -> DroneSettings:
        """The [drones.NAME] settings; ConfigError for a drone the config does not name."""
        try:
            return self.drones[name]
        except KeyError:
            raise ConfigError(f"unknown drone '{name}': add a [drones.{name}] table to "
                              f"{self.path}") from None

    def binhost_of(self, profile: str) -> str:
        """The name of the binhost PROFILE publishes to."""
        return self.profiles[profile].binhost if profile in self.profiles else DEFAULT

    def for_binhost(self, name: str) -> Config:
        """This config with binhost NAME as [binhost] (swarm-sync publishes one at a time)."""
        return dataclasses.replace(self, binhost=self.binhost_named(name))

    def for_profile(self, name: str) -> Config:
        """This config as profile NAME's scan sees it: its command, environment and binhost."""
        if name not in self.profile_names():
            raise ConfigError(f"{self.path}: no profile '{name}' (profiles: "
                              f"{', '.join(self.profile_names())})")
        entry = self.profiles.get(name)
        if entry is None:
            return self
        command = list(self.scan.command)
        if entry.sets:
            command = [word for word in command if not word.startswith("@")] + entry.sets
        environment = {**self.scan.environment, **entry.environment}
        if entry.config_root:
            environment["PORTAGE_CONFIGROOT"] = entry.config_root
        scan = dataclasses.replace(self.scan, command=command, environment=environment)
        return dataclasses.replace(self, scan=scan, binhost=self.binhost_named(entry.binhost),
                                   profile=name)

    def to_dict(self) -> dict:
        """The effective values as plain data (sections in schema order)."""
        data: dict = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        for name in NAMED_TABLES:
            data[name] = {k: dataclasses.asdict(v) for k, v in getattr(self, name).items()}
        for name in ARRAYS_OF_TABLES:
            data[name] = [dataclasses.asdict(v) for v in getattr(self, name)]
        return data

    def digest(self) -> str:
        """A hash of the effective config, so drones can report which one they run."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
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
    return from_text(_read(path), path, os.environ if environ is None else environ)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; create one with 'swarm-config init --dir DIR' "
            "and point --config or SWARM_CONFIG at it") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


def from_text(text: str, path: Path, environ) -> Config:
    """Validate TOML text as the config at PATH (relative paths are taken from there)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = set(SECTIONS) | set(NAMED_TABLES) | set(ARRAYS_OF_TABLES)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown section or key '{min(unknown)}'")
    base = path.parent.resolve()
    values: dict = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{name}' must be a table ([{name}])")
        values[name] = _table(cls, table, name, path, base, environ)
    for name, cls in NAMED_TABLES.items():
        tables = raw.get(name, {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{path}: '{name}' must be a table of [{name}.NAME] tables")
        values[name] = {}
        for entry, table in tables.items():
            if not _DRONE_NAME.match(entry) or entry in _RESERVED_NAMES:
                raise ConfigError(
                    f"{path}: name '{name}.{entry}' must be lower-case letters, digits, '.', "
                    f"'_' or '-' (and not {' or '.join(sorted(_RESERVED_NAMES))})")
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: '{name}.{entry}' must be a table")
            values[name][entry] = _table(cls, table, f"{name}.{entry}", path, base, {})
    for name, cls in ARRAYS_OF_TABLES.items():
        tables = raw.get(name, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{path}: '{name}' must be an array of tables ([[{name}]])")
        values[name] = [_table(cls, t, f"{name}[{i}]", path, base, {})
                        for i, t in enumerate(tables)]
    config = Config(path=path, **values)
    _check_together(config)
    return config


def _check_together(config: Config) -> None:
    # Profiles publish to binhosts that exist, each in a directory of its own.
    if DEFAULT in config.binhosts:
        raise ConfigError(f"{config.path}: [binhosts.{DEFAULT}] is [binhost]; name it otherwise")
    for name, entry in config.profiles.items():
        if entry.binhost not in config.binhost_names():
            raise ConfigError(f"{config.path}: 'profiles.{name}.binhost' is '{entry.binhost}', "
                              f"not one of {', '.join(config.binhost_names())}")
    seen: dict[str, str] = {}
    for name in config.binhost_names():
        where = config.binhost_named(name).path
        if where in seen:
            raise ConfigError(f"{config.path}: binhosts {seen[where]} and {name} both have path "
                              f"{where}; two binhosts need two directories")
        seen[where] = name
    # Invariants between keys: a drone beating less often than its lease
    # lasts would lose every long build.
    d = config.delegate
    if d.heartbeat_seconds >= d.lease_seconds:
        raise ConfigError(
            f"{config.path}: 'delegate.heartbeat_seconds' ({d.heartbeat_seconds}) must be "
            f"shorter than 'delegate.lease_seconds' ({d.lease_seconds}), or leases of "
            "building drones expire")
    # An idle drone is heard from at least every idle_max_seconds (+25 % jitter).
    if d.online_seconds < 1.5 * d.idle_max_seconds:
        raise ConfigError(
            f"{config.path}: 'delegate.online_seconds' ({d.online_seconds}) must be at least "
            f"1.5 x 'delegate.idle_max_seconds' ({d.idle_max_seconds}), or idle drones that "
            "wait their longest show as offline")
    if d.poll_seconds > d.idle_max_seconds:
        raise ConfigError(
            f"{config.path}: 'delegate.poll_seconds' ({d.poll_seconds}) must not be longer "
            f"than 'delegate.idle_max_seconds' ({d.idle_max_seconds})")


def schema(cls: type) -> list[dataclasses.Field]:
    """The keys of one section (dataclass fields, in order)."""
    return list(dataclasses.fields(cls))


def kind_of(f: dataclasses.Field) -> str:
    """path, str, int, bool, list, env or choice."""
    if f.metadata["kind"]:
        return f.metadata["kind"]
    return {"str": "str", "int": "int", "bool": "bool", "list": "list", "dict": "env",
            "float": "float"}[str(f.type)]


def _table(cls: type, table: dict, section: str, path: Path, base: Path, environ) -> object:
    fields = {f.name: f for f in schema(cls)}
    unknown = set(table) - set(fields)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{section}.{min(unknown)}'")
    out: dict = {}
    # Keys without a {reference} first, so defaults like "{state_dir}/x" resolve.
    order = sorted(fields.values(), key=lambda f: "{" in str(_default(f)))
    for f in order:
        kind, name = kind_of(f), f"{section}.{f.name}"
        env_name = f"SWARM_{section}_{f.name}".upper().replace(".", "_").replace("-", "_")
        if f.metadata["environ"] and env_name in environ and kind in ("path", "str", "int", "bool",
                                                                       "float"):
            value = _from_env(environ[env_name], kind, env_name)
            where = f"environment variable {env_name}"
        elif f.name in table:
            value = _check_type(table[f.name], kind, name, path)
            where = f"{path}: '{name}'"
        else:
            default = _default(f)
            value = default.format(**out) if isinstance(default, str) else default
            where = f"default of '{name}'"
        _check_value(value, f, where)
        if kind == "path" and value:
            value = str((base / os.path.expanduser(value)).resolve())
        out[f.name] = value
    return cls(**out)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


_KIND_WORDS = {
    "path": "a path string",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
    "env": "a table of strings",
}


def _check_type(value, kind: str, name: str, path: Path):
    if kind == "choice":
        return value  # checked with the choices
    expected = {"path": str, "str": str, "int": int, "bool": bool, "list": list, "env": dict,
                "float": (int, float)}[kind]
    if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
        raise ConfigError(
            f"{path}: '{name}' must be {_KIND_WORDS[kind]}, not {type(value).__name__} {value!r}")
    if kind == "list" and not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: '{name}' must be a list of strings")
    if kind == "env" and not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{path}: '{name}' must map names to strings")
    return float(value) if kind == "float" else value


def _check_value(value, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(meta['choices'])}, not {value!r}")
    if isinstance(value, str) and "\0" in value:
        raise ConfigError(f"{where} holds a NUL character")
    if meta["required"] and not value:
        raise ConfigError(f"{where} must not be empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = meta["minimum"] if meta["minimum"] is not None else -INT_MAX
        if not low <= value <= meta["maximum"]:
            raise ConfigError(f"{where} must be between {low} and {meta['maximum']}, not {value}")


def _from_env(text: str, kind: str, name: str):
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"environment variable {name} must be true or false, not {text!r}")
        return text.lower() in ("true", "1", "yes")
    if kind not in ("int", "float"):
        return text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be {_KIND_WORDS[kind]}, "
                          f"not {text!r}") from None


def help_lines() -> list[str]:
    """Each section and its keys, for swarm-config --help (generated from the schema)."""
    lines = []
    for name, cls in [*SECTIONS.items(), *NAMED_TABLES.items(), *ARRAYS_OF_TABLES.items()]:
        label = (f"[{name}.NAME]" if name in NAMED_TABLES else
                 f"[[{name}]]" if name in ARRAYS_OF_TABLES else f"[{name}]")
        lines.append(f"  {label:<16} " + " ".join(f.name for f in schema(cls)))
    return lines


def reference_table() -> str:
    """Every key with its default and help, as the README's Markdown table."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, cls in [*SECTIONS.items(), *NAMED_TABLES.items(), *ARRAYS_OF_TABLES.items()]:
        prefix = f"{name}.NAME" if name in NAMED_TABLES else name
        for f in schema(cls):
            default = _default(f)
            shown = "" if default in ("", [], {}) else f"`{_toml_value(default)}`"
            extra = []
            if f.metadata["minimum"] is not None:
                extra.append(f"at least {f.metadata['minimum']}")
            if f.metadata["choices"]:
                extra.append("one of " + ", ".join(f.metadata["choices"]))
            meaning = f.metadata["help"] + (f" ({'; '.join(extra)})" if extra else "")
            rows.append(f"| `{prefix}.{f.name}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


def render_toml(data: dict, with_help: bool = False) -> str:
    """Write config data as TOML; with_help puts each key's help above it as a comment."""
    lines: list[str] = []

    def table(header: str, cls: type | None, values: dict) -> None:
        helps = {f.name: f.metadata["help"] for f in schema(cls)} if cls and with_help else {}
        lines.append(header)
        nested = []
        for name, value in values.items():
            if isinstance(value, dict):
                nested.append((name, value))
                continue
            if name in helps:
                lines.append(f"# {helps[name]}")
            lines.append(f"{_toml_key(name)} = {_toml_value(value)}")
        inner = header.strip("[]")
        for name, value in nested:
            lines.append("")
            if name in helps:
                lines.append(f"# {helps[name]}")
            lines.append(f"[{inner}.{_toml_key(name)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        lines.append("")

    for section, values in data.items():
        if section in NAMED_TABLES:
            for entry, entry_values in values.items():
                table(f"[{section}.{_toml_key(entry)}]", NAMED_TABLES[section], entry_values)
        elif section in ARRAYS_OF_TABLES:
            for entry_values in values:
                table(f"[[{section}]]", ARRAYS_OF_TABLES[section], entry_values)
        else:
            table(f"[{section}]", SECTIONS.get(section), values)
    return "\n".join(lines)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_value(name)


def _toml_value(value) -> str:
    # JSON strings, integers, booleans and arrays of strings are valid TOML,
    # but for DEL, which TOML wants escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def edit(path: Path, changes: dict) -> Config:
    """Merge CHANGES (nested dicts; None removes a key) into the file and rewrite it.

    What is written must load: nothing is changed otherwise. The file is
    rewritten in canonical form (its own comments are not kept).
    """
    raw = tomllib.loads(_read(path))
    merge(raw, changes)
    text = render_toml(raw, with_help=True)
    config = from_text(text, path, {})
    write_atomic(path, text)
    return config


def merge(target: dict, changes: dict) -> None:
    """Merge nested CHANGES into TARGET (None removes a key)."""
    for name, value in changes.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict) and isinstance(target.get(name), dict):
            merge(target[name], value)
        else:
            target[name] = value


def parse_assignment(text: str) -> dict:
    """'section.key=VALUE' as nested changes for edit(); VALUE is TOML, else a string."""
    name, sep, value_text = text.partition("=")
    parts = name.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"'{text}': write SECTION.KEY=VALUE, e.g. delegate.lease_seconds=600")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    changes: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        changes = {part: changes}
    return changes


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
            "command": _default(Scan.__dataclass_fields__["command"]),
            "environment": dict(scan_environment or {}),
        },
    }
    text = ("# swarmtools config written by 'swarm-config init'; see 'swarm-config --help'.\n"
            + render_toml(data, with_help=True)
            + "# One table a drone, e.g. (swarm-config set drones.d1.transport=ssh):\n"
              "# [drones.d1]\n# host = \"d1.example.org\"\n# transport = \"ssh\"\n")
    from_text(text, path, {})  # what we write must load
    write_atomic(path, text)
    return path
