"""Web-app benchmark: latency and throughput of ``saliencydb serve`` under concurrent clients, on the demo
database (2,000 held-out digits of the demo CNN, with error groups).

    python benchmarks/serve.py [--clients 8] [--requests 50] [--seconds S] [--cache-dir DIR | --db PATH] [--json] [--save FILE]
                               [--mixed | --no-mixed] [--mixed-clients 32] [--slow-sql 4] [--mixed-seconds 30] [--sql-timeout S]

The database is the demo's: ``saliencydb demo --quiet`` run in ``--cache-dir`` (default: a temporary
directory, removed afterwards; an existing ``DIR/demo-db`` is reused: the demo only brings it up to date), or
any database given with ``--db`` (served as it is).
The server is the real command, ``python -m saliencydb.cli serve --db DB --port PORT --no-token`` (loopback,
so no token to send: the clients time the app, not a header check; with ``--sql-timeout S`` also
``--query-timeout S``, else the server's default time limit of 10 s), started as a subprocess on 127.0.0.1 at a
free port; the benchmark waits (at most ``--start-timeout`` s) until
``/api/info`` answers and always stops the server at the end.

Measured, after one untimed warm-up request of each kind (reported on its own: the first overview reads
the shared-mistake statistics from the stored knn table, which are then cached per database version; it
never searches the neighbour graph: a database without the table shows a note instead; the first sample
page and neighbour query pay for reading the sample metadata and profiles, and, where a search is needed,
the index), three request kinds, each as its own phase:

  overview    GET /                              the overview page (statistics cached, error groups queried)
  sample      GET /sample/{id}                   a sample page: metadata, top units, 10 neighbours in both spaces
  neighbors   GET /api/neighbors/{id}?k=10       a JSON neighbour query in saliency space

In each phase ``--clients`` threads, each with its own keep-alive HTTP/1.1 connection (``http.client``),
send requests back to back: ``--requests`` each, or until ``--seconds`` have passed (whichever comes first;
``--requests 0`` means the time limit alone). Every client draws its sample ids at random (seeded by
``--seed``, the kind and the client) among the database's ids, read once through ``/api/sql``. A latency is
the wall time from sending a request to having read its whole body, for every request that got an HTTP
answer; an error is an answer other than 200 or a failed request. Reported per kind: count, errors, p50, p90,
p99 and max latency (linear interpolation between ranks), throughput (answered requests per second of the
phase's wall time) and the server's CPU time per request (from /proc, Linux only).

The target is a p99 under 200 ms for neighbour queries (with the chosen number of clients and no errors);
the output says whether it was met.

Then (unless ``--no-mixed``) the **mixed phase**: ``--mixed-clients`` threads at once, each with its own
keep-alive connection, for ``--mixed-seconds``, each request drawn at random: half of them neighbour queries
(``GET /api/neighbors/{id}?k=10``), half page loads (``GET /``, ``GET /sample/{id}`` and, when the database
has error groups, ``GET /group/{cluster}``, equally likely); meanwhile ``--slow-sql`` further threads each
send a deliberately slow console query, ``POST /api/sql`` with form field ``q`` =
``SELECT count(*) FROM range(6000000000) WHERE range % 7 = 1`` (and the app's own ``Origin``, which a POST
needs), again and again until the phase ends. A slow query is answered 400 "ran longer than 10 s" at the
server's time limit (10 s, or ``--sql-timeout``: ``cut_at_limit``), 200 when a fast machine finishes it
within the limit (``completed``), or 503 with ``Retry-After`` when the SQL lane is full or its wait too long
(``busy_503``: the designed answer, not an error; that thread then waits the ``Retry-After``, at most until
the phase ends, and goes on with a fresh connection: the server closes one idle for 5 s). No new request
starts after the phase's end; the slow queries still running or queued then (``in_flight_at_end``) are
awaited, so the SQL lane is idle again for the next check. Reported per kind
(neighbors, pages, slow_sql): count, errors, p50/p90/p99/max. The target line: neighbour-query p99 at most
200 ms, with no errors, while the slow SQL runs.

Last, the **big-result check**: one ``POST /api/sql`` of ``SELECT repeat('x', 1000000) AS a FROM
range(1000)`` (a gigabyte of strings), with the server process's ``VmRSS`` and ``VmHWM`` (``/proc/PID/status``)
before and after; the target is the server's RSS under 1 GB afterwards (the statement runs in a child with a
1 GiB data limit: its answer is expected to be a 400 with one line, the server's memory unmoved).

Notes on reading the numbers:

* Requests are admitted to three lanes (``saliencydb/serve/lanes.py``), each with a bounded number of
  workers and a bounded queue: ``sql`` (the console: by default one statement per two cores at work, 4
  waiting, at most 15 s), ``model`` (model runs and figures: one at a time) and ``light`` (pages, neighbours,
  the JSON API: 16 at work, 256 waiting). Past its queue (or its wait) a request gets 503 with
  ``Retry-After`` at once; it never reaches the app. The requests of a lane share the open database version
  (no global lock: ``query.Database`` is shared between threads; only the switch to a new version is
  serialised), so with N clients latency grows with the contention for the CPU (and Python's GIL), not
  with a queue behind one request.
* Each console SQL statement runs in a child process forked from a fork server, with a 1 GiB data-segment
  limit and the server's time limit, 10 s by default (``saliencydb/serve/sqlproc.py``): a slow or huge
  statement costs the server a worker of the SQL lane and the CPU its child takes, not its memory.
  ``saliencydb serve`` sets these with ``--query-timeout`` (the SQL lane's wait becomes at least the time
  limit + 5 s), ``--sql-workers`` and ``--sql-memory``; the benchmark passes only ``--query-timeout`` (its
  ``--sql-timeout``) and otherwise runs the defaults.
* A stored sample's neighbours are read from the stored neighbour graph (the ``knn`` table) when it holds
  exactly the answer a search would give: the database has one split and the query has no filter, as here
  for the demo database (one split); a database with several splits (e.g. the tests') is searched. The
  mixed phase reports which one its neighbour queries got (``neighbors_from_stored_graph``).
* The clients run in this process, on the same machine as the server; on a 2-core machine they take a share
  of the CPU (32 client threads and the slow queries' child processes included). Timings are only
  meaningful on an otherwise idle machine: the load average before and after the run is printed.
* Pages are fetched as HTML only; the thumbnails a browser would then load (``/img/{id}.png``) are not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

from machine import cpu_name, usable_cores  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
KINDS = {"overview": "/", "sample": "/sample/{id}", "neighbors": "/api/neighbors/{id}?k=10"}
TARGET_KIND, TARGET_P99_MS = "neighbors", 200.0
ID_PAGE = 1000  # the server returns at most 1,000 rows per SQL query: the ids are read in pages
SLOW_SQL = "SELECT count(*) FROM range(6000000000) WHERE range % 7 = 1"  # seconds of CPU: cut at the server's limit
BIG_SQL = "SELECT repeat('x', 1000000) AS a FROM range(1000)"  # a gigabyte of strings
MIXED_PAGES = ["/", "/sample/{id}", "/group/{cluster}"]  # the last only when the database has error groups
MIXED_NEIGHBORS = KINDS["neighbors"]
SERVER_SQL_TIMEOUT_S = 10.0  # the server's default --query-timeout
RSS_TARGET_BYTES = 10**9  # the server's RSS after the big result: under 1 GB


class BenchmarkError(RuntimeError):
    """The database could not be built or the server did not start or answer."""


# -- the database -----------------------------------------------------------------------------------------
def demo_database(cache_dir: Path, timeout: float) -> tuple[Path, float, bool]:
    """``cache_dir/demo-db``, built by ``saliencydb demo --quiet`` (which brings an existing one up to date in a few
    seconds); (path, seconds, whether it was there before)."""
    db = cache_dir / "demo-db"
    existed = (db / "manifest.json").is_file()
    cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "saliencydb.cli", "demo", "--quiet"], cwd=cache_dir,
                             capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"`saliencydb demo` did not finish within {timeout:.0f} s") from None
    if out.returncode != 0 or not db.is_dir():
        raise BenchmarkError(f"`saliencydb demo` failed (exit {out.returncode}): {(out.stderr or out.stdout)[-2000:]}")
    return db, time.perf_counter() - t0, existed


def _env() -> dict:
    """The environment of the subprocesses: this checkout's package first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# -- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``saliencydb serve`` in a subprocess; ``start()`` waits until ``/api/info`` answers, ``stop()`` ends it."""

    def __init__(self, db: Path, port: int, log_dir: Path, sql_timeout: float | None = None):
        self.db, self.port, self.log_path = db, port, log_dir / "serve.log"
        self.sql_timeout = sql_timeout  # the server's --query-timeout, or None for its default
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.exit_code: int | None = None

    def start(self, timeout: float) -> None:
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        try:
            extra = [] if self.sql_timeout is None else ["--query-timeout", f"{self.sql_timeout:g}"]
            self.proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(self.db),
                                          "--port", str(self.port), "--host", HOST, "--no-token", *extra],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env())
        finally:
            log.close()
        deadline, last = t0 + timeout, "no answer yet"
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"the server exited with status {self.proc.returncode} before answering: "
                                     f"{self.log_tail() or '(no output)'}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=max(1.0, deadline - time.perf_counter()))
                conn.request("GET", "/api/info")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    self.start_seconds = time.perf_counter() - t0
                    return
                last = f"HTTP {resp.status}: {body[:300]!r}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        raise BenchmarkError(f"the server did not answer /api/info within {timeout:.0f} s ({last}); "
                             f"its output: {self.log_tail() or '(none)'}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def memory(self) -> dict | None:
        """The server process's ``VmRSS`` and ``VmHWM`` (its peak RSS) in bytes (Linux), or None."""
        try:
            lines = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        except (OSError, AttributeError):
            return None
        out = {}
        for line in lines:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024  # kB
        return out if len(out) == 2 else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.exit_code = self.proc.returncode


