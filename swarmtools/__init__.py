"""swarmtools: small commands that run a Gentoo binary-package build swarm."""

__version__ = "0.1.0"
