"""Limits on the web app's query paths: a `?where=` that never ends is interrupted at the request's time limit
(one line, 400) and the app answers the next request; a console result is cut at SQL_MAX_BYTES with a note."""

import time
from urllib.parse import quote

from starlette.testclient import TestClient

from saliencydb.serve import create_app
from saliencydb.serve import api

SLOW = "(SELECT count(*) FROM range(6000000000) WHERE range % 7 = 1) > 0"


def _client(db, timeout_s=None):
    app = create_app(db)
    if timeout_s is not None:
        app.state.served.timeout_s = timeout_s  # before the first request opens the database
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def test_a_where_that_never_ends_is_stopped(digits_db):
    client = _client(digits_db, timeout_s=0.5)
    for path in (f"/api/neighbors/3?where={quote(SLOW)}", f"/api/samples/3?where={quote(SLOW)}"):
        t = time.perf_counter()
        r = client.get(path)
        took = time.perf_counter() - t
        assert took < 20, took  # the query alone would run for minutes
        if path.startswith("/api/neighbors"):
            assert r.status_code == 400 and "ran longer than 0.5 s" in r.json()["error"], r.text
        else:  # a sample's page shows its neighbours' error in place of them
            assert r.status_code == 200 and "ran longer than 0.5 s" in r.text, r.text
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/sql?q=" + quote("SELECT 1 AS x")).json()["rows"] == [{"x": 1}]


def test_a_huge_result_is_cut_at_the_byte_limit(digits_db):
    client = _client(digits_db)
    r = client.get("/api/sql?q=" + quote("SELECT repeat('x', 1000000) AS a FROM range(100)"))
    doc = r.json()
    assert r.status_code == 200 and doc["truncated"] is True
    assert 0 < len(doc["rows"]) <= api.SQL_MAX_BYTES // 1_000_000 and len(r.content) < 2 * api.SQL_MAX_BYTES
    assert any("cut after" in n for n in doc["notes"])
    small = client.get("/api/sql?q=" + quote("SELECT 1 AS x FROM range(5)")).json()
    assert small["truncated"] is False and len(small["rows"]) == 5 and small["notes"] == []