# -- the clients ------------------------------------------------------------------------------------------
def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    """GET ``path`` on a keep-alive connection: (status, body, seconds to the end of the body)."""
    t = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body, time.perf_counter() - t


def get_json(port: int, path: str, timeout: float) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        status, body, _ = get(conn, path)
    finally:
        conn.close()
    if status != 200:
        raise BenchmarkError(f"GET {path} answered HTTP {status}: {body[:500]!r}")
    return json.loads(body)


def post_sql(conn: http.client.HTTPConnection, port: int, query: str) -> tuple[int, dict, bytes, float]:
    """``POST /api/sql`` with form field ``q`` (and the app's own ``Origin``, which a POST needs) on a keep-alive
    connection: (status, headers with lower-case names, body, seconds to the end of the body)."""
    body = urllib.parse.urlencode({"q": query})
    t = time.perf_counter()
    conn.request("POST", "/api/sql", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{HOST}:{port}"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.perf_counter() - t


def group_ids(port: int, timeout: float) -> list[int]:
    """The database's error groups (``saliencydb clusters``), or [] when it has none (or no clusters table)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        status, body, _ = get(conn, "/api/sql?q=" + urllib.parse.quote("SELECT DISTINCT cluster FROM clusters ORDER BY 1"))
    finally:
        conn.close()
    if status != 200:
        return []
    return [int(r["cluster"]) for r in json.loads(body).get("rows", [])]


def sample_ids(port: int, timeout: float) -> list[int]:
    """All the database's sample ids, read through ``/api/sql`` in pages (it answers at most 1,000 rows)."""
    ids: list[int] = []
    while True:
        q = f"SELECT sample_id FROM samples ORDER BY sample_id LIMIT {ID_PAGE} OFFSET {len(ids)}"
        rows = get_json(port, "/api/sql?q=" + urllib.parse.quote(q), timeout)["rows"]
        ids += [int(r["sample_id"]) for r in rows]
        if len(rows) < ID_PAGE:
            break
    if not ids:
        raise BenchmarkError("the database has no samples")
    return ids


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted ``values``, interpolated linearly between ranks (numpy's default)."""
    pos = (len(values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def latency_stats(latencies: list[float]) -> dict:
    """p50, p90, p99 and max (ms) of ``latencies`` (seconds), None where there are none."""
    lat = sorted(latencies)
    return {f"{name}_ms": round(1000 * percentile(lat, q), 2) if lat else None
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


def run_phase(server: Server, kind: str, ids: list[int], clients: int, requests: int, seconds: float | None,
              seed: int, timeout: float) -> dict:
    """``clients`` threads sending ``kind`` requests back to back; the phase's statistics."""
    template = KINDS[kind]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline: list[float] = [math.inf]

    def client(i: int) -> None:
        rng = random.Random(f"{seed}:{kind}:{i}")
        conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
        start.wait()
        n = 0
        try:
            while (requests <= 0 or n < requests) and time.perf_counter() < deadline[0]:
                path = template.format(id=rng.choice(ids))
                n += 1
                try:
                    status, body, dt = get(conn, path)
                except (OSError, http.client.HTTPException) as e:
                    errors[i].append(f"GET {path}: {type(e).__name__}: {e}")
                    conn.close()  # the next request opens a fresh connection
                    continue
                latencies[i].append(dt)
                if status != 200:
                    errors[i].append(f"GET {path}: HTTP {status}: {body[:200].decode(errors='replace')}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds if seconds else math.inf
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = server.cpu_seconds()
    lat = sorted(x for per in latencies for x in per)
    errs = [e for per in errors for e in per]
    count = len(lat) + sum(1 for e in errs if ": HTTP " not in e)  # answered + failed requests
    row = {"kind": kind, "path": template, "clients": clients, "count": count, "errors": len(errs),
           "wall_seconds": round(wall, 3), "requests_per_s": round(len(lat) / wall, 2) if wall > 0 else None,
           "cut_by_time": bool(seconds) and (requests <= 0 or count < clients * requests),
           "error_examples": errs[:5]}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        row[f"{name}_ms"] = round(1000 * percentile(lat, q), 2) if lat else None
    row["mean_ms"] = round(1000 * sum(lat) / len(lat), 2) if lat else None
    row["server_cpu_ms_per_request"] = (round(1000 * (cpu1 - cpu0) / len(lat), 2)
                                        if lat and cpu0 is not None and cpu1 is not None else None)
    return row


def run_mixed(server: Server, ids: list[int], groups: list[int], clients: int, slow: int, seconds: float,
              seed: int, timeout: float, sql_timeout: float) -> dict:
    """The mixed phase: ``clients`` threads sending page loads and neighbour queries for ``seconds`` while ``slow``
    threads send the slow SQL query again and again; statistics per kind (neighbors, pages, slow_sql)."""
    pages = MIXED_PAGES if groups else MIXED_PAGES[:2]
    # per client: (kind, path template, status or None for a failed request, seconds or None, error or None)
    records: list[list[tuple]] = [[] for _ in range(clients)]
    slow_records: list[list[tuple]] = [[] for _ in range(slow)]  # (outcome, status, seconds, detail)
    in_flight = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + slow + 1)
    deadline: list[float] = [math.inf]

    def client(i: int) -> None:
        rng = random.Random(f"{seed}:mixed:{i}")
        conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                template = MIXED_NEIGHBORS if rng.random() < 0.5 else rng.choice(pages)
                kind = "neighbors" if template == MIXED_NEIGHBORS else "pages"
                path = template.format(id=rng.choice(ids), cluster=rng.choice(groups) if groups else 0)
                try:
                    status, body, dt = get(conn, path)
                except (OSError, http.client.HTTPException) as e:
                    records[i].append((kind, template, None, None, f"GET {path}: {type(e).__name__}: {e}"))
                    conn.close()
                    continue
                err = None if status == 200 else f"GET {path}: HTTP {status}: {body[:200].decode(errors='replace')}"
                records[i].append((kind, template, status, dt, err))
        finally:
            conn.close()

    def slow_client(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                with lock:
                    in_flight[0] += 1
                try:
                    status, headers, body, dt = post_sql(conn, server.port, SLOW_SQL)
                except (OSError, http.client.HTTPException) as e:
                    slow_records[i].append(("error", None, None, f"POST /api/sql: {type(e).__name__}: {e}"))
                    conn.close()
                    continue
                finally:
                    with lock:
                        in_flight[0] -= 1
                text = body[:300].decode(errors="replace")
                if status == 200:
                    slow_records[i].append(("completed", status, dt, text))
                elif status == 400 and "ran longer than" in text:
                    slow_records[i].append(("cut_at_limit", status, dt, text))
                elif status == 503 and "retry-after" in headers:
                    slow_records[i].append(("busy_503", status, dt, text))
                    try:
                        wait = float(headers["retry-after"])
                    except ValueError:
                        wait = 1.0
                    time.sleep(max(0.0, min(wait, deadline[0] - time.perf_counter())))
                    conn.close()  # the server closes a connection idle for 5 s (uvicorn's keep-alive): a fresh one
                else:
                    slow_records[i].append(("error", status, dt, f"POST /api/sql: HTTP {status}: {text}"))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    slow_threads = [threading.Thread(target=slow_client, args=(i,), daemon=True) for i in range(slow)]
    for t in threads + slow_threads:
        t.start()
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with lock:
        still_running = in_flight[0]
    for t in slow_threads:  # the slow queries still running: awaited, so the SQL lane is idle afterwards
        t.join()
    drained = time.perf_counter() - t0 - wall
    cpu1 = server.cpu_seconds()

    def row(rs: list[tuple]) -> dict:
        errs = [r[4] for r in rs if r[4]]
        lat = [r[3] for r in rs if r[3] is not None]
        return {"count": len(rs), "errors": len(errs), **latency_stats(lat),
                "requests_per_s": round(len(lat) / wall, 2) if wall > 0 else None, "error_examples": errs[:5]}

    flat = [r for per in records for r in per]
    kinds = {"neighbors": row([r for r in flat if r[0] == "neighbors"]), "pages": row([r for r in flat if r[0] == "pages"])}
    kinds["pages"]["by_path"] = {p: row([r for r in flat if r[1] == p]) for p in pages}
    for by in kinds["pages"]["by_path"].values():
        del by["error_examples"]
    sl = [r for per in slow_records for r in per]
    outcome = {o: sum(1 for r in sl if r[0] == o) for o in ("cut_at_limit", "completed", "busy_503", "error")}
    cut = sorted(r[2] for r in sl if r[0] == "cut_at_limit")
    kinds["slow_sql"] = {"count": len(sl), "errors": outcome["error"], "cut_at_limit": outcome["cut_at_limit"],
                         "completed": outcome["completed"], "busy_503": outcome["busy_503"],
                         "in_flight_at_end": still_running, **latency_stats([r[2] for r in sl if r[2] is not None]),
                         "cut_at_limit_ms": {"min": round(1000 * cut[0], 2), "max": round(1000 * cut[-1], 2)} if cut else None,
                         "error_examples": [r[3] for r in sl if r[0] == "error"][:5],
                         "busy_examples": [r[3] for r in sl if r[0] == "busy_503"][:2]}
    n = kinds["neighbors"]
    met = n["errors"] == 0 and n["p99_ms"] is not None and n["p99_ms"] <= TARGET_P99_MS
    return {"clients": clients, "slow_sql_clients": slow, "seconds": seconds, "wall_seconds": round(wall, 3),
            "slow_sql_drain_seconds": round(drained, 3), "slow_sql": SLOW_SQL,
            "mix": {"neighbors": 0.5, "pages": 0.5, "page_paths": pages, "neighbor_path": MIXED_NEIGHBORS},
            "groups": len(groups), "sql_timeout_s": sql_timeout, "sql_lane": sql_lane(sql_timeout),
            "server_cpu_seconds": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
            "kinds": kinds,
            "target": {"kind": "neighbors", "p99_ms_at_most": TARGET_P99_MS, "p99_ms": n["p99_ms"], "met": met,
                       "while_slow_sql": slow > 0 and len(sl) + still_running > 0}}


def sql_lane(sql_timeout: float) -> dict | None:
    """The SQL lane's limits the server runs with: its defaults on this machine, the wait at least the time limit
    + 5 s (as ``saliencydb serve`` sets them without ``--sql-workers``)."""
    try:
        from saliencydb.serve.lanes import default_limits
    except ImportError:
        return None
    lim = default_limits()["sql"]
    return {"workers": lim.workers, "queue": lim.queue, "wait_s": max(lim.wait_s, sql_timeout + 5)}


def big_result_check(server: Server, timeout: float, at_start: dict | None) -> dict:
    """One console query with a gigabyte of result strings; the server process's memory before and after (and,
    for reference, ``at_start``: once it first answered, before any phase)."""
    before = server.memory()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    try:
        status, _, body, dt = post_sql(conn, server.port, BIG_SQL)
        answer = body[:300].decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        status, dt, answer = None, None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    time.sleep(0.2)
    after = server.memory()

    def mb(m: dict | None, key: str) -> float | None:
        return None if m is None else round(m[key] / 1e6, 1)

    rss_after = None if after is None else after["VmRSS"]
    return {"query": BIG_SQL, "status": status, "seconds": None if dt is None else round(dt, 3), "answer": answer,
            "rss_mb": {"at_start": mb(at_start, "VmRSS"), "before": mb(before, "VmRSS"), "after": mb(after, "VmRSS")},
            "hwm_mb": {"before": mb(before, "VmHWM"), "after": mb(after, "VmHWM")},
            "target": {"rss_mb_below": RSS_TARGET_BYTES / 1e6, "met": None if rss_after is None else rss_after < RSS_TARGET_BYTES}}


# -- the run ----------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu, usable = cpu_name(), usable_cores()

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "torch": version("torch"),
            "python": platform.python_version(), "uvicorn": version("uvicorn"), "starlette": version("starlette")}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def benchmark(args) -> dict:
    t_start = time.perf_counter()
    load_before = load_average()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="saliencydb-serve-bench-")))
        if args.db is not None:
            db, build_s, reused = args.db.resolve(), 0.0, True
        else:
            db, build_s, reused = demo_database((args.cache_dir or work).resolve(), args.build_timeout)
        server = Server(db, args.port or free_port(), work, args.sql_timeout)
        stack.callback(server.stop)  # always, whatever fails below
        server.start(args.start_timeout)
        memory_at_start = server.memory()
        info = get_json(server.port, "/api/info", args.timeout)
        ids = sample_ids(server.port, args.timeout)
        # warm-up: one request of each kind, in this order, timed on its own
        warmup, conn = {}, http.client.HTTPConnection(HOST, server.port, timeout=args.timeout)
        try:
            for kind in args.kinds:
                path = KINDS[kind].format(id=ids[0])
                status, body, dt = get(conn, path)
                if status != 200:
                    raise BenchmarkError(f"warm-up GET {path} answered HTTP {status}: {body[:500]!r}; "
                                         f"server output: {server.log_tail() or '(none)'}")
                warmup[kind] = round(1000 * dt, 2)
        finally:
            conn.close()
        phases = []
        for kind in args.kinds:
            phases.append(run_phase(server, kind, ids, args.clients, args.requests, args.seconds, args.seed, args.timeout))
            if not server.alive():
                raise BenchmarkError(f"the server died during the {kind} phase (exit {server.proc.returncode}): "
                                     f"{server.log_tail() or '(no output)'}")
        mixed = big = None
        if args.mixed:
            groups = group_ids(server.port, args.timeout)
            note = get_json(server.port, MIXED_NEIGHBORS.format(id=ids[0]), args.timeout).get("note") or ""
            mixed = run_mixed(server, ids, groups, args.mixed_clients, args.slow_sql, args.mixed_seconds, args.seed,
                              args.timeout, args.sql_timeout or SERVER_SQL_TIMEOUT_S)
            mixed["neighbors_from_stored_graph"] = "stored neighbour graph" in note
            if not server.alive():
                raise BenchmarkError(f"the server died during the mixed phase (exit {server.proc.returncode}): "
                                     f"{server.log_tail() or '(no output)'}")
            big = big_result_check(server, args.timeout, memory_at_start)
            if not server.alive():
                raise BenchmarkError(f"the server died during the big-result check (exit {server.proc.returncode}): "
                                     f"{server.log_tail() or '(no output)'}")
        log_tail = server.log_tail()
    # the ExitStack has stopped the server and removed the temporary directory
    target = next((p for p in phases if p["kind"] == TARGET_KIND), None)
    met = None if target is None else (target["errors"] == 0 and target["p99_ms"] is not None
                                       and target["p99_ms"] < TARGET_P99_MS)
    return {
        "machine": machine_info(),
        "load_average": {"before": load_before, "after": load_average()},
        "settings": {"clients": args.clients, "requests": args.requests, "seconds": args.seconds, "seed": args.seed,
                     "kinds": args.kinds, "client": f"http.client (keep-alive), {args.clients} threads"},
        "database": {"path": str(db), "samples": info.get("samples"), "ids": len(ids),
                     "units": (info.get("units") or {}).get("count"), "built_seconds": round(build_s, 2),
                     "source": "--db" if args.db is not None else "demo", "reused": reused},
        "server": {"pid": server.proc.pid, "host": HOST, "port": server.port,
                   "start_seconds": round(server.start_seconds, 3), "exit_code": server.exit_code,
                   "log_tail": log_tail},
        "warmup_ms": warmup,
        "phases": phases,
        "target": {"kind": TARGET_KIND, "p99_ms_below": TARGET_P99_MS,
                   "p99_ms": None if target is None else target["p99_ms"], "met": met},
        "mixed": mixed,
        "big_result": big,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def print_tables(r: dict) -> None:
    m, d, s = r["machine"], r["database"], r["settings"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), torch {m['torch']}, "
          f"python {m['python']}, uvicorn {m['uvicorn']}")
    print(f"load average before / after: {r['load_average']['before']} / {r['load_average']['after']}")
    how = ("given with --db" if d["source"] == "--db" else
           f"{'updated' if d['reused'] else 'built'} by `saliencydb demo` in {d['built_seconds']:.0f} s")
    print(f"database: {d['path']} ({d['samples']:,} samples, {d['units']:,} units; {how})")
    limit = (f"{s['requests']} requests each" if s["requests"] > 0 else "") + \
            (f"{' or ' if s['requests'] > 0 else ''}{s['seconds']:g} s per kind" if s["seconds"] else "")
    print(f"server up in {r['server']['start_seconds']:.1f} s; {s['clients']} concurrent clients, {limit}\n")
    print("warm-up (first request of each kind): " + ", ".join(f"{k} {v:,.0f} ms" for k, v in r["warmup_ms"].items()) + "\n")

    def ms(v):
        return "-" if v is None else f"{v:,.1f}"

    print("| request | path | count | errors | p50 ms | p90 ms | p99 ms | max ms | req/s | server CPU ms/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in r["phases"]:
        print(f"| {p['kind']} | `{p['path']}` | {p['count']} | {p['errors']} | {ms(p['p50_ms'])} | {ms(p['p90_ms'])} | "
              f"{ms(p['p99_ms'])} | {ms(p['max_ms'])} | {ms(p['requests_per_s'])} | {ms(p['server_cpu_ms_per_request'])} |")
    for p in r["phases"]:
        for e in p["error_examples"]:
            print(f"  error ({p['kind']}): {e}")
    t = r["target"]
    if t["met"] is not None:
        verdict = "met" if t["met"] else "NOT met"
        print(f"\ntarget: {t['kind']} p99 < {t['p99_ms_below']:.0f} ms with {s['clients']} clients and no errors: "
              f"{verdict} (p99 = {ms(t['p99_ms'])} ms)")
    if r.get("mixed"):
        print_mixed(r["mixed"], r["big_result"])
    print(f"({r['seconds']:.0f} s in all)")


def print_mixed(x: dict, big: dict | None) -> None:
    def ms(v):
        return "-" if v is None else f"{v:,.1f}"

    k, sl = x["kinds"], x["kinds"]["slow_sql"]
    lane = x["sql_lane"]
    print(f"\nmixed phase: {x['clients']} clients (half neighbour queries, half page loads of "
          f"{', '.join(x['mix']['page_paths'])}) for {x['seconds']:g} s, while {x['slow_sql_clients']} threads send "
          f"`{x['slow_sql']}` (POST /api/sql) again and again, cut at {x['sql_timeout_s']:g} s"
          + (f"; SQL lane: {lane['workers']} at work, {lane['queue']} waiting, at most {lane['wait_s']:g} s" if lane else "")
          + f"; neighbours {'read from the stored graph' if x['neighbors_from_stored_graph'] else 'searched'}\n")
    print("| request | count | errors | p50 ms | p90 ms | p99 ms | max ms | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("neighbors", "pages"):
        p = k[name]
        print(f"| {name} | {p['count']} | {p['errors']} | {ms(p['p50_ms'])} | {ms(p['p90_ms'])} | {ms(p['p99_ms'])} | "
              f"{ms(p['max_ms'])} | {ms(p['requests_per_s'])} |")
    for path, p in k["pages"]["by_path"].items():
        print(f"| pages: `{path}` | {p['count']} | {p['errors']} | {ms(p['p50_ms'])} | {ms(p['p90_ms'])} | "
              f"{ms(p['p99_ms'])} | {ms(p['max_ms'])} | {ms(p['requests_per_s'])} |")
    print(f"| slow_sql | {sl['count']} | {sl['errors']} | {ms(sl['p50_ms'])} | {ms(sl['p90_ms'])} | {ms(sl['p99_ms'])} | "
          f"{ms(sl['max_ms'])} | - |")
    cut = sl["cut_at_limit_ms"]
    print(f"\nslow SQL: {sl['cut_at_limit']} cut at the server's limit"
          + (f" ({cut['min'] / 1000:.1f} to {cut['max'] / 1000:.1f} s)" if cut else "")
          + f", {sl['completed']} completed, {sl['busy_503']} answered 503 with Retry-After, {sl['errors']} errors; "
          f"{sl['in_flight_at_end']} in flight (running or queued) at the phase's end (awaited: "
          f"{x['slow_sql_drain_seconds']:.1f} s)")
    for name in ("neighbors", "pages", "slow_sql"):
        for e in k[name]["error_examples"]:
            print(f"  error (mixed, {name}): {e}")
    t = x["target"]
    print(f"target: neighbors p99 <= {t['p99_ms_at_most']:.0f} ms with {x['clients']} clients, no errors, while the slow "
          f"SQL runs: {'met' if t['met'] else 'missed'} (p99 = {ms(t['p99_ms'])} ms"
          + ("" if t["while_slow_sql"] else "; no slow SQL ran") + ")")
    if big:
        rss, hwm = big["rss_mb"], big["hwm_mb"]
        print(f"\nbig result: `{big['query']}` answered HTTP {big['status']} in "
              f"{'-' if big['seconds'] is None else format(big['seconds'], '.1f')} s: {big['answer'][:200]}")
        print(f"server memory before / after: VmRSS {rss['before']} / {rss['after']} MB, VmHWM {hwm['before']} / "
              f"{hwm['after']} MB (VmRSS when it first answered, before the phases: {rss['at_start']} MB)")
        met = big["target"]["met"]
        print(f"target: server RSS under {big['target']['rss_mb_below']:,.0f} MB afterwards: "
              f"{'-' if met is None else 'met' if met else 'missed'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients per phase")
    ap.add_argument("--requests", type=int, default=50, help="requests per client and kind (0: only --seconds limits)")
    ap.add_argument("--seconds", type=float, default=None, help="also stop each phase after this many seconds")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds, in order (of {', '.join(KINDS)})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clients' random sample ids")
    ap.add_argument("--db", type=Path, default=None, help="serve this database instead of building the demo's")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where the demo database is built or reused (DIR/demo-db; default: a temporary directory)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the server to answer")
    ap.add_argument("--build-timeout", type=float, default=900.0, help="seconds to wait for `saliencydb demo`")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a single request may take")
    ap.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=True,
                    help="after the three phases, the mixed phase (pages and neighbour queries while slow SQL runs) and "
                         "the big-result check (default: on)")
    ap.add_argument("--mixed-clients", type=int, default=32, help="concurrent page and neighbour clients of the mixed phase")
    ap.add_argument("--slow-sql", type=int, default=4, help="threads sending the slow SQL query during the mixed phase")
    ap.add_argument("--mixed-seconds", type=float, default=30.0,
                    help="length of the mixed phase (slow queries still running at its end are awaited)")
    ap.add_argument("--sql-timeout", type=float, default=None,
                    help="the server's SQL time limit (passed as `serve --query-timeout`; default: the server's, 10 s)")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the tables")
    ap.add_argument("--save", type=Path, help="also write the JSON document to this file")
    args = ap.parse_args()
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := [k for k in args.kinds if k not in KINDS]:
        ap.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if args.clients < 1:
        ap.error("--clients must be at least 1")
    if args.requests <= 0 and not args.seconds:
        ap.error("--requests 0 needs --seconds")
    if args.mixed_clients < 1 or args.slow_sql < 0 or args.mixed_seconds <= 0:
        ap.error("--mixed-clients must be at least 1, --slow-sql at least 0 and --mixed-seconds positive")
    if args.sql_timeout is not None and args.sql_timeout <= 0:
        ap.error("--sql-timeout must be positive")
    if args.db is not None and args.cache_dir is not None:
        ap.error("give --db or --cache-dir, not both")
    try:
        result = benchmark(args)
    except BenchmarkError as e:
        sys.exit(f"serve benchmark: {e}")
    doc = json.dumps(result, indent=1)
    if args.save:
        args.save.write_text(doc)
    if args.json:
        print(doc)
        return
    print_tables(result)


if __name__ == "__main__":
    main()
