"""Web-app benchmark: latency and throughput of ``saliencydb serve`` under concurrent clients, on the demo
database (2,000 held-out digits of the demo CNN, with error groups).

    python benchmarks/serve.py [--clients 8] [--requests 50] [--seconds S] [--cache-dir DIR | --db PATH] [--json] [--save FILE]

The database is the demo's: ``saliencydb demo --quiet`` run in ``--cache-dir`` (default: a temporary
directory, removed afterwards; an existing ``DIR/demo-db`` is reused: the demo only brings it up to date), or
any database given with ``--db`` (served as it is).
The server is the real command, ``python -m saliencydb.cli serve --db DB --port PORT --no-token`` (loopback,
so no token to send: the clients time the app, not a header check), started as a subprocess on 127.0.0.1 at a
free port; the benchmark waits (at most ``--start-timeout`` s) until
``/api/info`` answers and always stops the server at the end.

Measured, after one untimed warm-up request of each kind (reported on its own: the first overview reads
the shared-mistake statistics from the stored knn table, which are then cached per database version; it
never searches the neighbour graph: a database without the table shows a note instead; the first sample
page and neighbour query pay for reading the profiles and the index), three request kinds, each as its
own phase:

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
the output says whether it was met. Notes on reading the numbers:

* The server answers one request at a time (``ServedDatabase.reading()`` holds a lock), so with N clients a
  request waits for up to N - 1 others: latency grows with the clients, throughput does not.
* The clients run in this process, on the same machine as the server; on a 2-core machine they take a share
  of the CPU. Timings are only meaningful on an otherwise idle machine: the load average before and after
  the run is printed.
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

    def __init__(self, db: Path, port: int, log_dir: Path):
        self.db, self.port, self.log_path = db, port, log_dir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        self.exit_code: int | None = None

    def start(self, timeout: float) -> None:
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(self.db),
                                          "--port", str(self.port), "--host", HOST, "--no-token"],
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
        server = Server(db, args.port or free_port(), work)
        stack.callback(server.stop)  # always, whatever fails below
        server.start(args.start_timeout)
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
    print(f"({r['seconds']:.0f} s in all)")


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
