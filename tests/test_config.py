"""swarm-config and the config loader: one file, clear errors, precedence."""

import json
import sqlite3

import pytest

from swarmtools import config as config_mod
from swarmtools import db, packages
from swarmtools.errors import ConfigError


def test_init_writes_a_config_that_checks_and_shows(swarm):
    assert swarm.run("swarm-config", "check").returncode == 0
    shown = swarm.run("swarm-config", "show", "--json")
    data = json.loads(shown.stdout)
    assert data["orchestrator"]["database"] == str(swarm.db)
    assert data["drones"] == {"local": {"host": "localhost", "transport": "local", "speed": 0.0,
                                        "features": [], "mandatory_features": [],
                                        "ssh_command": [], "environment": {},
                                        "check_command": [],
                                        "sync_command": ["emerge", "--sync"],
                                        "isolation": "overlay", "build_root": ""}}
    assert data["file"] == str(swarm.config)
    # The human form is TOML that loads back to the same values.
    text = swarm.run("swarm-config", "show").stdout
    copy = swarm.root / "copy.toml"
    copy.write_text(text)
    assert config_mod.load(copy).to_dict() == config_mod.load(swarm.config).to_dict()


def test_init_names_no_drone_that_would_never_come_online(tmp_path):
    path = config_mod.init(tmp_path / "new")
    assert config_mod.load(path, environ={}).drones == {}
    assert "# [drones.d1]" in path.read_text()


def test_init_refuses_to_overwrite(swarm):
    r = swarm.run("swarm-config", "init", "--dir", str(swarm.root))
    assert r.returncode == 2 and "already exists" in r.stderr


@pytest.mark.parametrize("text, key", [
    ("[orchestrator]\nstat_dir = '/x'\n", "orchestrator.stat_dir"),
    ("[bogus]\n", "bogus"),
    ("[delegate]\nlease_seconds = 'soon'\n", "delegate.lease_seconds"),
    ("[delegate]\nlease_seconds = true\n", "delegate.lease_seconds"),
    ("[scan]\ncommand = 'emerge -pe @world'\n", "scan.command"),
    ("[drones.d1]\ntransport = 'carrier-pigeon'\n", "drones.d1.transport"),
    ("[drones.d1]\ncolour = 'red'\n", "drones.d1.colour"),
    ("[drones.'Bad Name']\n", "drones.Bad Name"),
    ("[orchestrator\n", "TOML"),
])
def test_bad_config_names_key_and_file(swarm, text, key):
    swarm.config.write_text(text)
    for args in (["swarm-config", "show"], ["swarm-fresh", "--from", "/dev/null"], ["swarm-status"]):
        r = swarm.run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr  # one line
        assert key in r.stderr and str(swarm.config) in r.stderr
        assert r.stderr.startswith(f"{args[0]}: error: ")


def test_missing_config_file(swarm, tmp_path):
    r = swarm.run("swarm-status", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "not found" in r.stderr and "swarm-config init" in r.stderr


def test_check_reports_missing_paths(swarm, tmp_path):
    swarm.config.write_text(
        f"[orchestrator]\nstate_dir = '{tmp_path}/gone'\n[scan]\ncommand = ['no-such-emerge']\n")
    r = swarm.run("swarm-config", "check")
    assert r.returncode == 2
    assert "orchestrator.state_dir" in r.stderr and "no-such-emerge" in r.stderr


def test_precedence_flag_env_file_default(swarm, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text("[delegate]\nlease_seconds = 600\n[binhost]\npath = 'bh'\n")
    loaded = config_mod.load(other, environ={})
    assert loaded.delegate.lease_seconds == 600  # file
    assert loaded.delegate.retry_seconds == 1800  # default
    assert loaded.binhost.path == str(tmp_path / "bh")  # relative to the file
    loaded = config_mod.load(other, environ={"SWARM_DELEGATE_RETRY_SECONDS": "9"})
    assert loaded.delegate.retry_seconds == 9  # environment over default
    loaded = config_mod.load(other, environ={"SWARM_DELEGATE_LEASE_SECONDS": "99"})
    assert loaded.delegate.lease_seconds == 99  # environment over file
    with pytest.raises(ConfigError, match="SWARM_DELEGATE_LEASE_SECONDS"):
        config_mod.load(other, environ={"SWARM_DELEGATE_LEASE_SECONDS": "soon"})
    # The flag wins over $SWARM_CONFIG.
    r = swarm.run("swarm-config", "show", "--json", "--config", str(other))
    assert json.loads(r.stdout)["delegate"]["lease_seconds"] == 600


def test_database_newer_than_the_code_is_refused(swarm):
    conn = sqlite3.connect(swarm.db)
    conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    conn.close()
    for args in (["swarm-status"], ["swarm-fresh", "--from", "/dev/null"]):
        r = swarm.run(*args)
        assert r.returncode == 2 and "newer than this swarmtools" in r.stderr, r.stderr


def test_migrations_bring_a_new_database_to_the_current_version(tmp_path):
    conn = db.connect(tmp_path / "s.db", create=True)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    conn = db.connect(tmp_path / "s.db")  # idempotent on reopen
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION


def test_history_is_append_only(tmp_path):
    conn = db.connect(tmp_path / "s.db", create=True)
    with db.write(conn):
        packages.record(conn, None, "note", "test", "2026-01-01T00:00:00+00:00", None, None, "x")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.write(conn):
        conn.execute("UPDATE events SET detail = 'y'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.write(conn):
        conn.execute("DELETE FROM events")
    assert conn.execute("SELECT detail FROM events").fetchall()[0][0] == "x"


def test_render_says_what_a_drone_and_a_client_must_have(swarm):
    from swarmtools.config import edit

    edit(swarm.config, {"drones": {"local": {"environment": {"MAKEOPTS": "-j3"}}}})
    r = swarm.run("swarm-config", "render", "drone", "local")
    assert r.returncode == 0, r.stderr
    assert "#   PKGDIR DISTDIR" in r.stdout  # the host-local values it keeps of its own
    assert 'PORTAGE_BINHOST="http://127.0.0.1:8080"' in r.stdout
    assert "#   MAKEOPTS=-j3" in r.stdout and "sync-uri = http://127.0.0.1:8080" in r.stdout
    r = swarm.run("swarm-config", "render", "client")
    assert r.returncode == 0, r.stderr
    assert "getbinpkg" in r.stdout and "verify-signature = false" in r.stdout
    r = swarm.run("swarm-config", "render", "drone", "d9")
    assert r.returncode == 2
    assert r.stderr == (f"swarm-config: error: unknown drone 'd9': add a [drones.d9] table to "
                        f"{swarm.config}\n")
