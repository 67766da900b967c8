"""Process-wide memory settings for long profiling jobs (glibc's malloc only).

A profiling pass allocates and frees the same large activation and gradient buffers batch
after batch. By default glibc hands every block above its mmap threshold (128 KiB, rising
to at most 32 MiB) fresh from the kernel and unmaps it when freed, so each batch pays a page
fault to zero every page again. Measured on a 2-core CPU, ResNet-50 at 224 px, batch 16:
424,000 page faults and 0.8 s of system time per batch, and 7.5 instead of 9.8 samples/s.

``keep_freed_memory`` asks malloc to serve large blocks from its heap and to keep freed
memory for reuse. The price: the process's resident memory stays at its peak until it
exits, which suits a batch job. It changes the whole process, so the library never calls
it by itself: the ``saliencydb`` command line does, and a Python program may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Serve blocks below ``limit_bytes`` from malloc's heap and keep up to that much freed memory.

    Returns True when the settings took effect (Linux with glibc), False elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave malloc alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = int(min(limit_bytes, 2**31 - 1))
    return all(mallopt(opt, value) == 1 for opt, value in
               ((_M_MMAP_THRESHOLD, limit), (_M_TRIM_THRESHOLD, limit), (_M_TOP_PAD, 64 << 20)))
