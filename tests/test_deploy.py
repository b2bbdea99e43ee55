"""A rehearsal of the README's "Deploying on real hosts", as root on this machine.

The commands are the README's own: its blocks marked ``<!-- rehearsal: NAME -->``,
each line run by /bin/sh as root would type it. The machine is shared, so the
rehearsal leaves it as it found it, and changes only this (each said where done):

- The README's system paths (MAPPED: /etc/swarmtools, /var/lib/swarm, ...) are
  moved under a temporary root, in the text of the commands; make install's
  PREFIX is a temporary one, first on root's PATH as /usr/local/bin is, and
  $SWARM_CONFIG stands for the default /etc/swarmtools/swarm.toml that moved.
- "then edit swarm.toml" is done after `swarm-config init`: the scan and the
  drone in Portage prefixes, the binhost served on loopback HTTP, the drone's
  ssh to a loopback sshd (the README's snippet added to a config of its own).
- Debian has no system Portage: the install's venv is given the tests' PyPI
  Portage the way Gentoo's site packages would give it (system_portage()).
- No init system and no cron run here: `rc-update` and `systemctl` are not
  run (REPLACED); the unit is checked with systemd-analyze and the services'
  command lines run as systemd and OpenRC would, bounded (--once, --facts);
  each line of the crontab `crontab -u swarm` installed runs as cron runs it.

The user is `swarm`, as in the README: one rehearsal at a time on the machine
(a lock), and none where a `swarm` user of someone else's exists.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import HttpServer, promtool_check
from filelock import FileLock
from sshd import free_port, generate_key, make_privsep_dir, wait_ready

from swarmtools.prefix import create_prefix

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
USER = "swarm"
MARK = "swarmtools rehearsal"  # its GECOS: a user a crashed rehearsal left
MAPPED = ("/etc/swarmtools", "/etc/portage/postsync.d", "/etc/init.d", "/etc/conf.d",
          "/etc/systemd/system", "/etc/ssh", "/var/lib/swarm", "/var/www/swarm",
          "/var/lib/node_exporter")
REPLACED = {"rc-update": "the OpenRC service's command, run as openrc-run would",
            "systemctl": "systemd-analyze verify, and the unit's ExecStart run as systemd would"}
CRON_PATH = "/usr/bin:/bin"  # Debian's and Gentoo's cron (cronie: the same)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OPENRC_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"


def readme_blocks() -> dict[str, list[str]]:
    """The README's rehearsed blocks: name -> command lines."""
    blocks = {}
    for m in re.finditer(r"^( *)<!-- rehearsal: (\w+) -->\n\1```sh\n(.*?)\n\1```$", README,
                         re.MULTILINE | re.DOTALL):
        indent, name, body = m.groups()
        text = re.sub(r"\\\n\s*", "", body)  # a command continued on the next line
        blocks[name] = [line.removeprefix(indent) for line in text.splitlines() if line.strip()]
    return blocks


def test_the_readme_marks_the_blocks_the_rehearsal_runs():
    assert list(readme_blocks()) == ["install", "orchestrator", "drone", "gateway"]


def need(*programs: str) -> None:
    for program in programs:
        if not shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            pytest.skip(f"the rehearsal needs {program} (scripts/system-deps installs it)")


class Rehearsal:
    """The temporary root, the shell root types into, and what runs meanwhile."""

    def __init__(self, base: Path):
        self.base = base
        self.prefix = base / "usr" / "local"
        self.config = base / "etc" / "swarmtools" / "swarm.toml"
        self.cwd = base / "root"
        self.env = {"PATH": f"{self.prefix}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                    "LOGNAME": "root", "USER": "root", "SHELL": "/bin/sh", "LANG": "C.UTF-8",
                    "PREFIX": str(self.prefix), "SWARM_CONFIG": str(self.config)}
        self.ran: list[str] = []
        self.replaced: list[str] = []
        self.stops: list = []

    def mapped(self, line: str) -> str:
        for path in MAPPED:
            line = re.sub(rf"(?<![\w/.]){re.escape(path)}(?=[/\s'\"]|$)", f"{self.base}{path}", line)
        return line

    def run_block(self, lines: list[str], cwd: Path, after: dict | None = None) -> None:
        """Run each line as root; AFTER maps a word of a line to what the rehearsal does then."""
        for line in lines:
            if line.split()[0] in REPLACED:
                self.replaced.append(line)
                continue
            r = subprocess.run(["/bin/sh", "-ec", self.mapped(line)], cwd=cwd, env=self.env,
                               capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=600, check=False)
            assert r.returncode == 0, f"README: {line}\n{r.stdout}{r.stderr}"
            self.ran.append(line)
            for word, then in (after or {}).items():
                if word in line:
                    then()

    def as_user(self, *argv: str) -> subprocess.CompletedProcess:
        entry = pwd.getpwnam(USER)
        return subprocess.run(argv, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                              env={"PATH": f"{self.prefix}/bin:/usr/bin:/bin",
                                   "HOME": entry.pw_dir, "SWARM_CONFIG": str(self.config)},
                              cwd=entry.pw_dir, capture_output=True, text=True, check=False)

    def query(self, sql: str) -> list[tuple]:
        database = self.base / "var" / "lib" / "swarm" / "state" / "swarm.db"
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()


