"""Named crash points for fault-injection tests.

Setting ``SALIENCYDB_CRASH_AT=<name>`` makes a writer kill itself with SIGKILL when it
reaches that point, so tests can stop a real process at an exact moment of the commit
protocol (after a part file is renamed but before the manifest lists it, and so on).
Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("part-written", "part-committed", "stats-written", "index-written")


def crash_point(name: str) -> None:
    if os.environ.get("SALIENCYDB_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
