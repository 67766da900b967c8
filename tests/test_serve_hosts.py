"""The web app answers only requests addressed to it (serve.hosts): a foreign Host header, as DNS rebinding
sends, is refused with 403 before the app runs; through the real `saliencydb serve` and the ASGI app."""

import http.client
import json
import socket
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from helpers import run_cli
from saliencydb.serve import create_app
from saliencydb.serve.hosts import HostPolicy, host_name


@pytest.mark.parametrize("header, name", [
    ("localhost:8765", "localhost"), ("LOCALHOST", "localhost"), ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]:8765", "::1"), ("[::1]", "::1"), ("example.com.:1", "example.com"), ("", ""), ("[::1", ""),
    ("a:b:c", ""), ("[::1]x", ""),
])
def test_host_names_are_parsed(header, name):
    assert host_name(header) == name


def test_the_policy_of_a_loopback_bind_and_of_a_network_bind():
    local = HostPolicy("127.0.0.1")
    assert all(local.allows(h) for h in ("localhost:1", "127.0.0.1:1", "127.8.9.1", "[::1]:1"))
    assert not any(local.allows(h) for h in ("attacker.example:1", "10.0.0.5:1", "", "localhost.attacker.example"))
    extra = HostPolicy("127.0.0.1", ("My-Box.example",))
    assert extra.allows("my-box.example:8765") and not extra.allows("other.example")
    network = HostPolicy("0.0.0.0")
    assert network.allows("10.0.0.5:8765") and network.allows("[fe80::1]:1") and network.allows("localhost")
    assert not network.allows("attacker.example:8765")


def test_a_foreign_host_never_reaches_the_app(digits_db):
    client = TestClient(create_app(digits_db), raise_server_exceptions=False)  # Host: testserver
    r = client.get("/api/info")
    assert r.status_code == 403 and "host 'testserver' is not served here" in r.json()["error"]
    page = client.get("/")
    assert page.status_code == 403 and page.text.startswith("host 'testserver'") and "\n" not in page.text
    ok = TestClient(create_app(digits_db, allow_hosts=("testserver",)), raise_server_exceptions=False)
    assert ok.get("/api/info").status_code == 200
    local = TestClient(create_app(digits_db), base_url="http://127.0.0.1:8765")
    assert local.get("/api/info").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "hosts-test-token-0123456789"


def _get(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Authorization", f"Bearer {TOKEN}")  # the token does not let a foreign Host in
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_the_real_server_refuses_a_rebound_name(digits_db):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(digits_db), "--port", str(port),
                             "--allow-host", "tunnel.example", "--token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if _get(port, "/api/info", f"127.0.0.1:{port}")[0] == 200:
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        status, body = _get(port, "/api/info", f"attacker.example:{port}")
        assert status == 403 and "attacker.example" in json.loads(body)["error"]
        assert _get(port, f"/api/sql?q=SELECT+1", f"attacker.example:{port}")[0] == 403
        assert _get(port, "/api/info", f"localhost:{port}")[0] == 200
        assert _get(port, "/api/info", f"tunnel.example:{port}")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("bad", ["http://x.example", "x.example:80", "", "a/b"])
def test_allow_host_takes_a_bare_name(digits_db, bad):
    r = run_cli("serve", "--db", digits_db, "--port", str(_free_port()), "--allow-host", bad, expect=1)
    assert r.output.startswith("Error: --allow-host") and r.output.count("\n") == 1 and "Traceback" not in r.output
