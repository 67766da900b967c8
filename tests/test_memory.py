"""keep_freed_memory: large freed blocks are reused instead of being paged in again."""

import subprocess
import sys

from saliencydb.memory import keep_freed_memory

PROBE = """
import ctypes, resource, sys
from saliencydb.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
for _ in range(2):  # malloc, touch and free a 64 MiB block; the second round is measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default >= 10_000  # 64 MiB of fresh 4 KiB pages: 16,384 faults
    assert kept < 1_000


def test_the_command_line_keeps_freed_memory(monkeypatch):
    import saliencydb.memory as memory
    from helpers import run_cli

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda *a: calls.append(a) or True)
    run_cli("sql", "--help")
    assert calls == [()]
    assert keep_freed_memory() is True  # idempotent on this Linux/glibc machine
