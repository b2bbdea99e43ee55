"""What every command shares: one line for every error, its exit code, the log file."""

import json
import subprocess

import pytest
from conftest import one_line_error, script

# Every command that reads the config, with the arguments it needs to get that far.
COMMANDS = [
    ("swarm-config", "show"), ("swarm-config", "check"), ("swarm-config", "binrepos"),
    ("swarm-config", "set", "delegate.lease_seconds=600"),
    ("swarm-fresh", "--from", "/dev/null"), ("swarm-status",), ("swarm-sync",),
    ("swarm-delegate", "heartbeat", "--drone", "d1"), ("swarm-delegate", "claim", "--drone", "d1"),
    ("swarm-delegate", "report", "--drone", "d1", "a/b-1", "--failed"),
    ("swarm-delegate", "release", "--drone", "d1", "a/b-1"), ("swarm-delegate", "expire"),
    ("swarm-delegate", "gateway", "--drone", "d1"), ("swarm-drone", "--drone", "d1", "--once"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_config_is_one_line_and_exit_2(swarm, tmp_path, command):
    r = swarm.run(*command, "--config", str(tmp_path / "nope.toml"), input="")
    assert r.returncode == 2, r.stderr
    one_line_error(r, command[0])
    assert "not found" in r.stderr


@pytest.mark.parametrize("args", [("--bogus",), ("--config",), ("--json", "extra-argument")])
def test_click_usage_errors_are_one_line_too(swarm, args):
    r = swarm.run("swarm-status", *args)
    assert r.returncode == 2
    one_line_error(r, "swarm-status")


def test_a_usage_error_inside_a_command_is_logged(swarm):
    swarm.run("swarm-fresh", "-q", "--from", "/dev/null")
    r = swarm.run("swarm-delegate", "report", "--drone", "local", "a/b-1", "--ok", "--failed")
    assert r.returncode == 2 and "say --ok or --failed" in r.stderr
    one_line_error(r, "swarm-delegate")
    log = (swarm.root / "state" / "swarm.log").read_text()
    assert r.stderr.strip() in log


def test_an_os_error_is_one_line_and_logged(swarm):
    swarm.run("swarm-fresh", "-q", "--from", "/dev/null")
    r = swarm.run("swarm-fresh", "--from", str(swarm.root))  # a directory
    assert r.returncode in (1, 2)
    one_line_error(r, "swarm-fresh")
    assert "directory" in r.stderr.lower()


@pytest.mark.parametrize("command", [("swarm-status",), ("swarm-config", "show"),
                                     ("swarm-delegate", "expire"), ("swarm-sync",)])
def test_json_is_one_object(swarm, command):
    assert swarm.run("swarm-fresh", "-q", "--from", "/dev/null").returncode in (0, 1)
    swarm.run("swarm-fresh", "-q", "--force", "--from", "-",
              input="Total: 0 packages, Size of downloads: 0 KiB\n")
    r = swarm.run(*command, "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)


def test_piping_into_head_ends_quietly(swarm):
    r = subprocess.run(f"{script('swarm-config')} show | head -1", shell=True, env=swarm.env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("#")
