"""Shared fixtures: a private config and database per test, console-script runner."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from swarmtools.samples import synthetic_scan  # noqa: F401 - tests import it from here

DATA = Path(__file__).resolve().parent / "data"  # real data, provenance in data/README.md
EMERGE_DATA = DATA / "emerge"
BIN = Path(sys.executable).parent  # the venv the tests run in holds the console scripts


def script(name: str) -> str:
    """Path of an installed console script; fail loudly if the package is not installed."""
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.fail(f"{name} is not installed: run 'make test' (pip install -e .[test])")
        return found
    return str(path)


def promtool_check(text: str) -> str:
    """What `promtool check metrics` says of TEXT ("" when clean); skip where promtool is missing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus; scripts/system-deps installs it)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip() or ("" if r.returncode == 0 else f"exit {r.returncode}")


def one_line_error(r: subprocess.CompletedProcess, prog: str, logged: Path | None = None) -> None:
    """The command failed with one line, PROG: error: ..., no traceback (and logged)."""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"{prog}: error: "), r.stderr
    assert "Traceback" not in r.stderr
    if logged is not None:
        assert r.stderr.strip() in logged.read_text(), "the error is not in the log file"


class Swarm:
    """One test's swarm: config file, database path, and a way to run commands."""

    def __init__(self, root: Path, scan_env: dict[str, str] | None = None):
        from swarmtools.config import edit, init

        # What swarm-config init writes (its own tests run the command).
        self.config = init(root, scan_env)
        # Tests start swarm-sync and swarm-resolve themselves, when they mean to
        # (most scans are saved ones of trees that are not here to resolve).
        edit(self.config, {"binhost": {"publish_on_report": False}, "scan": {"resolve": False}})
        self._paths(root)

    def _paths(self, root: Path) -> None:
        self.root = root
        self.config = root / "swarm.toml"
        self.db = root / "state" / "swarm.db"
        self.log = root / "state" / "swarm.log"
        self.env = {**os.environ, "SWARM_CONFIG": str(self.config),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

    def run(self, *args: str, input: str | bytes | None = None, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run swarm-NAME ARGS... as the user would, capturing its output."""
        name, *rest = args
        return subprocess.run([script(name), *rest], input=input, env=env or self.env,
                              capture_output=True, text=not isinstance(input, bytes), **kw)

    def scan(self, text: str | None = None, source: Path | str | None = None,
             resolve: bool | None = None) -> None:
        """Fill the queue as `swarm-fresh -q [--from SOURCE] [--resolve]` does, in this
        process: for tests whose subject comes after the scan (the command's own exit
        codes and output are tested in test_fresh.py, test_commands.py, test_profiles.py).
        TEXT: a saved scan; neither it nor SOURCE: the real emerge. Raises what fails."""
        from swarmtools import clock, db, scan
        from swarmtools.config import load

        if text is not None:
            source = self.root / "scan.txt"
            source.write_text(text)
        source = None if source is None else str(source)
        config = load(self.config, environ=self.env)
        request = scan.Request(scan.profiles_to_scan(config, [], source, False), source,
                               resolve=config.scan.resolve if resolve is None else resolve)
        conn = db.connect(config.database, create=True)
        try:
            scan.run(config, conn, request, clock.utcnow)
        finally:
            conn.close()

    def verb(self, verb: str, drone: str, input: str | None = None, **options) -> list[dict]:
        """`swarm-delegate VERB --drone DRONE --json` in this process (verbs.run, which the
        command and the gateway run): its JSON answers. For tests whose subject is the
        queue's answer; the commands are tested in test_delegate.py and test_gateway.py."""
        import io

        from swarmtools import verbs
        from swarmtools.config import load

        out = io.StringIO()
        verbs.run(verb, load(self.config, environ=self.env), drone, as_json=True,
                  stdin=io.StringIO(input or ""), out=out, **options)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def sync(self, *args: str, timeout: float = 120.0, **kw) -> subprocess.CompletedProcess:
        """swarm-sync -q as cron runs it, again while another run holds the lock (exit 75):
        in a DroneSwarm with PUBLISH a report starts one in the background, which may still
        be running when the test publishes."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            r = self.run("swarm-sync", "-q", *args, **kw)
            if r.returncode != 75 or time.monotonic() > deadline:
                return r
            time.sleep(0.2)

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read the database directly (tests only)."""
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def dump(self) -> list[tuple]:
        """Every package row and event, to prove a command changed nothing."""
        if not self.db.exists():
            return []
        return self.query("SELECT * FROM packages ORDER BY id") + self.query(
            "SELECT * FROM events ORDER BY id") + self.query("SELECT * FROM scans ORDER BY id")


@pytest.fixture
def swarm(tmp_path, monkeypatch) -> Swarm:
    """A fresh single-host swarm under tmp_path with a drone 'local'; SWARM_CONFIG points at it."""
    s = Swarm(tmp_path / "swarm")
    add_drones(s.config, {"local": {"host": "localhost", "transport": "local"}})
    monkeypatch.setenv("SWARM_CONFIG", str(s.config))
    return s


def emerge_files() -> list[Path]:
    """Every real emerge output in tests/data/emerge."""
    files = sorted(EMERGE_DATA.glob("*.txt"))
    assert files, f"no emerge outputs found under {EMERGE_DATA}"
    return files


@pytest.fixture
def prefix(tmp_path):
    """A throw-away Portage prefix holding the example repository (real emerge)."""
    pytest.importorskip("portage")  # the PyPI wheel, from the test extra
    from swarmtools.prefix import create_prefix

    return create_prefix(tmp_path / "prefix")


@pytest.fixture
def emerge_swarm(tmp_path, prefix, monkeypatch) -> Swarm:
    """A swarm whose scan runs the real emerge inside `prefix`."""
    s = Swarm(tmp_path / "swarm", scan_env=prefix.env_overrides())
    monkeypatch.setenv("SWARM_CONFIG", str(s.config))
    return s


def add_drones(config_path: Path, drones: dict[str, dict]) -> None:
    """Replace the [drones.*] tables of a config written by swarm-config init."""
    from swarmtools.config import edit

    edit(config_path, {"drones": None})
    edit(config_path, {"drones": drones})


class DroneSwarm(Swarm):
    """A swarm whose scan and drones each run the real emerge in their own prefix."""

    def __init__(self, root: Path, drones=("d1", "d2"), extra_ebuilds: dict[str, str] | None = None,
                 world: list[str] | None = None, delegate: dict | None = None,
                 transport: dict[str, dict] | None = None, publish: bool = False):
        """PUBLISH: serve the binhost over HTTP and start swarm-sync after every report,
        as a real swarm does (drones then install dependencies as binaries); stop()."""
        from swarmtools.prefix import EXAMPLE_WORLD, create_prefix

        world = world or EXAMPLE_WORLD.read_text().split()
        self.prefixes = {}
        for name in ("orchestrator", *drones):
            prefix = create_prefix(root / f"prefix-{name}", world=world)
            for path, text in (extra_ebuilds or {}).items():
                (prefix.repo / path).parent.mkdir(parents=True, exist_ok=True)
                (prefix.repo / path).write_text(text)
            self.prefixes[name] = prefix
        super().__init__(root / "swarm", scan_env=self.prefixes["orchestrator"].env_overrides())
        settings = {name: {"transport": "local", **(transport or {}).get(name, {}),
                           "environment": self.prefixes[name].env_overrides()} for name in drones}
        add_drones(self.config, settings)
        from swarmtools.config import edit

        # Idle drones ask again within seconds: tests add work while drones wait.
        delegate = {"poll_seconds": 1, **(delegate or {})}
        edit(self.config, {"delegate": {"idle_max_seconds": max(4, delegate["poll_seconds"]),
                                        **delegate}})
        self.http = None
        if publish:
            self.http = HttpServer(self.root / "binhost")
            edit(self.config, {"binhost": {"publish_on_report": True, "url": self.http.url}})

    @classmethod
    def attach(cls, root: Path, drones=("d1", "d2")) -> DroneSwarm:
        """The DroneSwarm made under ROOT (by another process, say), changing nothing."""
        from swarmtools.prefix import open_prefix

        swarm = cls.__new__(cls)
        swarm._paths(root / "swarm")
        swarm.prefixes = {name: open_prefix(root / f"prefix-{name}")
                          for name in ("orchestrator", *drones)}
        swarm.http = None
        return swarm

    def stop(self) -> None:
        """Stop the binhost's web server, if any."""
        if self.http:
            self.http.stop()

    def drone(self, name: str, *args: str, **kw) -> subprocess.Popen:
        """Start swarm-drone for NAME in its own process group."""
        return subprocess.Popen([script("swarm-drone"), "--drone", name, *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kw)

    def wait_for(self, sql: str, params=(), timeout: float = 60.0):
        """Poll the database until SQL returns a row."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query(sql, params) if self.db.exists() else []
            if rows:
                return rows
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {sql}")


def tree_digest(root: Path, leave_out: list[Path] = ()) -> dict[str, list]:
    """Every file, directory and link under ROOT with its mode, size and content (or target),
    but what is under LEAVE_OUT: what a build must not change."""
    skip = {Path(p).resolve() for p in leave_out}
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(directory, d).resolve() not in skip]
        for name in sorted(dirs + files):
            path = Path(directory, name)
            info = path.lstat()
            if path.is_symlink():
                content = os.readlink(path)
            elif path.is_file():
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            found[str(path.relative_to(root))] = [info.st_mode, info.st_size if content else 0,
                                                  content]
    return found


def build_root_digest(prefix) -> dict[str, list]:
    """A drone prefix as its builds must leave it: all but what the drone passes through
    (PKGDIR, DISTDIR) and its work directory (profile bundles, the builds' layers)."""
    return tree_digest(prefix.root, [prefix.pkgdir, prefix.root / "var/cache/distfiles",
                                     prefix.root / "var/tmp/swarmtools"])


def drone_emerge_log(prefix, name: str) -> str:
    """What a drone's builds logged to emerge.log (kept by the drone: builds run in throw-away
    roots, whose own emerge.log goes with them)."""
    log = prefix.root / "var" / "tmp" / "swarmtools" / name / "emerge.log"
    return log.read_text() if log.exists() else ""


def database_at(path: Path, version: int) -> sqlite3.Connection:
    """A database of schema VERSION, as the code of that time made it (to test a migration)."""
    from swarmtools import db

    conn = sqlite3.connect(path, isolation_level=None)
    for migration in db.MIGRATIONS[:version]:
        if callable(migration):
            migration(conn)
        else:
            for statement in db._statements(migration):
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def ebuild(body: str = "", description: str = "test package") -> str:
    """An EAPI 8 ebuild for the test repository, with extra phase code."""
    return (f'EAPI=8\nDESCRIPTION="{description}"\nHOMEPAGE="https://example.invalid"\n'
            'S="${WORKDIR}"\nLICENSE="MIT"\nSLOT="0"\nKEYWORDS="amd64"\n'
            'src_install() { insinto /usr/share/${P}; doins "${T}/environment"; }\n' + body)


def once_per_run(tmp_path_factory, name: str, make) -> tuple[Path, dict]:
    """A directory MAKE(directory) filled once per test run, however many xdist workers
    ask (the first makes it under a lock in the run's shared temporary directory, the others
    wait), and what MAKE returned (JSON data)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, record = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not record.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a worker failed half-way
            directory.mkdir()
            record.write_text(json.dumps(make(directory)))
    return directory, json.loads(record.read_text())


def _example_world(root: Path) -> dict:
    swarm = DroneSwarm(root, publish=True)
    try:
        swarm.scan(resolve=True)
        # Each drone's system and the host's mounts, as the builds must leave them.
        digests = {n: build_root_digest(swarm.prefixes[n]) for n in ("d1", "d2")}
        mounts = Path("/proc/self/mountinfo").read_text()
        procs = [swarm.drone(name, "--drain") for name in ("d1", "d2")]
        outputs = [p.communicate(timeout=400) for p in procs]
        results = [(p.returncode, *out) for p, out in zip(procs, outputs)]
        if all(p.returncode == 0 for p in procs):  # (else the tests say what the drones said)
            swarm.wait_for("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM packages WHERE"
                           " status != 'synced')", timeout=60)
    finally:
        swarm.stop()
    return {"drone_results": results, "digests": digests, "mountinfo": mounts}


@pytest.fixture(scope="session")
def example_swarm(tmp_path_factory) -> DroneSwarm:
    """Two local drones that built and published the example world with the real emerge
    (about a minute, once per run), each build in its throw-away root: shared by the tests
    that look at such a swarm without changing it. Its drones' (returncode, stdout,
    stderr) are in .drone_results; their build roots' digests and the host's mount table
    before the builds in .before."""
    pytest.importorskip("portage")
    root, made = once_per_run(tmp_path_factory, "example", _example_world)
    swarm = DroneSwarm.attach(root)
    swarm.drone_results = made["drone_results"]
    swarm.before = (made["digests"], made["mountinfo"])
    return swarm


@pytest.fixture(scope="session")
def built_packages(tmp_path_factory) -> Path:
    """A tree of real gpkgs of every example package, laid out as a PKGDIR: the example
    swarm's binhost (its two drones built them, once a run; nothing else writes there)."""
    pytest.importorskip("portage")
    root, made = once_per_run(tmp_path_factory, "example", _example_world)
    assert all(code == 0 for code, *_ in made["drone_results"]), made["drone_results"]
    return root / "swarm" / "binhost"


class HandDrone:
    """Claims and reports in-process (the library's delegate.claim and report_built),
    staging files by hand.

    Stands in for swarm-drone where a test is about what happens after the
    upload (test_drone.py and test_e2e_ssh.py run the real drone); the
    swarm-delegate commands themselves are tested in test_delegate.py,
    test_gateway.py and test_commands.py.
    """

    def __init__(self, swarm: Swarm, pkgdir: Path, name: str = "d1"):
        self.swarm, self.pkgdir, self.name = swarm, pkgdir, name

    # What swarm-drone says of itself with every claim (the example repository's profile).
    FACTS: ClassVar[dict] = {"arch": "amd64", "chost": "x86_64-pc-linux-gnu"}

    def _delegate(self, act):
        from swarmtools import clock, db
        from swarmtools.config import load

        config = load(self.swarm.config)  # (read again: tests change it between calls)
        conn = db.connect(config.database)
        try:
            return act(conn, config, clock.utcnow())
        finally:
            conn.close()

    def claim(self) -> str | None:
        """The CPV the orchestrator hands this drone (its heartbeat riding along), or None."""
        from swarmtools import delegate

        def act(conn, config, now):
            delegate.heartbeat(conn, config, self.name, self.FACTS, now)
            return delegate.claim(conn, config, self.name, now)
        job = self._delegate(act)
        return job["cpv"] if job else None

    def stage(self, cpv: str, source: Path | None = None) -> str:
        category, pf = cpv.split("/")
        if source is None:
            (source,) = self.pkgdir.glob(f"{category}/*/{pf}-*.gpkg.tar")
        relative = f"{category}/{source.parent.name}/{source.name}"
        target = self.swarm.root / "state" / "staging" / self.name / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return relative

    def report(self, cpv: str, relative: str) -> dict:
        """Report CPV built, its file staged at RELATIVE (raises what the orchestrator refuses)."""
        from swarmtools import delegate

        return self._delegate(lambda conn, config, now: delegate.report_built(
            conn, config, self.name, cpv, relative, now))

    def build_all(self) -> list[str]:
        """Claim, stage and report every needed package."""
        done = []
        while cpv := self.claim():
            self.report(cpv, self.stage(cpv))
            done.append(cpv)
        return done


def write_index(binhost: Path, entries: list[dict], chost: str = "x86_64-pc-linux-gnu") -> None:
    """A binhost Packages index listing ENTRIES, in Portage's format (no files behind it)."""
    header = {"CHOST": chost, "PACKAGES": str(len(entries)), "TIMESTAMP": "1700000000",
              "VERSION": "0"}
    blocks = ["".join(f"{k}: {v}\n" for k, v in sorted(header.items()))]
    for entry in entries:
        entry = {"PATH": f"{entry['CPV']}-{entry.get('BUILD_ID', '1')}.gpkg.tar", "SLOT": "0",
                 **entry}
        blocks.append("".join(f"{k}: {v}\n" for k, v in sorted(entry.items())))
    binhost.mkdir(parents=True, exist_ok=True)
    (binhost / "Packages").write_text("\n".join(blocks))


class HttpServer:
    """`python3 -m http.server` on a loopback port: a binhost as clients see it."""

    def __init__(self, directory: Path):
        import re

        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
             "--directory", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port = re.search(r"port (\d+)", self.process.stdout.readline()).group(1)
        self.url = f"http://127.0.0.1:{port}"
        self.log: list[str] = []  # its access log, read as it comes (a full pipe would stall it)
        threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
