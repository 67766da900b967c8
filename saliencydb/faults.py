"""Named crash points for fault-injection tests.

Setting ``SALIENCYDB_CRASH_AT=<name>`` (or ``<name>:<n>``, the n-th time) makes a writer
kill itself with SIGKILL when it reaches that point, so tests can stop a real process at an exact moment of the commit
protocol (after a part file is renamed but before the manifest lists it, and so on).
Unset, a crash point costs one dictionary lookup.

``SALIENCYDB_FAIL_AT=<name>`` (or ``<name>:<n>``) raises a ``RuntimeError`` there instead, as a library
(FAISS, Arrow) or a lack of memory would, so tests can check what a failed step leaves behind and says.
"""

from __future__ import annotations

import os
import signal

POINTS = ("part-written", "part-committed", "stats-written", "index-written")


_hits: dict[str, int] = {}  # per-process hit counts; only read when the variable is set


def crash_point(name: str) -> None:
    if _reached("SALIENCYDB_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached("SALIENCYDB_FAIL_AT", name):
        raise RuntimeError(f"injected failure at {name} (SALIENCYDB_FAIL_AT)")


def _reached(variable: str, name: str) -> bool:
    target = os.environ.get(variable)
    if not target:
        return False
    point, _, nth = target.partition(":")
    if point != name:
        return False
    key = f"{variable}:{name}"
    _hits[key] = _hits.get(key, 0) + 1
    return _hits[key] >= int(nth or 1)
