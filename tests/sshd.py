"""Run a real OpenSSH server on loopback for end-to-end tests (standard library only).

    server = start_sshd(tmp_path / "sshd", {"d1": "/abs/path/to/forced-command --args"})
    try:
        subprocess.run([*server.ssh_command("d1"), server.destination, "whatever"])
        rsync -e "shlex.join(server.ssh_command('d1'))" FILE root@127.0.0.1:rel/path
    finally:
        server.stop()

Each client name gets its own ed25519 key, and authorized_keys binds that key to
its forced command (``command="...",restrict``), so whatever the client asks for
arrives in the forced command as $SSH_ORIGINAL_COMMAND.  sshd runs with a private
config (nothing from /etc/ssh/sshd_config is read), a private host key and an
absolute AuthorizedKeysFile, so the machine's own ssh setup is never touched.

When sshd, ssh or ssh-keygen is missing, start_sshd() calls pytest.skip with the
reason (CI installs openssh-server and openssh-client).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")
START_TIMEOUT = 10.0   # seconds to wait for sshd to listen
BIND_ATTEMPTS = 5      # free ports to try when sshd cannot bind the one picked
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def _skip(reason: str):
    import pytest  # only needed on machines without OpenSSH
    pytest.skip(reason)


def find_sshd() -> str | None:
    """Absolute path of sshd (it refuses to run from a relative path), or None."""
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin:" + os.environ.get("PATH", ""))
    return os.path.abspath(found) if found else None


def require_openssh() -> tuple[str, str, str]:
    """(sshd, ssh, ssh-keygen) paths, or skip the calling test with a clear reason."""
    sshd, ssh, keygen = find_sshd(), shutil.which("ssh"), shutil.which("ssh-keygen")
    missing = [name for name, path in (("sshd (openssh-server)", sshd), ("ssh (openssh-client)", ssh),
                                       ("ssh-keygen (openssh-client)", keygen)) if not path]
    if missing:
        _skip("end-to-end ssh tests need OpenSSH; not found: " + ", ".join(missing))
    return sshd, ssh, keygen  # type: ignore[return-value]


def make_privsep_dir() -> None:
    """Create /run/sshd, the empty root-owned directory even `sshd -t` wants (tmpfs: gone
    after a boot, and no sshd service runs here to make it)."""
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def generate_key(path: Path, comment: str = "swarmtools-test") -> Path:
    """Create an ed25519 key pair without passphrase at PATH (+ PATH.pub); return PATH."""
    keygen = shutil.which("ssh-keygen")
    if not keygen:
        _skip("end-to-end ssh tests need ssh-keygen (openssh-client)")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path


def authorized_keys_line(command: str, pubkey: str) -> str:
    """`command="<cmd>",restrict <pubkey>` with the command quoted as sshd expects.

    Inside the quotes sshd only unescapes \\" (every other backslash stays literal),
    so a command ending in a backslash or holding a newline cannot be written.
    """
    if "\n" in command or "\r" in command:
        raise ValueError(f"forced command may not contain a newline: {command!r}")
    if command.endswith("\\"):
        raise ValueError(f"forced command may not end with a backslash: {command!r}")
    quoted = command.replace('"', '\\"')
    return f'command="{quoted}",restrict {pubkey.strip()}'


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (sshd may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _login_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class SshServer:
    port: int
    host_key_pub: Path
    known_hosts: Path
    process: subprocess.Popen
    log: Path
    keys: dict[str, Path] = field(default_factory=dict)
    destination: str = "root@127.0.0.1"
    startup_seconds: float = 0.0

    def client_key(self, name: str) -> Path:
        """Private key generated for NAME (ed25519, no passphrase)."""
        try:
            return self.keys[name]
        except KeyError:
            raise KeyError(f"no client {name!r}; known: {sorted(self.keys)}") from None

    def ssh_command(self, name: str) -> list[str]:
        """ssh argv logging in with NAME's key; append destination and command yourself."""
        return ["ssh", "-p", str(self.port), "-i", str(self.client_key(name)),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "LogLevel=ERROR"]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL after 5 s). Safe to call more than once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _sshd_config(workdir: Path, port: int, host_key: Path, authorized_keys: Path,
                 user: str, settings: tuple[str, ...] = ()) -> str:
    # No Subsystem and no AcceptEnv lines: with -f only this file is read, so the
    # server offers no subsystem (sftp) and accepts no client environment.
    # SETTINGS replace the defaults of the same keyword (sshd keeps the first
    # value of some keywords and the last of others: one line each).
    overridden = {line.split()[0].lower() for line in settings}
    defaults = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"AllowUsers {user}",
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "UsePAM no",
        "PermitRootLogin forced-commands-only",
        "PermitUserEnvironment no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxStartups 100",
        "MaxSessions 50",
        "LoginGraceTime 30",
        "LogLevel VERBOSE",
        # The forced command runs as `$SHELL -c CMD`; Debian's bash then sources
        # ~/.bashrc (it does so for sshd when SHLVL < 2), which may change PATH,
        # cost time or print to stdout and break rsync.  SHLVL=1 stops that.
        "SetEnv SHLVL=1",
        # The default post-quantum key exchange costs ~70 ms per connection.
        "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
    ]
    return "\n".join([*settings, *(line for line in defaults
                                   if line.split()[0].lower() not in overridden), ""])


