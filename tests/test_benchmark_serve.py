"""benchmarks/serve.py runs the real `saliencydb serve` under concurrent clients and stops it afterwards
(a smoke run on the tests' small digits database; no timing is asserted)."""

import json
import os
import socket
import subprocess
import sys

from helpers import ROOT

CLIENTS, REQUESTS = 2, 3


def test_serve_benchmark_reports_every_kind_and_stops_the_server(digits_db):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--db", str(digits_db),
                          "--clients", str(CLIENTS), "--requests", str(REQUESTS), "--json"],
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
