"""Named crash points for fault-injection tests.

Setting ``SALIENCYDB_CRASH_AT=<name>`` (or ``<name>:<n>``, the n-th time) makes a writer
kill itself with SIGKILL when it reaches that point, so tests can stop a real process at an exact moment of the commit
protocol (after a part file is renamed but before the manifest lists it, and so on).
Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("part-written", "part-committed", "stats-written", "index-written")


_hits: dict[str, int] = {}  # per-process hit counts; only read when the variable is set


def crash_point(name: str) -> None:
    target = os.environ.get("SALIENCYDB_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
