"""swarm-config render: every deployment file names this install's commands by absolute path.

tests/test_deploy.py runs these files for real (cron's environment, su, sshd,
the units); here, what each names and that the repository's copies are current.
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, add_drones, one_line_error
from sshd import generate_key

from swarmtools import deploy

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def render(swarm, *args):
    r = swarm.run("swarm-config", "render", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_repository_copies_are_the_gentoo_packages_files():
    # Regenerate with scripts/deploy-files.
    for relative, text in deploy.package_files().items():
        assert (ROOT / relative).read_text() == text, f"{relative} is stale"
    assert os.access(ROOT / "cron" / "postsync.d" / "swarm-fresh", os.X_OK)
    assert os.access(ROOT / "init" / "swarm-drone.initd", os.X_OK)


def test_the_readme_sshd_snippet_is_the_rendered_one():
    assert deploy.sshd_snippet(deploy.gentoo_host()) in README


def test_the_crontab_finds_every_command_in_this_install(swarm):
    text = render(swarm, "crontab")
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if re.match(r"[A-Z_]+=", line))
    assert settings["PATH"].split(":")[0] == str(BIN)
    assert settings["SWARM_CONFIG"] == str(swarm.config)
    jobs = [line.split(None, 5)[5] for line in text.splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 6
    for job in jobs:
        for command in re.split(r"&&|;|\|", job):
            program = shlex.split(command)[0]
            found = shutil.which(program, path=settings["PATH"])
            assert found, f"{program} of '{job}' is not on the crontab's PATH"
            if program.startswith("swarm-"):
                assert found == str(BIN / program)
    assert "%" not in text  # cron's newline


def test_the_crontab_takes_its_page_and_figures_elsewhere_or_not_at_all(swarm):
    text = render(swarm, "crontab", "--status-page", "/srv/www/s.html", "--metrics", "")
    assert "swarm-status --html /srv/www/s.html\n" in text and "--prometheus" not in text


def test_the_postsync_hook_runs_this_install_as_the_owner_of_the_state(swarm):
    text = render(swarm, "postsync")
    assert subprocess.run(["sh", "-n"], input=text, text=True, check=False).returncode == 0
    assert f"SWARM_USER=${{SWARM_USER:-{_me()}}}" in text
    scan = re.search(r"^scan='exec (.*)'$", text, re.MULTILINE).group(1)
    # (It resolves as scan.resolve says: by default, after every scan.)
    assert shlex.split(scan) == [str(BIN / "swarm-fresh"), "--config", str(swarm.config),
                                 "--quiet"]


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def test_the_postsync_hook_does_nothing_where_there_is_no_swarm_user(swarm, tmp_path):
    hook = tmp_path / "swarm-fresh"
    hook.write_text(render(swarm, "postsync"))
    hook.chmod(0o755)
    r = subprocess.run([str(hook)], env={**swarm.env, "SWARM_USER": "no-such-user-here"},
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not swarm.db.exists()  # no scan ran


def test_authorized_keys_pin_each_ssh_drone_to_this_gateway(swarm, tmp_path):
    add_drones(swarm.config, {"d1": {"transport": "ssh"}, "d2": {"transport": "ssh"},
                              "here": {"transport": "local"}})
    key = generate_key(tmp_path / "d1")
    pub = key.with_name("d1.pub").read_text().strip()
    gateway = f"{BIN / 'swarm-delegate'} gateway --drone"
    # Ready to append to authorized_keys: the line of each drone given its key.
    assert render(swarm, "authorized-keys", "--key", f"d1={key}.pub") == \
        f'command="{gateway} d1 --config {swarm.config}",restrict {pub}\n'
    # Without keys, every drone of the ssh transport's, to fill in.
    lines = render(swarm, "authorized-keys").splitlines()
    assert [line.split("--drone ")[1].split()[0] for line in lines] == ["d1", "d2"]
    assert all(line.startswith("# command=") for line in lines)
    assert "--key d2=KEYFILE" in lines[1]
    r = swarm.run("swarm-config", "render", "authorized-keys", "--key", "d9=-", input=pub)
    one_line_error(r, "swarm-config")
    assert r.returncode == 2 and "no drone 'd9'" in r.stderr
    r = swarm.run("swarm-config", "render", "authorized-keys", "--key", "d1=-", input="junk\n")
    assert r.returncode == 2 and "not one ssh public key" in r.stderr


def test_the_drone_service_names_this_install_and_its_drone(swarm):
    conf = render(swarm, "openrc-conf", "local")
    assert 'SWARM_DRONE="local"\n' in conf and f'SWARM_CONFIG="{swarm.config}"\n' in conf
    assert f'SWARM_DRONE_BIN="{BIN / "swarm-drone"}"\n' in conf
    init = render(swarm, "openrc-init")
    assert f'command="${{SWARM_DRONE_BIN:-{BIN / "swarm-drone"}}}"' in init
    unit = render(swarm, "systemd-unit")
    assert f"ExecStart={BIN / 'swarm-drone'} --drone %i -v\n" in unit
    assert f"Environment=SWARM_CONFIG={swarm.config}\n" in unit
    # render drone keeps its make.conf part first, then the same three files.
    text = render(swarm, "drone", "local")
    assert text.startswith("# /etc/portage/make.conf on drone local")
    for where, part in ((deploy.DRONE_FILES["openrc-conf"], conf),
                        (deploy.DRONE_FILES["openrc-init"], init),
                        (deploy.DRONE_FILES["systemd-unit"], unit)):
        assert f"==> {where} <==\n{part}" in text


@pytest.mark.parametrize("args, message", [
    (["openrc-conf"], "takes the drone's NAME"),
    (["openrc-conf", "d9"], "no drone 'd9'"),
    (["crontab", "local"], "takes no NAME"),
    (["systemd-unit", "--key", "d1=x"], "takes no --key"),
    (["systemd-unit", "--bin-dir", "/opt/my tools/bin"], "cannot be written"),
])
def test_render_refuses_what_it_cannot_write(swarm, args, message):
    r = swarm.run("swarm-config", "render", *args)
    one_line_error(r, "swarm-config")
    assert r.returncode == 2 and message in r.stderr


def test_the_orchestrator_gets_its_four_files_under_where_they_go(swarm):
    text = render(swarm, "orchestrator")
    me = _me()
    for kind, render_args in (("crontab", ["crontab"]), ("postsync", ["postsync"]),
                              ("sshd", ["sshd"]), ("authorized-keys", ["authorized-keys"])):
        where = deploy.ORCHESTRATOR_FILES[kind].replace("USER", me)
        assert f"==> {where} <==\n{render(swarm, *render_args)}" in text


def test_the_unit_passes_systemd_analyze_verify(swarm, tmp_path):
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd)")
    units = tmp_path / "units"
    units.mkdir()
    (units / "swarm-drone@.service").write_text(render(swarm, "systemd-unit"))
    r = subprocess.run([verify, "verify", "--man=no", str(units / "swarm-drone@local.service")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "swarm-drone" not in r.stderr, r.stderr


def test_gentoos_package_names_usr_bin_not_the_python_exec_directory(tmp_path):
    usr = tmp_path / "usr"
    (usr / "lib" / "python-exec" / "python3.12").mkdir(parents=True)
    (usr / "bin").mkdir()
    (usr / "bin" / "swarm-delegate").touch()
    argv0 = usr / "lib" / "python-exec" / "python3.12" / "swarm-config"
    assert deploy.installed_bin_dir(str(argv0)) == usr / "bin"
