"""Named steps where a test may kill or pause a command, to prove it crash safe.

A command calls crashpoint(VARIABLE, "step") between the steps whose order
matters; the test sets VARIABLE to "step:kill" or "step:pause=SECONDS".
Unset (always, outside the tests), it does nothing.
"""

from __future__ import annotations

import os
import signal
import time


def crashpoint(variable: str, step: str) -> None:
    """Kill or pause this process here if the test asked for it."""
    name, _, action = os.environ.get(variable, "").partition(":")
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("pause="):
        time.sleep(float(action.split("=", 1)[1]))
