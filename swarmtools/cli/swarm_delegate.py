"""The swarm-delegate console script: the gateway without click, every other verb with it.

Each ssh session of each drone starts here (``swarm-delegate gateway``, the
forced command of its key): that path loads no click, only :mod:`gateway`.
"""

from __future__ import annotations

import signal
import sys

from .. import gateway


def main() -> None:
    """Run the gateway, or the click group of swarm-delegate for anything else (--help too)."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if sys.argv[1:2] == ["gateway"] and not {"-h", "--help"} & set(sys.argv[2:]):
        sys.exit(gateway.main(sys.argv[2:]))
    from .delegate import main as click_main

    click_main()
