"""The loopback sshd helper (tests/sshd.py) really serves forced commands over ssh and rsync."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import sshd
from sshd import SshServer, generate_key, start_sshd

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

RECORD_SCRIPT = """#!/bin/sh
# Forced command: keep what the client asked for.
printf '%s' "$SSH_ORIGINAL_COMMAND" > {out}
"""

RSYNC_SCRIPT = """#!/bin/sh
# Forced command: log what the client asked for, then serve it inside {root}.
set -f
printf '%s\\n' "$SSH_ORIGINAL_COMMAND" >> {log}
cd {root} || exit 1
eval "exec $SSH_ORIGINAL_COMMAND"
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("sshd")
    ns = type("Env", (), {})()
    ns.base = base
    ns.recorded = base / "recorded"
    ns.rsync_log = base / "rsync-commands.log"
    ns.rsync_root = base / "rsync-root"
    ns.rsync_root.mkdir()
    ns.quoted = base / "quoted"
    ns.env_dump = base / "env-dump"
    clients = {
        # Double quotes in the command must survive authorized_keys quoting.
        "quoted": f'/bin/sh -c "printf %s \\"$SSH_ORIGINAL_COMMAND\\" > {ns.quoted}"',
        "env": f"/usr/bin/env > {ns.env_dump}",
        "rec": _script(base / "record.sh", RECORD_SCRIPT.format(out=shlex.quote(str(ns.recorded)))),
        "rs": _script(base / "rsync.sh", RSYNC_SCRIPT.format(log=shlex.quote(str(ns.rsync_log)),
                                                            root=shlex.quote(str(ns.rsync_root)))),
    }
    server = start_sshd(base / "server", clients)
    ns.server = server
    yield ns
    server.stop()
    assert server.process.poll() is not None


def _ssh(server: SshServer, name: str, *command: str, key: Path | None = None):
    argv = server.ssh_command(name)
    if key is not None:
        argv[argv.index("-i") + 1] = str(key)
    return subprocess.run([*argv, server.destination, *command], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=30)


def test_server_is_up(env):
    server = env.server
    assert server.process.poll() is None
    assert server.destination.endswith("@127.0.0.1")
    assert f"[127.0.0.1]:{server.port} ssh-ed25519 " in server.known_hosts.read_text()
    assert server.client_key("rec").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(KeyError):
        server.client_key("nobody")


def test_forced_command_sees_original_command(env):
    env.recorded.unlink(missing_ok=True)
    result = _ssh(env.server, "rec", "anything", "here")
    assert result.returncode == 0, result.stderr + env.server.log_text()
    assert env.recorded.read_text() == "anything here"


def test_double_quotes_in_forced_command(env):
    line = (env.server.log.parent / "authorized_keys").read_text().splitlines()[0]
    assert line.startswith(r'command="/bin/sh -c \"printf %s \\"$SSH_ORIGINAL_COMMAND\\" > ')
    result = _ssh(env.server, "quoted", "quoted words")
    assert result.returncode == 0, result.stderr + env.server.log_text()
    assert env.quoted.read_text() == "quoted words"


def test_forced_command_environment(env):
    """sshd's own PATH, not one rewritten by the login user's ~/.bashrc."""
    result = _ssh(env.server, "env", "some", "request")
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in env.env_dump.read_text().splitlines() if "=" in line)
    assert seen["SSH_ORIGINAL_COMMAND"] == "some request"
    assert seen["SSH_CONNECTION"].startswith("127.0.0.1 ")
    assert all(d.startswith(("/usr/", "/bin", "/sbin")) for d in seen["PATH"].split(":")), seen["PATH"]


def test_unknown_key_is_refused(env, tmp_path):
    stranger = generate_key(tmp_path / "stranger")
    env.recorded.unlink(missing_ok=True)
    result = _ssh(env.server, "rec", "sneaky", key=stranger)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert not env.recorded.exists()


def test_forced_command_cannot_be_bypassed_by_other_client_key(env):
    """The 'rs' key runs the rsync script, never the record script."""
    env.recorded.unlink(missing_ok=True)
    result = _ssh(env.server, "rs", "true")
    assert result.returncode == 0, result.stderr
    assert not env.recorded.exists()


RSYNC_CASES = [
    ["-rt", "--partial"],
    ["-t"],
    ["-rt"],
    ["-t", "--partial"],
    ["-t", "--chmod=F644"],
    ["-rt", "--partial", "--chmod=F644"],
]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
@pytest.mark.parametrize("flags", RSYNC_CASES, ids=" ".join)
def test_rsync_goes_through_forced_command(env, tmp_path, flags):
    source = tmp_path / "payload.bin"
    source.write_bytes(b"swarm" * 1000)
    dest_dir = env.rsync_root / "rel"
    shutil.rmtree(dest_dir, ignore_errors=True)
    dest_dir.mkdir()
    env.rsync_log.unlink(missing_ok=True)

    remote_shell = shlex.join(env.server.ssh_command("rs"))
    result = subprocess.run(["rsync", *flags, "-e", remote_shell, str(source),
                             f"{env.server.destination}:rel/path"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr + env.server.log_text()
    assert (dest_dir / "path").read_bytes() == source.read_bytes()

    sent = env.rsync_log.read_text().splitlines()
    assert len(sent) == 1, sent
    print(f"rsync {' '.join(flags)} -> SSH_ORIGINAL_COMMAND={sent[0]!r}")
    assert re.fullmatch(r"rsync --server -[A-Za-z]*e\.[A-Za-z]+( --\S+)* \. rel/path", sent[0]), sent[0]
    # --partial travels to the server; --chmod is applied by the sending client only.
    assert (" --partial " in sent[0]) == ("--partial" in flags)
    assert "--chmod" not in sent[0]


def test_retries_when_port_is_taken(tmp_path, monkeypatch):
    """sshd losing the race for its port is retried on another port."""
    import socket
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = sshd.free_port
        monkeypatch.setattr(sshd, "free_port", lambda: next(ports, None) or real_free_port())
        server = start_sshd(tmp_path / "server", {"t": "/bin/true"})
        try:
            assert server.port != taken
            assert _ssh(server, "t").returncode == 0
        finally:
            server.stop()


def test_skips_without_openssh(tmp_path, monkeypatch):
    monkeypatch.setattr(sshd, "find_sshd", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="sshd \\(openssh-server\\)"):
        start_sshd(tmp_path, {"x": "/bin/true"})