def remove_user() -> None:
    subprocess.run(["crontab", "-u", USER, "-r"], capture_output=True, check=False)
    # A swarm-sync a report started may still run; the drone's shared ssh
    # connection keeps an sshd process of the user for a minute: both end here.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-u", USER], capture_output=True, check=False).returncode == 0:
        time.sleep(0.5)
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-u", USER], capture_output=True, check=False).returncode == 0:
        time.sleep(0.2)
    subprocess.run(["userdel", "--force", USER], capture_output=True, check=False)
    subprocess.run(["groupdel", USER], capture_output=True, check=False)


@pytest.fixture
def rehearsal():
    if os.geteuid() != 0:
        pytest.skip("the rehearsal runs as root (it creates a system user)")
    need("useradd", "userdel", "su", "crontab", "sshd", "ssh-keygen", "systemd-analyze",
         "promtool", "make")
    with FileLock("/tmp/swarmtools-rehearsal.lock"):
        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            entry = None
        if entry is not None:
            if entry.pw_gecos != MARK:
                pytest.skip(f"this machine has a user {USER} of its own; the rehearsal makes one")
            remove_user()
        base = Path(tempfile.mkdtemp(prefix="swarm-rehearsal-"))
        base.chmod(0o755)  # the swarm user goes through it, as through /
        for directory in ("root", "var/lib", "etc/init.d", "etc/conf.d", "etc/systemd/system",
                          "etc/ssh"):
            (base / directory).mkdir(parents=True)
        run = Rehearsal(base)
        try:
            yield run
        finally:
            for stop in reversed(run.stops):
                stop()
            remove_user()
            shutil.rmtree(base, ignore_errors=True)


