"""swarm-drone: the build worker that runs on each drone."""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys

import click

from ..console import prog
from ..drone import Drone
from ..errors import ConfigError, SwarmError
from ..transport import Transport, for_drone
from .common import CONTEXT, SwarmCommand, config_option, pass_run, run, verbosity_options


@click.command(cls=SwarmCommand, context_settings=CONTEXT)
@config_option
@click.option("--drone", "name", envvar="SWARM_DRONE", metavar="NAME",
              help="This drone's [drones.NAME] [env SWARM_DRONE; default: the short host name].")
@click.option("--once", is_flag=True, help="Build at most one package, then exit.")
@click.option("--drain", is_flag=True,
              help="Build until nothing could become eligible without a new scan: nothing "
                   "eligible, nothing being built or published, no back-off ending within "
                   "delegate.idle_max_seconds (a failed build's longer back-off is left for "
                   "later).")
@click.option("--syslog", is_flag=True, help="Log to syslog (daemon facility) instead of stderr.")
@click.option("--facts", "print_facts", is_flag=True,
              help="Print this drone's facts as JSON and exit (what swarm-config check "
                   "--remote reads over ssh).")
@click.option("--base", "make_base", is_flag=True,
              help="Create or update the build root (drones.NAME.build_root) from the swarm's "
                   "binhost: the profile's @system, as binaries; then exit.")
@click.option("--profile", "profile_name", metavar="NAME",
              help="With --base: the build profile whose @system it holds [default: the first "
                   "profile of the config].")
@verbosity_options
@pass_run
def cli(run_, name, once, drain, syslog, print_facts, make_base, profile_name, verbose, quiet):
    """Build packages for the swarm: heartbeat, claim, emerge, upload, report.

    Each round sends a heartbeat (ARCH, CHOST, CFLAGS, ABI_X86, CUDA, jobs,
    load, free disk, the config's digest, how it isolates builds, what it is
    building), claims the package the orchestrator gives it (ssh gateway, or
    locally), and builds it in two steps, with PORTAGE_BINHOST set to the
    claim's binhost and the build profile's Portage configuration as
    PORTAGE_CONFIGROOT:

    \b
      emerge --oneshot --onlydeps --onlydeps-with-rdeps=n \
             --usepkg=y --getbinpkg=y --usepkg-exclude=CAT/PN =CPV
      emerge --oneshot --buildpkgonly --usepkg=n =CPV   (always compiled)

    Every build runs in a throw-away root (drones.NAME.isolation =
    "overlay", the default): a private mount namespace with an overlay over
    the build root (drones.NAME.build_root: the drone's own system, or a
    clean base), so the dependencies it installs and everything else it
    writes land in an upper layer under PORTAGE_TMPDIR/swarmtools/NAME/
    builds/, removed when the build ends; only PKGDIR and DISTDIR
    (writable), the repositories and the profile's configuration
    (read-only) are passed through. The drone's own system never changes,
    and every build starts from the build root alone. A drone that cannot
    set such a root up (not root, no overlayfs, no mount namespaces)
    refuses to start, naming the reason, unless its config says isolation
    = "none" (builds in its live system). What the builds' emerge logged
    is kept in PORTAGE_TMPDIR/swarmtools/NAME/emerge.log.

    The profile is the scan's configuration (make.conf, package.use, ...),
    fetched once per digest from the orchestrator; of this host's own
    make.conf only where-and-how-fast values are kept (PKGDIR, DISTDIR,
    PORTAGE_TMPDIR, MAKEOPTS, ...), so its own USE or package.use never
    reach a published binary. A drone whose CHOST or ARCH is not the
    profile's, or whose ebuild repositories are not at the scan's state
    even after its sync_command (default emerge --sync), gives the package
    back: never a build failure.

    Its build-time dependencies come from the binhost as binaries; each step
    is checked with --pretend first, and if emerge would compile anything
    but the claimed package, nothing is compiled: the package is reported
    as waiting for those dependencies (missing-binary-dependency). Then the
    new binary package is uploaded to staging/NAME/ with rsync and reported
    (or the build log is uploaded and the failure reported). Heartbeats
    continue while emerge runs, so a long build keeps its lease; a build
    with no output and (almost) no CPU time, under 2 % of a core, for
    delegate.max_silent_seconds is stopped and reported as stalled. Idle, it asks again after
    delegate.poll_seconds, doubling up to delegate.idle_max_seconds.
    Connection failures are retried; a finished build waits until it can
    be delivered.

    --base keeps a clean base up to date: `emerge --root BUILD_ROOT
    --usepkgonly --getbinpkg --update --deep --newuse @system` with the
    profile's configuration and binhost (nothing is compiled). Seed the
    first one from a stage3 tarball (see the README).

    SIGTERM or SIGINT stops the build (its processes are killed if they
    still run 10 s later), gives the package back (release) and exits 0.
    If the drone is killed, its build dies with it, and its next start
    removes the layers left behind. Runs as a service: see init/ for OpenRC
    and systemd.

    Exit codes: 0 stopped or done; 1 with --once, the build failed; 1 with
    --once/--drain, the orchestrator could not be reached; 1 --base failed;
    2 config error, or builds cannot be isolated here; 75 this drone
    already runs on this host.

    \b
    Examples:
      swarm-drone --drone d1 -v            # run in the foreground
      swarm-drone --drone d1 --once        # one package, e.g. from a test
      swarm-drone --drone d1 --facts | jq .chost
      swarm-drone --drone d1 --base        # bring the clean base up to date
    """
    if syslog:
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{prog()}[{os.getpid()}]: %(message)s"))
        logging.getLogger().handlers[:] = [handler]
    config = run_.config()
    if not name:
        name = socket.gethostname().split(".")[0]
        if name not in config.drones:
            raise ConfigError(f"no --drone given and this host's name '{name}' is not a "
                              f"[drones.NAME] of {config.path}")
    drone = Drone(config, name, _transport(config, name))
    if print_facts:
        from ..output import emit_json

        emit_json({**drone.facts(), "isolation_problem": drone.builder.isolation_problem()})
        return
    if make_base:
        code = drone.make_base(profile_name or config.profile_names()[0])
        if code:
            raise SwarmError(f"emerge exited {code} updating the build root "
                             f"{config.drone(name).build_root}")
        return
    drone.start()
    # A service, not a filter: an ssh that died before reading its request
    # (a connection sshd dropped) must be an error to retry, not our death.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, drone.terminate)
    signal.signal(signal.SIGINT, drone.terminate)
    logging.getLogger(__name__).info("drone %s started", name)
    sys.exit(drone.run(once=once, drain=drain))


def _transport(config, name: str) -> Transport:
    answer_here = None
    if config.drone(name).transport == "local":
        # On the orchestrator's host the drone answers its verbs itself, as the
        # gateway would: no swarm-delegate process a verb (the drone loads the
        # orchestrator's modules once instead, only here).
        from ..gateway import answer_here
    return for_drone(config, name, answer_here=answer_here)


def main():
    run(cli)
