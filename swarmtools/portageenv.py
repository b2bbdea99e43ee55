"""Portage as the scan sees it, without touching this process's environment.

Every Portage object swarmtools makes (the binhost's index, the ebuild
metadata the dependency graph reads) is built from the scan's environment
(``scan.environment``: on a real host usually empty, in the demo and the
tests a prefix) passed in explicitly: no write to ``os.environ``, no use of
Portage's process-wide ``portage.settings``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

from .config import Config
from .errors import SwarmError

log = logging.getLogger(__name__)


def scan_environment(config: Config, **extra: str) -> dict[str, str]:
    """The environment the scan's emerge runs in, plus EXTRA."""
    return {**os.environ, **config.scan.environment, **extra}


def roots(env: dict[str, str]) -> tuple[str, str]:
    import portage

    # A prefix (the demo, the tests) names its EPREFIX in the environment;
    # a real host has Portage's own.
    eprefix = env.get("PORTAGE_OVERRIDE_EPREFIX", portage.const.EPREFIX)
    return eprefix, env.get("PORTAGE_CONFIGROOT") or eprefix or "/"


@contextlib.contextmanager
def _quiet_portage():
    # Portage writes its warnings to stderr; they become log lines, so -q
    # (cron) stays quiet and -v shows them.
    noise = io.StringIO()
    try:
        with contextlib.redirect_stderr(noise):
            yield
    finally:
        for line in filter(str.strip, noise.getvalue().splitlines()):
            log.warning("portage: %s", line.strip())


def settings(env: dict[str, str]):
    """A portage.config for ENV."""
    import portage

    eprefix, config_root = roots(env)
    try:
        with _quiet_portage():
            return portage.config(config_root=config_root, eprefix=eprefix, env=env)
    except (portage.exception.PortageException, ValueError) as exc:  # ValueError: make.conf syntax
        raise SwarmError(f"Portage cannot read its configuration under {config_root}: {exc}") from None


def ebuild_db(env: dict[str, str]):
    """(settings, portdbapi) of the ebuild repositories as the scan sees them."""
    import portage

    eprefix, config_root = roots(env)
    try:
        with _quiet_portage():
            trees = portage.create_trees(config_root=config_root, env=env, eprefix=eprefix)
    except portage.exception.PortageException as exc:
        raise SwarmError(f"Portage cannot read its configuration under {config_root}: {exc}") from None
    root = trees._target_eroot if hasattr(trees, "_target_eroot") else next(iter(trees))
    return trees[root]["porttree"].dbapi.settings, trees[root]["porttree"].dbapi