def system_portage(venv: Path, base: Path) -> Path:
    """Give the install's venv the tests' PyPI Portage as Gentoo's system would; its home.

    On Gentoo a venv made with --system-site-packages imports the system's
    portage, and emerge is /usr/bin/emerge. Here a .pth file in the venv
    stands for the site packages, lib/portage and share/portage for
    Portage's own files (a Portage installed as a module finds them under
    sys.prefix: its configuration of the build host too), and emerge
    and friends run with the venv's Python: the tests' own interpreter is
    under /root, where the swarm user cannot go.
    """
    import portage

    tests_venv = Path(sys.prefix)
    home = base / "system-portage"
    (home / "site").mkdir(parents=True)
    for package in ("portage", "_emerge"):
        (home / "site" / package).symlink_to(Path(portage.__file__).parents[1] / package)
    (home / "share").mkdir()
    (home / "share" / "portage").symlink_to(tests_venv / "share" / "portage")
    (home / "bin").mkdir()
    for tool in ("emerge", "ebuild", "emaint", "quickpkg", "portageq"):
        body = (tests_venv / "bin" / tool).read_text().split("\n", 1)[1]
        (home / "bin" / tool).write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
        (home / "bin" / tool).chmod(0o755)
    site = subprocess.run([venv / "bin" / "python", "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "system-portage.pth").write_text(f"{home / 'site'}\n")
    (venv / "lib" / "portage").symlink_to(tests_venv / "lib" / "portage")
    (venv / "share").mkdir(exist_ok=True)
    (venv / "share" / "portage").symlink_to(tests_venv / "share" / "portage")
    return home


def edit_config(run: Rehearsal, portage_home: Path, port: int) -> None:
    """"then edit swarm.toml": what this machine needs, as the swarm user would set it."""
    entry = pwd.getpwnam(USER)
    orchestrator = create_prefix(run.base / "prefix-orchestrator", portage_home=portage_home)
    # The scan runs as the swarm user, in a prefix of its own.
    scan_env = {**orchestrator.env_overrides(), "PORTAGE_USERNAME": USER,
                "PORTAGE_GRPNAME": grp.getgrgid(entry.pw_gid).gr_name}
    subprocess.run(["chown", "-R", f"{USER}:", str(orchestrator.root)], check=True)
    drone = create_prefix(run.base / "prefix-d1", portage_home=portage_home)
    http = HttpServer(run.base / "var" / "lib" / "swarm" / "binhost")
    run.stops.append(http.stop)
    d1 = {"transport": "ssh", "host": "127.0.0.1", "environment": drone.env_overrides(),
          "ssh_command": ["ssh", "-p", str(port), "-o", "BatchMode=yes",
                          "-i", f"{run.base}/etc/swarmtools/id_ed25519",
                          "-o", "StrictHostKeyChecking=yes",
                          "-o", f"UserKnownHostsFile={run.base}/known_hosts"]}
    # (The drone runs as root, as its service does: each build in a throw-away root.)
    changes = {"scan": {"environment": scan_env}, "binhost": {"url": http.url},
               "orchestrator": {"ssh": f"{USER}@127.0.0.1"}, "drones": {"d1": d1}}
    # As `swarm-config set` would, but in one go (tables of tables).
    r = run.as_user(str(run.prefix / "lib" / "swarmtools" / "bin" / "python"), "-c",
                    "import json, pathlib, sys; from swarmtools.config import edit; "
                    "edit(pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]))",
                    f"{entry.pw_dir}/swarm.toml", json.dumps(changes))
    assert r.returncode == 0, r.stderr


def start_sshd(run: Rehearsal, port: int) -> Path:
    """sshd with the host's own settings and what the README added; its log."""
    make_privsep_dir()
    config = run.base / "etc" / "ssh" / "sshd_config"
    log = run.base / "sshd.log"
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, f"sshd -t: {r.stderr}\n{config.read_text()}"
    process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-E", str(log)],
                               stdin=subprocess.DEVNULL, start_new_session=True)

    def stop():
        process.terminate()
        process.wait(timeout=10)
    run.stops.append(stop)
    problem = wait_ready(process, port, log, time.monotonic() + 10)
    assert problem is None, f"{problem}\n{log.read_text(errors='replace')}"
    return log


def cron_lines(text: str) -> tuple[dict[str, str], list[str]]:
    """A crontab's environment settings and its commands, as cron reads them."""
    settings, commands = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line):
            settings[m.group(1)] = m.group(2).strip().strip("'\"")
            continue
        commands.append(line.split(None, 5)[5])
    return settings, commands


def run_as_cron(command: str, settings: dict[str, str]) -> subprocess.CompletedProcess:
    """COMMAND as cron runs a line of USER's crontab: its own environment, then the crontab's."""
    entry = pwd.getpwnam(USER)
    env = {"PATH": CRON_PATH, "HOME": entry.pw_dir, "LOGNAME": USER, "SHELL": "/bin/sh",
           **settings}
    stdin = None
    if "%" in command:  # cron's: the rest of the line is the command's input
        command, _, rest = command.partition("%")
        stdin = rest.replace("%", "\n")
    return subprocess.run([env["SHELL"], "-c", command], user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=[], env=env, cwd=entry.pw_dir, input=stdin,
                          capture_output=True, text=True, timeout=600, check=False)


def unit_command(unit: str, instance: str) -> tuple[list[str], dict[str, str]]:
    """A systemd unit's ExecStart for INSTANCE, and the environment systemd gives it."""
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    argv: list[str] = []
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
        elif key == "ExecStart":
            argv = shlex.split(value.replace("%i", instance))
    return argv, env


