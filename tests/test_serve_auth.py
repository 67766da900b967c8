"""Who may use `saliencydb serve` (serve.auth): its token (a Bearer header, or the cookie that opening the printed
`?token=` URL sets), the Origin check of requests that submit something, and the SQL console's POST; through
the ASGI app, a real `saliencydb serve` subprocess, and a real headless Chromium."""

import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
from starlette.testclient import TestClient

from helpers import ROOT, run_cli_subprocess
from saliencydb.serve import create_app

TOKEN = "test-token-0123456789-abcdefghij"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
QUERY = "SELECT sample_id, label_name FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 4"


def _client(db, **kw):
    return TestClient(create_app(db, **kw), base_url="http://localhost", follow_redirects=False,
                      raise_server_exceptions=False)


# -- through the ASGI app -------------------------------------------------------------------------------------
def test_without_the_token_every_route_is_401_with_one_line(digits_db):
    client = _client(digits_db, token=TOKEN)
    for path in ("/api/info", "/api/sql?q=SELECT+1", "/api/samples/3"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
        error = r.json()["error"]
        assert error.startswith("this server needs its token:") and "Authorization: Bearer" in error and "?token=" in error
    for path in ("/", "/sql", "/sample/3", "/img/3.png", "/search"):
        r = client.get(path)
        assert r.status_code == 401 and "\n" not in r.text and "the URL `saliencydb serve` printed" in r.text, path
        assert "samples" not in r.text and "<table" not in r.text
    assert client.post("/api/sql", data={"q": "SELECT 1"}).status_code == 401
    wrong = client.get("/api/info", headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert wrong.status_code == 401 and wrong.json()["error"].startswith("wrong token")
    assert client.get("/api/info", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert client.get("/api/info", headers={"Cookie": "saliencydb-token-80=" + TOKEN}).status_code == 401  # not the token itself
    assert client.get("/api/info", headers=BEARER).json()["samples"] == 800
    assert client.get("/api/info", headers={"Authorization": "bearer  " + TOKEN}).status_code == 200


def test_the_url_token_sets_a_strict_cookie_and_leaves_the_url(digits_db):
    client = _client(digits_db, token=TOKEN)
    r = client.get(f"/sample/3?where=NOT+correct&token={TOKEN}")
    assert r.status_code == 303 and r.headers["location"] == "/sample/3?where=NOT+correct"
    cookie = r.headers["set-cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    attributes = {a.strip() for a in cookie.split(";")[1:]}
    assert name == "saliencydb-token-80" and TOKEN not in cookie and len(value) == 64
    assert attributes == {"HttpOnly", "SameSite=Strict", "Path=/"}
    page = client.get(r.headers["location"])  # the client sends the cookie it was given
    assert page.status_code == 200 and 'id="meta"' in page.text
    assert client.get("/api/info").status_code == 200
    assert client.get(f"/?token={TOKEN}").headers["location"] == "/"
    fresh = _client(digits_db, token=TOKEN)
    assert fresh.get("/api/info").status_code == 401
    assert fresh.get("/api/info", headers={"Cookie": f"{name}={value}"}).status_code == 200
    assert fresh.get("/api/info", headers={"Cookie": f"saliencydb-token-9999={value}"}).status_code == 401  # another port's
    bad = fresh.get("/?token=" + "x" * 30)
    assert bad.status_code == 401 and "not this server's" in bad.text and "set-cookie" not in bad.headers
    other = _client(digits_db, token="another-token-0123456789")  # a cookie of another run of the server
    assert other.get("/api/info", headers={"Cookie": f"{name}={value}"}).json()["error"].startswith("wrong token")


def test_no_token_means_no_authentication(digits_db):
    client = _client(digits_db)
    assert client.get("/api/info").status_code == 200 and client.get("/").status_code == 200
    with pytest.raises(Exception, match="non-empty string"):
        create_app(digits_db, token="  ")


def test_a_post_from_another_origin_is_403(digits_db):
    client = _client(digits_db, token=TOKEN)
    for path in ("/api/sql", "/sql", "/search", "/api/search", "/sql.csv"):
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://localhost:8080"}, {"Origin": "null"},
                        {"Origin": "https://localhost"}, {"Sec-Fetch-Site": "cross-site"}):
            r = client.post(path, data={"q": "SELECT 1"}, headers={**BEARER, **headers})
            assert r.status_code == 403 and "is refused" in r.text and "\n" not in r.text, (path, headers, r.text)
    r = client.post("/api/sql", data={"q": "SELECT 1"}, headers={**BEARER, "Origin": "http://evil.example"})
    assert r.json()["error"] == ("a POST from origin 'http://evil.example' is refused: this server accepts forms and "
                                 "uploads only from its own pages (http://localhost)")
    for headers in ({"Origin": "http://localhost"}, {"Origin": "http://LOCALHOST:80"}, {"Sec-Fetch-Site": "same-origin"}, {}):
        r = client.post("/api/sql", data={"q": "SELECT 1 AS x"}, headers={**BEARER, **headers})
        assert r.status_code == 200 and r.json()["rows"] == [{"x": 1}], headers
    assert client.get("/api/info", headers={**BEARER, "Origin": "http://evil.example"}).status_code == 200  # reads: CORS
    port = TestClient(create_app(digits_db), base_url="http://127.0.0.1:8765", raise_server_exceptions=False)
    assert port.post("/api/sql", data={"q": "SELECT 1"}, headers={"Origin": "http://127.0.0.1:8765"}).status_code == 200
    assert port.post("/api/sql", data={"q": "SELECT 1"}, headers={"Origin": "http://127.0.0.1:8766"}).status_code == 403


def test_the_sql_console_posts(digits_db):
    client = _client(digits_db, token=TOKEN)
    form = client.get("/sql", headers=BEARER).text
    assert '<form method="post" action="/sql">' in form
    page = client.post("/sql", data={"q": QUERY}, headers={**BEARER, "Origin": "http://localhost"})
    assert page.status_code == 200 and page.text.count("data-sample=") == 4 and 'id="sql-result"' in page.text
    assert client.post("/sql", data={"q": "DELETE FROM samples"}, headers=BEARER).status_code == 400
    want = client.get("/api/sql?q=" + urllib.parse.quote(QUERY), headers=BEARER).json()
    assert len(want["rows"]) == 4
    assert client.post("/api/sql", data={"q": QUERY}, headers=BEARER).json() == want
    assert client.post("/api/sql", json={"q": QUERY}, headers=BEARER).json() == want
    assert client.post("/api/sql", files={"q": (None, QUERY)}, headers=BEARER).json() == want  # multipart
    csv = client.post("/sql.csv", data={"q": QUERY}, headers=BEARER).text.splitlines()
    assert csv[0] == "sample_id,label_name" and len(csv) == 5
    for kw, status, words in [(dict(json={"query": QUERY}), 400, "form field q"), (dict(json=[QUERY]), 400, "form field q"),
                              (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not JSON"),
                              (dict(data={"q": "x" * (2**20 + 1)}), 413, "larger than 1 MiB"),
                              (dict(json={"q": "SELECT 1 -- " + "x" * 2**20}), 413, "larger than 1 MiB")]:
        headers = {**BEARER, **kw.pop("headers", {})}
        r = client.post("/api/sql", headers=headers, **kw)
        assert r.status_code == status and words in r.json()["error"], (kw.keys(), r.status_code, r.text[:200])
    assert client.get("/api/info", headers=BEARER).status_code == 200


def test_a_failure_is_one_log_line_and_its_traceback_only_with_debug(digits_db, caplog):
    for debug in (False, True):
        app = create_app(digits_db, debug=debug)

        def broken(*a, **kw):
            raise RuntimeError("boom\nsecond line")

        app.state.served.reading = broken  # an unexpected failure inside a route
        client = TestClient(app, base_url="http://localhost")  # would raise if the failure escaped the app
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="saliencydb.serve"):
            r = client.get("/api/info")
        assert r.status_code == 500 and r.json() == {
            "error": "internal error (RuntimeError); the server log has the details"}
        [record] = caplog.records
        assert record.getMessage() == "request GET /api/info failed: RuntimeError: boom second line"
        assert (record.exc_info is not None) is debug
        assert ("Traceback" in caplog.text) is debug


# -- through a real `saliencydb serve` --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port, method, path, headers=None, body=None) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


class Served:
    """`saliencydb serve ARGS` on a free loopback port; ``url`` is the URL it printed."""

    def __init__(self, db, *args, env=None):
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(db), "--port",
                                      str(self.port), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        found = re.search(r" at (http://\S+) \(Ctrl\+C stops\)$", line.strip())
        assert found, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.url = found.group(1)
        for _ in range(600):
            try:
                _request(self.port, "GET", "/api/info")
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read()
                time.sleep(0.1)

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def test_the_real_server_prints_a_token_url_and_requires_it(digits_db):
    server = Served(digits_db)
    try:
        url = urllib.parse.urlsplit(server.url)
        token = urllib.parse.parse_qs(url.query)["token"][0]
        assert (url.scheme, url.netloc, url.path) == ("http", f"127.0.0.1:{server.port}", "/") and len(token) >= 40
        status, _, body = _request(server.port, "GET", "/api/info")
        assert status == 401 and "Authorization: Bearer" in json.loads(body)["error"]
        assert _request(server.port, "GET", "/", {"Authorization": "Bearer " + "x" * 43})[0] == 401
        assert _request(server.port, "GET", "/api/info", {"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = _request(server.port, "GET", f"/?{url.query}")
        assert status == 303 and headers["location"] == "/" and "HttpOnly; SameSite=Strict" in headers["set-cookie"]
        cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
        status, _, page = _request(server.port, "GET", "/sql", cookie)
        assert status == 200 and '<form method="post" action="/sql">' in page
        form = {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
        body = urllib.parse.urlencode({"q": QUERY})
        status, _, page = _request(server.port, "POST", "/sql", {**form, "Origin": f"http://127.0.0.1:{server.port}"}, body)
        assert status == 200 and page.count("data-sample=") == 4
        status, _, text = _request(server.port, "POST", "/api/sql", {**form, "Origin": "http://evil.example"}, body)
        assert status == 403 and "origin 'http://evil.example' is refused" in json.loads(text)["error"]
        status, _, text = _request(server.port, "POST", "/sql", {**form, "Sec-Fetch-Site": "cross-site"}, body)
        assert status == 403 and text.count("\n") == 0
        status, _, text = _request(server.port, "POST", "/api/sql", {"Authorization": f"Bearer {token}",
                                                                     "Content-Type": "application/json"}, json.dumps({"q": QUERY}))
        assert status == 200 and len(json.loads(text)["rows"]) == 4
    finally:
        err = server.stop()
    assert "warning" not in err and "Traceback" not in err


def test_a_token_from_the_option_or_the_environment(digits_db):
    server = Served(digits_db, env={"SALIENCYDB_TOKEN": TOKEN})
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/?token={TOKEN}"
        assert _request(server.port, "GET", "/api/info", BEARER)[0] == 200
    finally:
        server.stop()
    mine = "my token/with+odd;chars~0123456789".replace(" ", "-")
    server = Served(digits_db, "--token", mine, env={"SALIENCYDB_TOKEN": TOKEN})  # the option wins
    try:
        assert server.url.endswith("?token=" + urllib.parse.quote(mine, safe=""))
        assert _request(server.port, "GET", "/api/info", BEARER)[0] == 401
        assert _request(server.port, "GET", "/api/info", {"Authorization": f"Bearer {mine}"})[0] == 200
        status, headers, _ = _request(server.port, "GET", urllib.parse.urlsplit(server.url).path + "?"
                                      + urllib.parse.urlsplit(server.url).query)
        assert status == 303 and headers["location"] == "/"
    finally:
        server.stop()


def test_no_token_on_loopback_says_what_it_means(digits_db):
    server = Served(digits_db, "--no-token")
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        assert _request(server.port, "GET", "/api/info")[0] == 200
        assert _request(server.port, "POST", "/api/sql", {"Origin": "http://evil.example",
                        "Content-Type": "application/x-www-form-urlencoded"}, "q=SELECT+1")[0] == 403
    finally:
        err = server.stop()
    [line] = [l for l in err.splitlines() if l.strip()]
    assert line.startswith("warning: --no-token: no authentication;") and "any user or process on this machine" in line


@pytest.mark.parametrize("args, words", [
    (["--no-token", "--host", "0.0.0.0"], "--no-token is allowed only on a loopback --host"),
    (["--token", "short"], "--token is too short (5 characters); give at least 16"),
    (["--token", ""], "--token is empty"),
    (["--token", "   "], "--token is empty"),
    (["--token", "with spaces in the token"], "--token: use printable ASCII characters without spaces"),
    (["--token", TOKEN, "--no-token"], "--token and --no-token contradict each other"),
])
def test_bad_token_arguments_are_one_line(digits_db, args, words):
    out = run_cli_subprocess("serve", "--db", digits_db, "--port", _free_port(), *args, timeout=120)
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(f"Error: {words}"), out.stderr


def test_an_empty_environment_token_is_refused(digits_db):
    out = run_cli_subprocess("serve", "--db", digits_db, "--port", _free_port(), env={**os.environ, "SALIENCYDB_TOKEN": ""},
                             timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("Error: $SALIENCYDB_TOKEN is empty") and out.stderr.count("\n") == 1


# -- in a real browser ------------------------------------------------------------------------------------------
def _chromium():
    """Headless Chromium through chromedriver, found as tests/test_serve.py finds them."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(5)
    return driver


FETCH = """const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: arguments[1]}).then(r => r.text().then(t => done([r.status, t]))).catch(e => done([0, String(e)]));"""


def test_a_browser_opens_the_printed_url_and_posts_the_console(digits_db):
    from selenium.webdriver.common.by import By

    server = Served(digits_db)
    browser = _chromium()
    try:
        base = f"http://127.0.0.1:{server.port}"
        browser.get(server.url)
        assert browser.current_url == base + "/"  # redirected: the token has left the address bar
        assert browser.find_elements(By.CSS_SELECTOR, "#splits tr")
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly
        browser.get(base + "/sql")
        box = browser.find_element(By.NAME, "q")
        assert box.find_element(By.XPATH, "./ancestor::form").get_attribute("method") == "post"
        box.clear()
        box.send_keys(QUERY)
        box.submit()
        links = browser.find_elements(By.CSS_SELECTOR, "#sql-result a[data-sample]")
        status, _, text = _request(server.port, "GET", "/api/sql?q=" + urllib.parse.quote(QUERY),
                                   {"Authorization": "Bearer " + urllib.parse.parse_qs(urllib.parse.urlsplit(server.url).query)["token"][0]})
        want = [r["sample_id"] for r in json.loads(text)["rows"]]
        assert [int(a.get_attribute("data-sample")) for a in links] == want and len(want) == 4
        assert browser.current_url == base + "/sql" and "q=" not in browser.current_url  # a POST: no query in the URL
        browser.set_script_timeout(30)
        assert browser.execute_async_script(FETCH, "/api/info", "same-origin")[0] == 200
        status, text = browser.execute_async_script(FETCH, "/api/info", "omit")  # no cookie: as a fresh browser
        assert status == 401 and "needs its token" in text
        browser.quit()
        browser = _chromium()  # a browser that never opened the printed URL
        browser.get(base + "/sql")
        assert "this server needs its token" in browser.find_element(By.TAG_NAME, "body").text
        assert not browser.find_elements(By.NAME, "q")
    finally:
        browser.quit()
        server.stop()


def test_the_token_redirect_never_leaves_the_server(digits_db):
    """`//host?token=...` (a path a browser would read as another site) redirects to a path of this server."""
    from starlette.testclient import TestClient

    from saliencydb.serve import create_app

    client = TestClient(create_app(digits_db, token="t" * 24), base_url="http://localhost", follow_redirects=False)
    r = client.get("//evil.example/x?token=" + "t" * 24)
    assert r.status_code == 303 and r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")
