"""Things kept in two places must agree: the gateway and the verbs, the README and the code."""

import re
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from conftest import script
from sshd import make_privsep_dir

from swarmtools import config as config_mod
from swarmtools import gateway, verbs
from swarmtools.cli.delegate import cli as delegate_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def long_options(command: click.Command) -> set[str]:
    return {name for param in command.params if isinstance(param, click.Option)
            for name in param.opts if name.startswith("--")}


@pytest.mark.parametrize("verb", verbs.VERBS)
def test_the_gateway_lets_through_exactly_the_options_a_drone_may_use(verb):
    # A new option on a verb must be decided on for the gateway too, or
    # drones' calls work locally and fail over ssh.
    options = long_options(delegate_cli.commands[verb]) - {"--config", "--drone", "--help"}
    assert options - gateway.NOT_FOR_DRONES.get(verb, set()) == set(gateway.VERB_OPTIONS[verb])


def test_every_verb_has_a_gateway_entry():
    assert set(gateway.VERB_OPTIONS) == set(verbs.VERBS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_is_in_the_readme(name):
    assert f"`{name}`" in README, f"{name} is missing from the README's command table"
    assert (ROOT / "bin" / name).exists(), f"bin/{name} (a link to bin/swarm-shim) is missing"


def layout_modules() -> tuple[set[str], set[str]]:
    """The modules the README's Layout names: (library, cli/)."""
    block = README.split("\n## Layout\n", 1)[1].split("```")[1]
    library, commands, part = set(), set(), None
    for line in block.splitlines():
        if re.match(r" \S", line):  # a stage: cli/, observe, control ...
            part = commands if line.split()[0] == "cli/" else library
        elif not line.startswith("  "):  # swarmtools/, bin/, tests/ ...
            part = None
        elif part is not None:
            part.update(re.findall(r"\b(\w+)\.py\b", line))
    return library, commands


def test_the_readme_layout_lists_every_module():
    library, commands = layout_modules()
    package = ROOT / "swarmtools"
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}
    cli = {path.stem for path in (package / "cli").glob("*.py")} - {"__init__"}
    assert sorted(modules - library) == [], "missing from the README's Layout"
    assert sorted(cli - commands) == [], "missing from the README's Layout, under cli/"


def schema_keys():
    sections = {**config_mod.SECTIONS, **config_mod.NAMED_TABLES, **config_mod.ARRAYS_OF_TABLES}
    return [(section, f.name) for section, cls in sections.items()
            for f in config_mod.schema(cls)]


def test_the_readme_config_reference_is_the_schema():
    # Regenerate with scripts/readme-config.
    assert config_mod.reference_table() in README, "the README's config reference is stale"


def test_the_help_lists_every_key_of_the_schema():
    text = subprocess.run([script("swarm-config"), "--help"], capture_output=True, text=True,
                          check=True).stdout
    listed = {}
    for line in text.splitlines():
        if match := re.match(r"\s+\[\[?([a-z_]+)(?:\.NAME)?\]\]?\s+(.*)", line):
            listed[match.group(1)] = match.group(2).split()
    expected = {}
    for section, key in schema_keys():
        expected.setdefault(section, []).append(key)
    assert listed == expected


def test_the_readme_sshd_snippet_is_accepted_by_sshd(tmp_path):
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.skip("no sshd here (scripts/system-deps installs openssh-server)")
    snippet = re.search(r"```\n(# Above the drone count:\n.*?)```", README, re.DOTALL)
    assert snippet, "the README's sshd snippet is gone"
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(f"HostKey {key}\n{snippet.group(1)}")
    make_privsep_dir()
    r = subprocess.run([sshd, "-t", "-f", config], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_features_from_facts_are_said_to_be_the_drones_word():
    # The orchestrator cannot check them: README and --help must not let
    # an admin believe it does.
    routing = README.split("**Routing.**", 1)[1].split("**Grounding.**", 1)[0]
    assert "the drone's word" in routing
    text = subprocess.run([script("swarm-delegate"), "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "the drone's word" in " ".join(text.split())