def test_the_readme_deployment_works_as_written(rehearsal):
    run = rehearsal
    blocks = readme_blocks()
    port = free_port()

    # Installing: make install into PREFIX, with the system Python's site packages.
    run.run_block(blocks["install"], ROOT)
    venv = run.prefix / "lib" / "swarmtools"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert not list(venv.glob("lib/python3*/site-packages/portage")), "a PyPI Portage"
    assert os.path.realpath(run.prefix / "bin" / "swarm-delegate") == \
        str(venv / "bin" / "swarm-delegate")
    portage_home = system_portage(venv, run.base)

    # The orchestrator: the user, the config, the hook, the crontab, a first scan.
    run.run_block(blocks["orchestrator"], run.cwd,
                  after={"swarm-config init": lambda: edit_config(run, portage_home, port)})
    pwd.getpwnam(USER)
    subprocess.run(["usermod", "--comment", MARK, USER], check=True)
    (scans_before,), = run.query("SELECT count(*) FROM scans")
    assert scans_before >= 1 and run.query("SELECT count(*) FROM packages")[0][0] >= 5

    # The drone, on the same host: its key and its service files.
    run.run_block(blocks["drone"], run.cwd)
    # Its public key, as copied to the orchestrator.
    shutil.copy(run.base / "etc" / "swarmtools" / "id_ed25519.pub", run.cwd / "d1.pub")
    # This host's sshd: its own settings (a loopback port, its host key, PAM as Debian's
    # and Gentoo's default), then what the README appends.
    host_key = generate_key(run.base / "ssh_host_ed25519_key", "rehearsal-host")
    (run.base / "etc" / "ssh" / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {run.base}/sshd.pid\nUsePAM yes\nKbdInteractiveAuthentication no\n")
    (run.base / "known_hosts").write_text(
        f"[127.0.0.1]:{port} {' '.join(host_key.with_suffix('.pub').read_text().split()[:2])}\n")
    run.run_block(blocks["gateway"], run.cwd)
    assert run.replaced == [line for line in blocks["drone"] if line.split()[0] in REPLACED]
    assert len(run.ran) + len(run.replaced) == sum(len(b) for b in blocks.values())

    # The authorized_keys line, exactly as printed, names this install's gateway.
    home = Path(pwd.getpwnam(USER).pw_dir)
    pub = (run.cwd / "d1.pub").read_text().strip()
    assert (home / ".ssh" / "authorized_keys").read_text() == (
        f'command="{run.prefix}/bin/swarm-delegate gateway --drone d1 --config {run.config}"'
        f",restrict {pub}\n")
    sshd_log = start_sshd(run, port)

    # emerge --sync runs the hook as root; it scans as the swarm user, through su.
    hook = run.base / "etc" / "portage" / "postsync.d" / "swarm-fresh"
    r = subprocess.run([str(hook)], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
                       capture_output=True, text=True, check=False, timeout=600)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert run.query("SELECT count(*) FROM scans") == [(scans_before + 1,)]

    # The drone's service, as systemd runs it: the unit passes verify, its ExecStart
    # builds one package through sshd and the gateway.
    units = run.base / "etc" / "systemd" / "system"
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(units / "swarm-drone@d1.service")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "swarm-drone" not in r.stderr, r.stderr
    argv, env = unit_command((units / "swarm-drone@.service").read_text(), "d1")
    r = subprocess.run([*argv, "--once"], env=env, capture_output=True, text=True,
                       check=False, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "reported" in r.stderr, r.stderr
    assert f"Accepted publickey for {USER}" in sshd_log.read_text(errors="replace")
    (built,), = run.query("SELECT count(*) FROM events WHERE event = 'built'")
    assert built == 1

    # And as OpenRC runs it: conf.d, then the script's command and arguments.
    script = (f". {run.base}/etc/conf.d/swarm-drone; RC_SVCNAME=swarm-drone; "
              f". {run.base}/etc/init.d/swarm-drone; start_pre && "
              'exec $command $command_args --facts')
    r = subprocess.run(["/bin/sh", "-c", script], env={"PATH": OPENRC_PATH},
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["chost"], r.stderr

    # Every line of the crontab `crontab -u swarm` holds, as cron runs it: quiet.
    installed = subprocess.run(["crontab", "-u", USER, "-l"], capture_output=True, text=True,
                               check=True).stdout
    settings, commands = cron_lines(installed)
    assert len(commands) == 6
    for command in commands:
        r = run_as_cron(command, settings)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), f"cron: {command}\n{r}"
    # What the lines made: the drone's build published, the page, the figures.
    assert run.query("SELECT status FROM packages WHERE drone = 'd1'") == [("synced",)]
    assert (run.base / "var" / "www" / "swarm" / "index.html").stat().st_size > 1000
    metrics = (run.base / "var" / "lib" / "node_exporter" / "swarm.prom").read_text()
    assert "swarm_builds_total" in metrics and promtool_check(metrics) == ""
