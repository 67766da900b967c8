"""The web app as a shared service: requests work in bounded lanes (a full lane answers 503 with Retry-After at
once), slow SQL does not hold up pages and neighbours, a version is never closed under a request reading it, and
neighbours come from the stored graph exactly when it holds the answer a search gives."""

import asyncio
import threading
import time
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from saliencydb.serve import create_app
from saliencydb.serve.lanes import LaneLimits, Lanes, lane_of

SLOW_SQL = "SELECT count(*) AS n FROM range(6000000000) WHERE range % 7 = 1"


def test_requests_are_sorted_into_lanes():
    assert lane_of("GET", "/api/sql", b"q=SELECT+1") == "sql"
    assert lane_of("POST", "/api/sql", b"") == "sql"
    assert lane_of("GET", "/sql", b"q=SELECT+1") == "sql"
    assert lane_of("GET", "/sql", b"") == "light"  # the empty console is a page
    assert lane_of("GET", "/sql", b"qq=1") == "light"
    assert lane_of("GET", "/sql.csv", b"q=x") == "sql"
    assert lane_of("GET", "/img/3/map.png", b"") == "model"
    assert lane_of("GET", "/img/group/2/profile.png", b"") == "model"
    assert lane_of("POST", "/search", b"") == "model"
    assert lane_of("GET", "/search", b"") == "light"
    for path in ("/", "/api/info", "/api/neighbors/3", "/sample/3", "/img/3.png", "/group/1"):
        assert lane_of("GET", path, b"") == "light", path


class _Blocking:
    """An ASGI app whose requests wait until released; counts how many ran."""

    def __init__(self):
        self.release, self.started = asyncio.Event(), 0

    async def __call__(self, scope, receive, send):
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_a_full_lane_answers_503_at_once_and_the_queue_moves_on():
    async def main():
        inner = _Blocking()
        app = Lanes(inner, {"sql": LaneLimits(workers=1, queue=1, wait_s=30)})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            first = asyncio.create_task(c.get("/api/sql?q=1"))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(c.get("/api/sql?q=2"))
            await asyncio.sleep(0.05)
            assert inner.started == 1  # the second waits in the queue
            t = time.perf_counter()
            third = await c.get("/api/sql?q=3")
            assert time.perf_counter() - t < 1
            assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1, third.text
            assert "1 sql request(s) at work and 1 waiting" in third.json()["error"]
            assert inner.started == 1
            light = asyncio.create_task(c.get("/api/info"))  # another lane: not queued behind the SQL
            await asyncio.sleep(0.05)
            assert inner.started == 2
            inner.release.set()
            for task in (first, second, light):
                assert (await task).status_code == 200
            assert inner.started == 3  # the queued request ran once the worker was free
            again = await c.get("/api/sql?q=4")
            assert again.status_code == 200  # every place was given back
            lane = app.lanes()["sql"]
            assert lane.working == 0 and lane.waiting == 0

    asyncio.run(main())


def test_a_request_that_waits_too_long_is_refused_and_gives_its_place_back():
    async def main():
        inner = _Blocking()
        app = Lanes(inner, {"model": LaneLimits(workers=1, queue=4, wait_s=0.3)})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            first = asyncio.create_task(c.get("/img/1/map.png"))
            await asyncio.sleep(0.05)
            t = time.perf_counter()
            waited = await c.get("/img/2/map.png")
            assert 0.25 < time.perf_counter() - t < 2
            assert waited.status_code == 503 and "retry in" in waited.text
            inner.release.set()
            assert (await first).status_code == 200
            assert (await c.get("/img/3/map.png")).status_code == 200
            assert app.lanes()["model"].working == 0

    asyncio.run(main())


