"""Shared fixtures: a private config and database per test, console-script runner."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# The project's shared/ folder lies beside the checkout (CI lays a copy there).
SHARED = Path(os.environ.get("SWARM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
EMERGE_DATA = SHARED / "data" / "emerge"
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


class Swarm:
    """One test's swarm: config file, database path, and a way to run commands."""

    def __init__(self, root: Path, scan_env: dict[str, str] | None = None):
        self.root = root
        env_args = [f"--scan-env={k}={v}" for k, v in (scan_env or {}).items()]
        out = subprocess.run([script("swarm-config"), "init", "--dir", str(root), *env_args],
                             capture_output=True, text=True, check=True)
        self.config = Path(out.stdout.strip())
        self.db = root / "state" / "swarm.db"
        self.env = {**os.environ, "SWARM_CONFIG": str(self.config),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}

    def run(self, *args: str, input: str | bytes | None = None, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run swarm-NAME ARGS... as the user would, capturing its output."""
        name, *rest = args
        return subprocess.run([script(name), *rest], input=input, env=env or self.env,
                              capture_output=True, text=not isinstance(input, bytes), **kw)

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
    """A fresh single-host swarm under tmp_path; SWARM_CONFIG points at it."""
    s = Swarm(tmp_path / "swarm")
    monkeypatch.setenv("SWARM_CONFIG", str(s.config))
    return s


def emerge_files() -> list[Path]:
    """Every real emerge output in shared/data/emerge."""
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
