"""swarm-config: write, show, change and check the one config file."""

from __future__ import annotations

from pathlib import Path

import click

from .. import config as config_mod
from .. import deploy, drift
from ..errors import ConfigError, ExitCode, SwarmError
from ..output import emit_json, emit_table
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
  swarm-config check --remote          # every drone and the binhost, as they are
  swarm-config render drone d1         # the make.conf lines and service d1 must have
  swarm-config render orchestrator     # crontab, postsync hook, sshd, authorized_keys
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
@click.option("--remote", is_flag=True,
              help="Also reach every drone (its check_command, else ssh to its host) and the "
                   "binhost's URL, and compare what they really have with the config.")
@json_option
@pass_run
def check(run_, remote, as_json):
    """Validate the config and the paths and programs it names; with --remote, the hosts.

    Without --remote: exits 0 and prints nothing when all is well; otherwise
    prints each problem and exits 2.

    With --remote, each drone runs `swarm-drone --drone NAME --facts` where it
    lives (drones.NAME.check_command, else `ssh HOST`; here for a drone of
    the local transport or without a host) and each value is compared with what it must be:

    \b
      PORTAGE_BINHOST     binhost.url among the drone's binhosts (make.conf,
                          binrepos.conf)
      CHOST, ARCH         the build profile's (the last scan's)
      config digest       this config's (swarm-config show --json | jq .digest)
      swarmtools version  the orchestrator's

    and binhost.url/Packages is fetched: it must answer, with the index
    swarm-sync wrote (the same TIMESTAMP). Prints a table of host, key,
    expected and found values (--json: a list of them, each with "ok");
    exits 1 when anything drifted or could not be reached.

    \b
    Examples:
      swarm-config check --config /etc/swarmtools/swarm.toml
      swarm-config check --remote --json | jq '.[] | select(.ok | not)'
    """
    config = run_.config()
    problems = drift.problems(config)
    if problems:
        raise ConfigError(f"{config.path}: " + "; ".join(problems))
    if not remote:
        return
    findings = drift.check_drones(config, _recorded_profile(run_, config.profile_names()[0]))
    findings += drift.check_binhosts(config)
    if as_json:
        emit_json([f.to_dict() for f in findings])
    else:
        emit_table([[f.host, f.key, f.expected, f.found, "ok" if f.ok else "DRIFT"]
                    for f in findings], ["host", "key", "expected", "found", "state"])
    if not all(f.ok for f in findings):
        raise SwarmError(f"{sum(not f.ok for f in findings)} value(s) differ from the config "
                         "or could not be checked", ExitCode.FAILED)


@cli.command(context_settings=CONTEXT)
@config_option
@click.argument("role", type=click.Choice(["drone", "client", *deploy.KINDS]))
@click.argument("name", required=False)
@click.option("--profile", "profile_name", metavar="P",
              help="For a client of build profile P ([profiles.P]): its binhost and CHOST "
                   "(default: the first profile).")
@click.option("--bin-dir", metavar="DIR",
              help="Where the swarm-* commands are on the host the files are for "
                   "(default: this install's, beside this swarm-config).")
@click.option("--user", metavar="USER",
              help="The swarm's user (default: the owner of orchestrator.state_dir).")
@click.option("--key", "keys", multiple=True, metavar="NAME=KEYFILE",
              help="Drone NAME's ssh public key, - for stdin (authorized-keys, orchestrator; "
                   "repeatable).")
@click.option("--status-page", default=deploy.STATUS_PAGE, show_default=True, metavar="PATH",
              help="Where cron writes the status page (crontab; '' for none).")
@click.option("--metrics", default=deploy.METRICS_FILE, show_default=True, metavar="PATH",
              help="Where cron writes the figures for node_exporter (crontab; '' for none).")
@pass_run
def render(run_, role, name, profile_name, bin_dir, user, keys, status_page, metrics):
    """Print what a host of the swarm must have: make.conf lines, service files, crontab.

    drone NAME and client: the make.conf lines and binrepos.conf entry,
    drawn from the config (binhost.url, signing) and the build profile the
    last scan recorded (CHOST, ARCH). A drone keeps only host-local values
    of its own make.conf (swarm-drone builds with the profile's, and each
    claim names the binhost its build is for); a client must keep the
    profile's settings for Portage to take its binaries. For a drone, then
    its service: OpenRC's conf.d and init script, systemd's unit.

    One file, ready to install, naming this install's commands by absolute
    path and this config file (cron, sshd, su, OpenRC and systemd do not
    search a login PATH):

    \b
      crontab          the swarm user's crontab, with its PATH= line
      postsync         /etc/portage/postsync.d/swarm-fresh
      sshd             the sshd_config lines for the drones' logins
      authorized-keys  ~swarm/.ssh/authorized_keys: each drone's key pinned
                       to the gateway (--key NAME=KEYFILE)
      systemd-unit     /etc/systemd/system/swarm-drone@.service
      openrc-init      /etc/init.d/swarm-drone
      openrc-conf NAME /etc/conf.d/swarm-drone
      orchestrator     the orchestrator's four, each under ==> where it goes <==

    \b
    Examples:
      swarm-config render drone d1
      swarm-config render client --profile desktop
      ssh orchestrator swarm-config render client >> /etc/portage/make.conf  # then split it
      swarm-config render crontab | crontab -u swarm -
      swarm-config render authorized-keys --key d1=d1.pub >> ~swarm/.ssh/authorized_keys
      swarm-config render systemd-unit > /etc/systemd/system/swarm-drone@.service
    """
    config = run_.config()
    if role in deploy.KINDS:
        click.echo(deploy.render(config, role, name, bin_dir=bin_dir, user=user, keys=keys,
                                 status_page=status_page, metrics_file=metrics), nl=False)
        return
    profile_name = profile_name or config.profile_names()[0]
    if role == "drone" and profile_name != config.profile_names()[0]:
        raise ConfigError("render drone takes no --profile: a drone builds for every profile")
    if role == "drone":
        if not name:
            raise ConfigError("render drone takes the drone's NAME")
        config.drone(name)
    elif name:
        raise ConfigError("render client takes no NAME")
    current = _recorded_profile(run_, profile_name)
    text = (drift.render_drone(config, name, current) if role == "drone"
            else drift.render_client(config.for_profile(profile_name), current))
    click.echo(text, nl=False)
    if role == "drone":
        click.echo(deploy.drone_service(deploy.host_for(config, bin_dir, user or "swarm"), name),
                   nl=False)


def _recorded_profile(run_, name: str) -> dict | None:
    """Build profile NAME as its last scan recorded it (None: no queue, or no scan ran emerge yet)."""
    if not run_.config().database.exists():
        return None
    from .. import profile

    return profile.recorded(run_.database(writer=False), name)


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
    click.echo(drift.binrepos_conf(run_.config(), name, channel), nl=False)


def main():
    run(cli)
