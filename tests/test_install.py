"""make install: a venv of the system Python in PREFIX, the commands linked into PREFIX/bin.

tests/test_deploy.py installs as the README says; here, what packagers use:
DESTDIR, and an install that works once moved from it.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip installs swarmtools: seconds

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/usr/local/bin")


def install(**settings: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **settings}
    return subprocess.run(["make", "--no-print-directory", "install"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


def test_a_staged_install_works_once_moved_to_its_prefix(tmp_path):
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3")
    prefix, stage = tmp_path / "opt" / "swarm", tmp_path / "stage"
    r = install(PREFIX=str(prefix), DESTDIR=str(stage), PYTHON=SYSTEM_PYTHON)
    assert r.returncode == 0, r.stderr
    staged = Path(f"{stage}{prefix}")
    assert f"install: a venv with the system's site packages (and its Portage): {staged}/lib/swarmtools" \
        in r.stdout
    assert f"install: the commands, linked into {staged}/bin: swarm-config swarm-delegate" in r.stdout
    assert "include-system-site-packages = true" in (staged / "lib/swarmtools/pyvenv.cfg").read_text()
    assert not list(staged.glob("lib/swarmtools/lib/python3*/site-packages/portage"))
    shutil.copytree(staged, prefix, symlinks=True)  # what the package manager does
    shutil.rmtree(stage)
    for command in sorted((prefix / "bin").iterdir()):
        assert os.readlink(command) == f"../lib/swarmtools/bin/{command.name}"
        r = subprocess.run([str(command), "--help"], capture_output=True, text=True, check=False)
        assert r.returncode == 0 and "Usage:" in r.stdout, (command, r.stderr)
    # The files it renders name the moved install's commands.
    unit = subprocess.run([prefix / "bin" / "swarm-config", "render", "systemd-unit",
                           "--config", "/dev/null"], capture_output=True, text=True, check=False)
    assert f"ExecStart={prefix}/bin/swarm-drone --drone %i -v\n" in unit.stdout, unit.stderr


def test_install_refuses_a_virtualenvs_python(tmp_path):
    # Its venv would see the base interpreter's packages, not the virtualenv's.
    venv_python = Path(__import__("sys").executable)
    r = install(PREFIX=str(tmp_path), PYTHON=str(venv_python))
    assert r.returncode != 0 and "install: error: " in r.stderr and "not a virtualenv's" in r.stderr
    assert not (tmp_path / "lib" / "swarmtools").exists()
