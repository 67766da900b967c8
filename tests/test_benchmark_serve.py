"""benchmarks/serve.py runs the real `saliencydb serve` under concurrent clients and stops it afterwards
(a smoke run on the tests' small digits database; no timing is asserted). The mixed phase runs in a short
form: 4 clients for 5 s beside one thread sending the slow SQL query, which the server cuts at 2 s
(``--sql-timeout 2``, its ``--query-timeout``)."""

import json
import os
import socket
import subprocess
import sys

from helpers import ROOT

CLIENTS, REQUESTS = 2, 3
MIXED_CLIENTS, SLOW_SQL, MIXED_SECONDS, SQL_TIMEOUT = 4, 1, 5, 2
STATS = ("count", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms")


def test_serve_benchmark_reports_every_kind_and_stops_the_server(digits_db):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--db", str(digits_db),
                          "--clients", str(CLIENTS), "--requests", str(REQUESTS), "--mixed-clients", str(MIXED_CLIENTS),
                          "--slow-sql", str(SLOW_SQL), "--mixed-seconds", str(MIXED_SECONDS),
                          "--sql-timeout", str(SQL_TIMEOUT), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert report["database"]["ids"] == report["database"]["samples"] == 800
    assert set(report["warmup_ms"]) == {"overview", "sample", "neighbors"}
    phases = {p["kind"]: p for p in report["phases"]}
    assert list(phases) == ["overview", "sample", "neighbors"]
    for p in phases.values():
        assert p["count"] == CLIENTS * REQUESTS and p["errors"] == 0, p["error_examples"]
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["requests_per_s"] > 0 and not p["cut_by_time"]
    assert report["target"]["kind"] == "neighbors" and report["target"]["p99_ms"] == phases["neighbors"]["p99_ms"]
    assert isinstance(report["target"]["met"], bool)

    # the mixed phase: pages and neighbour queries beside the slow SQL, per kind
    mixed = report["mixed"]
    assert mixed["clients"] == MIXED_CLIENTS and mixed["slow_sql_clients"] == SLOW_SQL
    assert mixed["sql_timeout_s"] == SQL_TIMEOUT
    assert mixed["groups"] == 0 and mixed["mix"]["page_paths"] == ["/", "/sample/{id}"]  # the digits have no groups
    kinds = mixed["kinds"]
    assert set(kinds) == {"neighbors", "pages", "slow_sql"}
    for k in kinds.values():
        assert all(name in k for name in STATS)
    neighbors, pages, slow = kinds["neighbors"], kinds["pages"], kinds["slow_sql"]
    assert neighbors["count"] > 0 and neighbors["errors"] == 0, neighbors["error_examples"]
    assert 0 < neighbors["p50_ms"] <= neighbors["p90_ms"] <= neighbors["p99_ms"] <= neighbors["max_ms"]
    assert pages["count"] > 0 and pages["errors"] == 0, pages["error_examples"]
    assert set(pages["by_path"]) == {"/", "/sample/{id}"}
    assert sum(p["count"] for p in pages["by_path"].values()) == pages["count"]
    # the slow query, sent again and again (none after the end; one still running then is awaited), is cut at
    # the server's 2 s limit: billions of rows take longer than that on any machine
    assert slow["count"] >= 1 and slow["errors"] == 0, slow["error_examples"]
    assert slow["cut_at_limit"] >= 1 and slow["completed"] == 0
    assert slow["cut_at_limit"] + slow["completed"] + slow["busy_503"] + slow["errors"] == slow["count"]
    assert 0 <= slow["in_flight_at_end"] <= SLOW_SQL
    assert mixed["target"]["kind"] == "neighbors" and mixed["target"]["p99_ms"] == neighbors["p99_ms"]
    assert isinstance(mixed["target"]["met"], bool) and mixed["target"]["while_slow_sql"] is True
    assert isinstance(mixed["neighbors_from_stored_graph"], bool)

    # the big-result check: one console query, the server's memory before and after
    big = report["big_result"]
    assert isinstance(big["status"], int) and big["answer"]
    for m in (big["rss_mb"], big["hwm_mb"]):
        assert m["before"] > 0 and m["after"] > 0
    assert big["rss_mb"]["at_start"] > 0
    assert isinstance(big["target"]["met"], bool)

    # the server subprocess was stopped and reaped: its port refuses connections and its pid is gone
    server = report["server"]
    assert server["exit_code"] is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        assert s.connect_ex((server["host"], server["port"])) != 0
    try:
        os.kill(server["pid"], 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