def wait_ready(process: subprocess.Popen, port: int, log: Path, deadline: float) -> str | None:
    """Wait until sshd serves an SSH banner on PORT. None if ready, else why it failed."""
    listening = f"Server listening on 127.0.0.1 port {port}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"sshd exited with status {process.returncode}"
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if listening in text:  # our sshd owns the port: now it must answer
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return None
            except OSError:
                pass
        time.sleep(0.02)
    return f"sshd did not accept connections on port {port} within {START_TIMEOUT:.0f} s"


def start_sshd(workdir: Path, clients: dict[str, str], settings: tuple[str, ...] = ()) -> SshServer:
    """Start sshd on 127.0.0.1 with one forced-command key per client name.

    SETTINGS are extra sshd_config lines (e.g. "MaxStartups 1:100:1").
    CLIENTS maps a client name to the forced command for that client's key (use
    absolute paths: it runs through the login shell of the user, with sshd's
    default PATH).  Files land in WORKDIR: host_ed25519_key[.pub], keys/<name>[.pub],
    authorized_keys, known_hosts, sshd_config, sshd.log, sshd.pid.
    Raises RuntimeError (with sshd's log) when sshd does not come up.
    """
    sshd, _ssh, _keygen = require_openssh()
    for name in clients:
        if not _NAME_OK.match(name):
            raise ValueError(f"client name {name!r} must match {_NAME_OK.pattern}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    user = _login_name()

    host_key = generate_key(workdir / "host_ed25519_key", "swarmtools-test-host")
    host_key_pub = host_key.with_name(host_key.name + ".pub")
    host_pub_fields = host_key_pub.read_text().split()[:2]  # "ssh-ed25519 AAAA..."

    keys: dict[str, Path] = {}
    lines = []
    for name, command in clients.items():
        key = generate_key(workdir / "keys" / name, f"swarmtools-test-{name}")
        keys[name] = key
        lines.append(authorized_keys_line(command, key.with_name(key.name + ".pub").read_text()))
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text("".join(line + "\n" for line in lines))
    authorized_keys.chmod(0o600)

    make_privsep_dir()

    config = workdir / "sshd_config"
    log = workdir / "sshd.log"
    known_hosts = workdir / "known_hosts"
    failures = []
    started = time.monotonic()
    for _attempt in range(BIND_ATTEMPTS):
        port = free_port()
        config.write_text(_sshd_config(workdir, port, host_key, authorized_keys, user, settings))
        known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_pub_fields)}\n")
        log.unlink(missing_ok=True)
        # Config check first: a bad config is a bug, not a port race.
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejected {config}:\n{check.stdout}{check.stderr}")
        with open(log, "ab") as log_fh:
            process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config), "-E", str(log)],
                                       stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
                                       start_new_session=True)
        server = SshServer(port=port, host_key_pub=host_key_pub, known_hosts=known_hosts,
                           process=process, log=log, keys=keys, destination=f"{user}@127.0.0.1")
        atexit.register(server.stop)  # safety net if a fixture finalizer never runs
        problem = wait_ready(process, port, log, time.monotonic() + START_TIMEOUT)
        if problem is None:
            server.startup_seconds = time.monotonic() - started
            return server
        server.stop()
        text = server.log_text()
        failures.append(f"--- port {port}: {problem}\n{text}")
        if "Bind to port" not in text and "Cannot bind any address" not in text:
            break  # not a port race: retrying will not help
    raise RuntimeError("could not start sshd (" + " ".join([sshd, "-D", "-e", "-f", str(config)])
                       + "):\n" + "\n".join(failures))
