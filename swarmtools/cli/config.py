"""swarm-config: write, show, change and check the one config file."""

from __future__ import annotations

from pathlib import Path

import click

from .. import config as config_mod
from ..errors import ConfigError
from ..output import emit_json
from .common import CONTEXT, SwarmGroup, config_option, json_option, pass_run, run

_HELP = """Write, show, change and check the swarm's one config file.

Every swarm-* command reads one TOML file: --config PATH, else
$SWARM_CONFIG, else /etc/swarmtools/swarm.toml. A value set in the
environment as SWARM_<SECTION>_<KEY> (e.g. SWARM_ORCHESTRATOR_DATABASE)
wins over the file; relative paths are relative to the file.

\b
Sections and keys (swarm-config show explains each):
{keys}

\b
Examples:
  swarm-config init --dir /tmp/swarm      # a working single-host setup
  export SWARM_CONFIG=/tmp/swarm/swarm.toml
  swarm-config set delegate.lease_seconds=7200 binhost.url=http://bh/binhost
  swarm-config show --json | jq .binhost.url
  swarm-config check && echo ok
"""


@click.group(cls=SwarmGroup, context_settings=CONTEXT,
             help=_HELP.format(keys="\n".join(config_mod.help_lines())))
def cli():
    pass


@cli.command(context_settings=CONTEXT)
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory to hold the config, state, staging and binhost.")
@click.option("--scan-env", "scan_env", multiple=True, metavar="NAME=VALUE",
              help="Environment for the scan's emerge (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite an existing swarm.toml.")
def init(directory, scan_env, force):
    """Write a working single-host config under DIR and print its path.

    Creates DIR/swarm.toml, DIR/state (database, staging) and DIR/binhost,
    with the local transport: the smallest real deployment and the demo's.

    \b
    Example:
      swarm-config init --dir /var/lib/swarm
    """
    env = {}
    for item in scan_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--scan-env wants NAME=VALUE, not {item!r}")
        env[name] = value
    click.echo(config_mod.init(Path(directory), env, force))


@cli.command(context_settings=CONTEXT)
@config_option
@json_option
@pass_run
def show(run_, as_json):
    """Print the effective config: the file, the environment and the defaults.

    The output is itself valid TOML, each key with its help as a comment.

    \b
    Example:
      swarm-config show --json | jq -r .orchestrator.database
    """
    config = run_.config()
    if as_json:
        emit_json({"file": str(config.path), "digest": config.digest(), **config.to_dict()})
    else:
        click.echo(f"# effective config from {config.path}")
        click.echo(config_mod.render_toml(config.to_dict(), with_help=True), nl=False)


@cli.command("set", context_settings=CONTEXT)
@config_option
@click.argument("assignments", nargs=-1, required=True, metavar="SECTION.KEY=VALUE...")
@pass_run
def set_(run_, assignments):
    """Change keys of the config file; what is written must load.

    VALUE is read as TOML (600, true, ["emerge", "-pe"]) and else taken as
    a string. The file is rewritten in canonical form, each key with its
    help as a comment (comments of its own are not kept).

    \b
    Examples:
      swarm-config set delegate.lease_seconds=7200
      swarm-config set drones.d1.transport=ssh drones.d1.host=d1.example.org
    """
    changes: dict = {}
    for text in assignments:
        config_mod.merge(changes, config_mod.parse_assignment(text))
    config_mod.edit(config_mod.locate(run_.config_path), changes)


@cli.command(context_settings=CONTEXT)
@config_option
@pass_run
def check(run_):
    """Validate the config and the paths and programs it names.

    Exits 0 and prints nothing when all is well; otherwise prints each problem
    and exits 2.

    \b
    Example:
      swarm-config check --config /etc/swarmtools/swarm.toml
    """
    config = run_.config()
    problems = config_mod.problems(config)
    if problems:
        raise ConfigError(f"{config.path}: " + "; ".join(problems))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--name", default="swarm", show_default=True, help="The repository name clients use.")
@click.option("--channel", metavar="CHANNEL",
              help="Pin a swarm-release channel (stable, latest, ...) instead of the live binhost.")
@pass_run
def binrepos(run_, name, channel):
    """Print the binrepos.conf entry a client needs for this binhost.

    With binhost.gpg_key set the entry asks Portage to verify signatures;
    without, it says verify-signature = false. With --channel the client
    follows a channel of swarm-release (binhost.releases_url/CHANNEL): the
    release it points at, not every publication.

    \b
    Examples (on a client):
      ssh orchestrator swarm-config binrepos > /etc/portage/binrepos.conf/swarm.conf
      ssh orchestrator swarm-config binrepos --channel stable > /etc/portage/binrepos.conf/swarm.conf
    """
    if channel is not None:
        from ..release import CHANNEL_NAME

        if not CHANNEL_NAME.fullmatch(channel):
            raise ConfigError(f"--channel {channel!r}: lower-case letters, digits, - and _")
    click.echo(config_mod.binrepos_conf(run_.config(), name, channel), nl=False)


def main():
    run(cli)
