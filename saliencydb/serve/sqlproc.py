"""The SQL console's statements and the web app's ``where=`` filters, each run in a process of its own with a
memory limit.

DuckDB materialises a whole vector of rows (up to 2,048) before the first row can be read, and its
``memory_limit`` does not count the strings a query builds, so ``SELECT repeat('x', 1000000) FROM
range(1000)`` takes a gigabyte inside the process that runs it whatever the row or byte limits on its
result. The console's statements therefore run in a child process (started by a fork server that has
the query layer loaded, so a statement costs one fork and the opening of the pinned version): its data
segment is limited (``RLIMIT_DATA``, ``SQL_MEMORY_BYTES`` over what the child holds when it starts),
its time too (DuckDB's interrupt at the request's limit; the child is killed a little after it), its CPU
priority is below the server's (nice 10: pages and neighbours come first), and it
sends back only the result the console shows, already cut at its row and byte limits (``api.sql``).
A statement that runs out of memory, crashes or overruns is one line; the server is untouched
(docs/architecture.md, "serve")."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from ..errors import QueryError, SaliencyDBError

SQL_MEMORY_BYTES = 1 << 30  # what one console statement may allocate, beyond the child's own start
CHILD_NICENESS = 10  # a child's scheduling priority below the server's (nice 10: about a tenth of a core's share)
GRACE_S = 5.0  # how long past its time limit a child may take to answer before it is killed
_PRELOAD = ["saliencydb.serve.api", "saliencydb.query"]


class SQLProcesses:
    """Runs console statements in child processes of one fork server (started on first use)."""

    def __init__(self, memory_bytes: int = SQL_MEMORY_BYTES):
        self.memory_bytes = memory_bytes
        self._context = None

    def context(self):
        if self._context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
            self._context = ctx
        return self._context

    def sql(self, db, query: str, max_rows: int, timeout_s: float) -> dict:
        """``api.sql(db, query, max_rows)`` run in a child over the same pinned version: its document, or a
        QueryError with one line (a SQL error, the time or the memory limit)."""
        return self._run(db, ("sql", query, max_rows), timeout_s)

    def ids_where(self, db, where: str, split: str | None, timeout_s: float):
        """``db.ids_where(where, split)`` run in a child over the same pinned version: the matching sample ids."""
        return self._run(db, ("ids", where, split), timeout_s)

    def _run(self, db, task: tuple, timeout_s: float):
        ctx = self.context()
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, daemon=True,
                            args=(sender, str(Path(db.path)), db.commit, task, timeout_s, self.memory_bytes))
        child.start()
        sender.close()
        try:
            answer = receiver.recv() if receiver.poll(timeout_s + GRACE_S) else ("timeout", None)
        except (EOFError, OSError):
            answer = ("died", None)
        finally:
            receiver.close()
            child.join(0.5)
            if child.is_alive():
                child.kill()
                child.join()
        return self._answer(answer, child.exitcode, timeout_s)

    def _answer(self, answer: tuple, exitcode, timeout_s: float) -> dict:
        kind, value = answer
        if kind == "ok":
            return value
        if kind == "error":
            if "Out of Memory" in value:
                value += (f" (the web app gives one statement {self.memory_bytes >> 20} MiB of memory); select fewer, shorter or "
                          "narrower rows")
            raise QueryError(value)
        if kind == "timeout":
            raise QueryError(f"SQL error: the query ran longer than {timeout_s:g} s and was stopped; narrow it")
        raise QueryError(f"SQL error: the query needed more than {self.memory_bytes >> 20} MiB of memory (or its process "
                         f"failed, exit {exitcode}) and was stopped; select fewer, shorter or narrower rows")


def _child(sender, path: str, commit: int, task: tuple, timeout_s: float, memory_bytes: int) -> None:
    _limit_memory(memory_bytes)
    os.nice(CHILD_NICENESS)  # the server's own requests (pages, neighbours) come first for the CPU
    try:
        from ..query import open as open_db
        from . import api

        db = open_db(path, as_of=commit, threads=1)
        try:
            db.timeout_s = timeout_s
            what, *args = task
            answer = ("ok", api.sql(db, args[0], args[1], timeout_s) if what == "sql" else db.ids_where(*args))
        finally:
            db.close()
    except SaliencyDBError as e:
        answer = ("error", str(e))
    except MemoryError:
        answer = ("error", f"SQL error: the query needed more than {memory_bytes >> 20} MiB of memory and was stopped; "
                           "select fewer, shorter or narrower rows")
    try:
        sender.send(answer)
    except MemoryError:
        sender.send(("error", "SQL error: the result could not be sent back within the memory limit; select fewer rows"))
    finally:
        sender.close()


def _limit_memory(memory_bytes: int) -> None:
    """Limit this process's data segment (heap and private mappings) to what it holds now plus ``memory_bytes``."""
    import resource

    held = 0
    try:
        with open("/proc/self/status") as f:  # noqa: PTH123 - a kernel file, not the database
            for line in f:
                if line.startswith("VmData:"):
                    held = int(line.split()[1]) * 1024
    except OSError:
        return  # not Linux: no data-segment accounting to go by; the time limit still holds
    limit = held + memory_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