class _Server:
    """The real app under uvicorn on a free loopback port, in this process."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def test_slow_sql_does_not_hold_up_pages_and_neighbours(digits_db):
    app = create_app(digits_db, lanes={"sql": LaneLimits(workers=1, queue=1, wait_s=30)})
    app.state.served.timeout_s = 6.0
    server = _Server(app)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/api/neighbors/3").status_code == 200  # open the version and its index first
            slow = [threading.Thread(target=lambda: c.get("/api/sql?q=" + quote(SLOW_SQL))) for _ in range(2)]
            for t in slow:
                t.start()
            time.sleep(0.5)
            busy = c.get("/api/sql?q=" + quote("SELECT 1 AS x"))  # one at work, one queued: refused at once
            assert busy.status_code == 503 and busy.headers["retry-after"], busy.text
            took = []
            for path in ("/api/info", "/api/neighbors/5", "/api/samples/7", "/", "/sample/9", "/img/3.png"):
                t = time.perf_counter()
                r = c.get(path)
                took.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.text[:200])
            assert max(took) < 3, took  # the slow queries run for 6 s each, one after the other
            for t in slow:
                t.join(60)
            assert c.get("/api/sql?q=" + quote("SELECT 1 AS x")).json()["rows"] == [{"x": 1}]
    finally:
        server.stop()


def test_a_version_is_not_closed_under_a_request_reading_it(digits_copy):
    from saliencydb.serve.state import ServedDatabase

    served = ServedDatabase(digits_copy)
    with served.reading() as old:
        first = old.commit
        n = old.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
        _ingest(digits_copy)
        with served.reading() as new:
            assert new.commit > first and new is not old
            assert new.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == n + 20
        # the old version is still open for the request reading it
        assert old.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == n
    with pytest.raises(Exception):
        old.sql("SELECT 1")  # closed once its last reader was done
    served.close()


def _ingest(db):
    from tests.helpers import run_cli

    run_cli("ingest", "--db", str(db), "--data", "builtin:mnist5k:train", "--split", "extra", "--limit", "20")


def test_stored_neighbours_are_the_searched_ones(digits_copy):
    import saliencydb
    from saliencydb.serve import api
    from tests.helpers import run_cli

    run_cli("mistakes", "--db", str(digits_copy), "-k", "10")
    db = saliencydb.open(digits_copy)
    try:
        splits = db.sql("SELECT sample_id, split FROM samples ORDER BY sample_id").to_pydict()
        checked = 0
        for sid, split in zip(splits["sample_id"][::7], splits["split"][::7]):
            for space in ("saliency", "feature"):
                got = api.neighbors(db, sid, k=10, space=space, split=split)
                want = db.neighbors(sid, k=10, space=space, split=split)
                assert got.note.startswith("read from the stored neighbour graph"), got.note
                assert want.note is None
                assert [r["sample_id"] for r in got.neighbors] == [r["sample_id"] for r in want.neighbors]
                assert np.allclose([r["similarity"] for r in got.neighbors], [r["similarity"] for r in want.neighbors],
                                   atol=2e-6)
                assert got.summary == want.summary
                checked += 1
        assert checked > 200
        # two splits and no split asked: the graph (within a split) is not the answer; it is searched
        assert api.neighbors(db, 3, k=10).note is None
        assert api.neighbors(db, 3, k=11, split=splits["split"][3]).note is None  # more than the graph holds
        assert api.neighbors(db, 3, k=5, where="NOT correct").note is None  # a filter: searched
    finally:
        db.close()
    _ingest(digits_copy)  # the graph is now stale: searched again
    db = saliencydb.open(digits_copy)
    try:
        assert api.neighbors(db, 3, k=10, split=db.sample(3)["split"]).note is None
    finally:
        db.close()


def test_a_gigabyte_result_is_refused_in_its_own_process(digits_db):
    """The statement runs in a child with a memory limit: the server's own memory does not move."""
    import resource

    app = create_app(digits_db)
    server = _Server(app)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/api/sql?q=" + quote("SELECT 1 AS x")).status_code == 200  # the fork server is up
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            r = c.get("/api/sql?q=" + quote("SELECT repeat('x', 1000000) AS a FROM range(1000)"))
            grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            assert r.status_code == 400 and "memory" in r.json()["error"] and "\n" not in r.json()["error"], r.text
            assert grew_mb < 100, grew_mb
            page = c.post("/sql", data={"q": "SELECT repeat('x', 1000000) AS a FROM range(1000)"},
                          headers={"Origin": server.url})
            assert page.status_code == 400 and "memory" in page.text
            assert c.get("/api/sql?q=" + quote("SELECT 2 AS y")).json()["rows"] == [{"y": 2}]
            hog = "length(repeat('x', 1500000000)) > 0"  # a where= filter building 1.5 GB per row
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            r = c.get(f"/api/neighbors/3?where={quote(hog)}")
            grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            assert r.status_code == 400 and "memory" in r.json()["error"].lower(), r.text
            assert grew_mb < 100, grew_mb
            ok = c.get(f"/api/neighbors/3?k=5&where={quote('NOT correct')}").json()  # filters still work
            assert len(ok["neighbors"]) == 5 and not any(n["correct"] for n in ok["neighbors"])
    finally:
        server.stop()


