"""Admission of requests to ``saliencydb serve``: three lanes, each with a bounded number of requests at work
and a bounded queue, so a slow request never holds up a cheap one and no request waits without bound.

- ``sql``: the SQL console (``/sql`` with a query, ``/sql.csv``, ``/api/sql``): user SQL may run until its
  time limit, so few run at once (by default one per two cores) and few wait;
- ``model``: what runs the model or draws a figure (input-space maps, GradCAM, uploads, group profile plots):
  seconds of CPU each, one at a time by default (the model is not shared between threads);
- ``light``: everything else (pages, neighbours, samples, thumbnails, the JSON API): stored tables and
  indexes, answered in milliseconds, many at once.

A request that finds its lane's workers busy and its queue full, or that waits longer than the lane's
``wait_s``, gets ``503 Service Unavailable`` with ``Retry-After`` and one line; it never reaches the app
(docs/architecture.md, "serve")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from dataclasses import dataclass

from .auth import refuse


@dataclass(frozen=True)
class LaneLimits:
    """How many requests of a lane work at once, how many may wait, and for how long."""

    workers: int
    queue: int
    wait_s: float


def default_limits() -> dict[str, LaneLimits]:
    cores = os.cpu_count() or 1
    return {"sql": LaneLimits(max(1, cores // 2), 4, 15.0), "model": LaneLimits(1, 8, 30.0),
            "light": LaneLimits(16, 256, 30.0)}


def lane_of(method: str, path: str, query_string: bytes) -> str:
    """The lane a request belongs to (see the module's docstring)."""
    if path in ("/api/sql", "/sql.csv") or path == "/sql" and (method == "POST" or _has_param(query_string, b"q")):
        return "sql"
    if path.endswith(("/map.png", "/gradcam.png", "/profile.png")) or path in ("/api/search", "/search") and method == "POST":
        return "model"
    return "light"


def _has_param(query_string: bytes, name: bytes) -> bool:
    return any(part.split(b"=", 1)[0] == name for part in query_string.split(b"&"))


class _Lane:
    """A bounded pool of workers and a bounded first-come queue; a worker that leaves hands its place to the
    first request still waiting (plain counters and futures: all of it runs in the server's event loop)."""

    def __init__(self, name: str, limits: LaneLimits):
        self.name, self.limits = name, limits
        self.working = 0
        self._queue: collections.deque = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._queue)

    async def enter(self) -> bool:
        """Take a worker, waiting in the queue when there is room in it; False: refused (queue full or wait too long)."""
        if self.working < self.limits.workers and not self.waiting:
            self.working += 1
            return True
        if self.waiting >= self.limits.queue:
            return False
        handed = asyncio.get_running_loop().create_future()
        self._queue.append(handed)
        try:
            await asyncio.wait_for(handed, self.limits.wait_s)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:  # the client went away: a place handed over meanwhile is passed on
            if handed.done() and not handed.cancelled():
                self.leave()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._queue.remove(handed)
        return handed.done() and not handed.cancelled()

    def leave(self) -> None:
        while self._queue:
            handed = self._queue.popleft()
            if not handed.done():
                handed.set_result(True)  # this worker's place goes to the first request still waiting
                return
        self.working -= 1


class Lanes:
    """ASGI middleware: every HTTP request works in its lane's bounded pool, or gets a 503 at once."""

    def __init__(self, app, limits: dict[str, LaneLimits] | None = None):
        self.app = app
        self.limits = {**default_limits(), **(limits or {})}
        self._lanes: dict[str, _Lane] | None = None  # made in the server's event loop, on the first request

    def lanes(self) -> dict[str, _Lane]:
        if self._lanes is None:
            self._lanes = {name: _Lane(name, lim) for name, lim in self.limits.items()}
        return self._lanes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lane = self.lanes()[lane_of(scope.get("method", "GET"), scope.get("path", ""), scope.get("query_string", b""))]
        if not await lane.enter():
            return await _busy(scope, send, lane)
        try:
            return await self.app(scope, receive, send)
        finally:
            lane.leave()


async def _busy(scope, send, lane: _Lane) -> None:
    retry = max(1, int(lane.limits.wait_s // 3))
    await refuse(scope, send, 503, f"the server is busy: {lane.working} {lane.name} request(s) at work and "
                                   f"{lane.waiting} waiting; retry in {retry} s", ((b"retry-after", str(retry).encode()),))
