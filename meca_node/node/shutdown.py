"""A last-resort exit deadline for shutdown.

py-libp2p can hang in its own teardown; a node asked to stop must stop anyway.
"""

from __future__ import annotations

import os
import sys
import threading

#: after a stop request, the process exits within this many seconds whatever hangs
SHUTDOWN_DEADLINE_S = 4.0


def arm_exit_deadline(who: str, seconds: float = SHUTDOWN_DEADLINE_S, code: int = 0) -> None:
    """Exit the process with ``code`` after ``seconds`` unless it has exited by then."""

    def _force() -> None:
        sys.stderr.write(f"{who}: shutdown took longer than {seconds:g} s; exiting anyway\n")
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, _force)
    timer.daemon = True
    timer.start()