def test_serve_limits_options(digits_db):
    """--query-timeout and --sql-memory reach the served database; bad values are one line."""
    import subprocess
    import sys

    for bad, word in (("--query-timeout=0", "--query-timeout"), ("--sql-memory=1", "--sql-memory"),
                      ("--sql-workers=0", "--sql-workers")):
        out = subprocess.run([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(digits_db), "--no-token", bad],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and word in out.stderr and "Traceback" not in out.stderr, out.stderr
    app = create_app(digits_db, timeout_s=0.5, sql_memory_bytes=200 << 20)
    assert app.state.served.timeout_s == 0.5 and app.state.served.sql_processes.memory_bytes == 200 << 20
    server = _Server(app)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            t = time.perf_counter()
            r = c.get("/api/sql?q=" + quote(SLOW_SQL))
            assert r.status_code == 400 and "longer than 0.5 s" in r.json()["error"] and time.perf_counter() - t < 6
            r = c.get("/api/sql?q=" + quote("SELECT repeat('x', 1000000) AS a FROM range(300)"))
            assert r.status_code == 400 and "200 MiB of memory" in r.json()["error"], r.text
    finally:
        server.stop()


def test_an_approximate_graph_is_never_served_as_the_exact_answer(tmp_path):
    """A stored graph searched in an approximate index (here the saliency space's) is not read in place of a
    search; the exact space's graph still is."""
    import saliencydb
    from saliencydb.query.stored import stored_neighbors
    from saliencydb.serve import api
    from test_approx_index import SMALL_LIMIT, _build
    from tests.helpers import run_cli

    db_path = _build(tmp_path / "db", flat_max_bytes=SMALL_LIMIT)
    run_cli("mistakes", "--db", str(db_path), "-k", "10")
    with saliencydb.open(db_path) as db:
        split = db.sample(5)["split"]
        assert stored_neighbors(db, 5, k=10, space="saliency", split=split) is None
        feature = stored_neighbors(db, 5, k=10, space="feature", split=split)
        assert feature is not None and feature.note.startswith("read from the stored neighbour graph")
        searched = api.neighbors(db, 5, k=10, space="saliency", split=split)
        assert "stored neighbour graph" not in (searched.note or "")


def test_metadata_kept_in_memory_is_the_sql_answer(digits_db):
    """The web app's view keeps the samples' metadata columns in memory; every lookup equals the SQL one."""
    import saliencydb

    with saliencydb.open(digits_db) as sql, saliencydb.open(digits_db) as kept:
        kept.keep_metadata = True
        ids = sql.sql("SELECT sample_id FROM samples").column("sample_id").to_pylist()
        for i in ids[::37] + [ids[0], ids[-1]]:
            assert kept.sample(i) == sql.sample(i)
        cols = ["sample_id", "key", "label_name", "correct", "loss"]
        asked = [ids[3], -1, ids[-1], 10**9, ids[0]]
        assert kept.metadata(asked, cols) == sql.metadata(asked, cols) and len(kept.metadata(asked, cols)) == 3
        assert kept.metadata([], cols) == {}
        for bad in (-1, 10**9):
            with pytest.raises(Exception, match="no sample with id"):
                kept.sample(bad)


def test_group_documents_are_the_stored_tables(digits_copy):
    """A group's page reads its members and blame from memory; they equal the stored tables joined by SQL."""
    import saliencydb
    from saliencydb.serve import api
    from tests.helpers import run_cli

    run_cli("clusters", "--db", str(digits_copy), "--n-clusters", "4")
    with saliencydb.open(digits_copy) as db:
        db.keep_metadata = True
        for cluster in range(4):
            doc = api.group(db, cluster)
            want = db.sql("""SELECT s.sample_id, s.split, s.label_name, s.pred_name, s.correct, s.pred_conf, c.distance, s.text
                             FROM clusters c JOIN samples s USING (sample_id) WHERE c.cluster = ?
                             ORDER BY s.correct, c.distance, s.sample_id""", [cluster]).to_pylist()
            assert doc["members"] == want and doc["size"] == len(want) > 0
            blame = db.sql("SELECT rank, unit_id, layer, channel, mean_z FROM blame WHERE cluster = ? ORDER BY rank LIMIT 20",
                           [cluster]).to_pylist()
            assert doc["blame"] == blame and len(blame) == 20
        with pytest.raises(Exception, match="no error group 9; the groups are 0, 1, 2, 3"):
            api.group(db, 9)
