"""swarm-config: write, show and check the one config file."""

from __future__ import annotations

import click

from .. import config as config_mod
from ..errors import ConfigError
from ..output import emit_json
from .common import CONTEXT, config_option, handle_errors, load_config, run


@click.group(context_settings=CONTEXT)
def cli():
    """Write, show and check the swarm's one config file.

    Every swarm-* command reads one TOML file: --config PATH, else
    $SWARM_CONFIG, else /etc/swarmtools/swarm.toml. A value set in the
    environment as SWARM_<SECTION>_<KEY> (e.g. SWARM_ORCHESTRATOR_DATABASE)
    wins over the file; relative paths are relative to the file.

    \b
    Sections and keys:
      [orchestrator] state_dir database staging_dir log_file ssh ssh_command
      [binhost]      path url rsync_target grace_seconds sync_interval_seconds
                     gpg_key gpg_home
      [scan]         command environment timeout
      [delegate]     lease_seconds online_seconds retry_seconds retry_max_seconds
                     heartbeat_seconds poll_seconds
      [drones.NAME]  host transport ssh_command environment

    \b
    Examples:
      swarm-config init --dir /tmp/swarm      # a working single-host setup
      export SWARM_CONFIG=/tmp/swarm/swarm.toml
      swarm-config show --json | jq .binhost.url
      swarm-config check && echo ok
    """


@cli.command(context_settings=CONTEXT)
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory to hold the config, state, staging and binhost.")
@click.option("--scan-env", "scan_env", multiple=True, metavar="NAME=VALUE",
              help="Environment for the scan's emerge (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite an existing swarm.toml.")
@handle_errors
def init(directory, scan_env, force):
    """Write a working single-host config under DIR and print its path.

    Creates DIR/swarm.toml, DIR/state (database, staging) and DIR/binhost,
    with the local transport: the smallest real deployment and the demo's.

    \b
    Example:
      swarm-config init --dir /var/lib/swarm
    """
    from pathlib import Path

    env = {}
    for item in scan_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--scan-env wants NAME=VALUE, not {item!r}")
        env[name] = value
    click.echo(config_mod.init(Path(directory), env, force))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for jq.")
@handle_errors
def show(config_path, as_json):
    """Print the effective config: the file, the environment and the defaults.

    The output is itself valid TOML.

    \b
    Example:
      swarm-config show --json | jq -r .orchestrator.database
    """
    config = load_config(config_path)
    if as_json:
        emit_json({"file": str(config.path), "digest": config.digest(), **config.data})
    else:
        click.echo(f"# effective config from {config.path}")
        click.echo(config_mod.render_toml(config.data), nl=False)


@cli.command(context_settings=CONTEXT)
@config_option
@handle_errors
def check(config_path):
    """Validate the config and the paths and programs it names.

    Exits 0 and prints nothing when all is well; otherwise prints each problem
    and exits 2.

    \b
    Example:
      swarm-config check --config /etc/swarmtools/swarm.toml
    """
    config = load_config(config_path)
    problems = config_mod.check(config)
    if problems:
        raise ConfigError(f"{config.path}: " + "; ".join(problems))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--name", default="swarm", show_default=True, help="The repository name clients use.")
@handle_errors
def binrepos(config_path, name):
    """Print the binrepos.conf entry a client needs for this binhost.

    With binhost.gpg_key set the entry asks Portage to verify signatures;
    without, it says verify-signature = false.

    \b
    Example (on a client):
      ssh orchestrator swarm-config binrepos > /etc/portage/binrepos.conf/swarm.conf
    """
    click.echo(config_mod.binrepos_conf(load_config(config_path), name), nl=False)


def main():
    run(cli)
