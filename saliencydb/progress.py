"""Progress reporting: the library reports through a small protocol; the CLI draws it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def task(self, description: str, total: int | None, unit: str = "samples") -> "Task": ...

    def log(self, message: str) -> None: ...


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Reports nothing (library default)."""

    def task(self, description: str, total: int | None, unit: str = "samples") -> _NullTask:
        return _NullTask()

    def log(self, message: str) -> None:
        pass


class RichProgress:
    """Progress bars with rate and ETA on stderr (used by the CLI)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as _P, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        if not self.console.is_terminal:  # a log file or a pipe: wide enough that no column is cut off
            self.console = Console(stderr=True, width=160)
        self._progress = _P(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._started = False

    def task(self, description: str, total: int | None, unit: str = "samples"):
        if total == 0:  # nothing to do: no empty bar
            return _NullTask()
        if not self._started:  # nothing is drawn (not even a blank line) until there is a task
            self._progress.start()
            self._started = True
        return _RichTask(self._progress, description, total, unit)

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


class _RichTask:
    def __init__(self, progress, description: str, total: int | None, unit: str):
        import time

        self._time = time.perf_counter
        self._p = progress
        self._unit = unit
        self._start = self._time()
        self._done = 0
        self._id = progress.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        self._done += n
        elapsed = max(self._time() - self._start, 1e-9)
        self._p.update(self._id, advance=n, rate=f"{self._done / elapsed:,.1f} {self._unit}/s")

    def close(self) -> None:
        self._p.stop_task(self._id)
