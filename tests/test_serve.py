"""saliencydb serve: the web app in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), each page checked against the database; bad requests; following new commits; screenshots of the
main pages for the README (docs/screenshots/, written by this test run)."""

import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from helpers import ROOT, run_cli

SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    """The demo database (its error groups included), built once for this module."""
    root = tmp_path_factory.mktemp("serve")
    out = subprocess.run([sys.executable, "-m", "saliencydb.cli", "demo", "--quiet"], cwd=root, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "demo-db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AUTH: dict[str, str] = {}  # the running server's printed URL and its Bearer header, set by `server`


def _open(url_or_request, timeout: float = 60):
    """urlopen with the server's token (as an API client sends it: Authorization: Bearer)."""
    request = url_or_request if isinstance(url_or_request, urllib.request.Request) else urllib.request.Request(url_or_request)
    request.add_header("Authorization", AUTH["bearer"])
    return urllib.request.urlopen(request, timeout=timeout)


@pytest.fixture(scope="module")
def server(demo_db):
    """`saliencydb serve` on loopback (with the token it makes), stopped at the end."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(demo_db), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # saliencydb: serving DB at http://127.0.0.1:PORT/?token=TOKEN (Ctrl+C stops)
    assert " at http" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    AUTH["url"] = line.split(" at ", 1)[1].split()[0]
    AUTH["bearer"] = "Bearer " + urllib.parse.unquote(AUTH["url"].split("?token=", 1)[1])
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            _open(base + "/api/info", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read())
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(server):
    """Chromium that has opened the URL serve printed (so it holds the token's cookie)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(5)
    driver.get(AUTH["url"])
    assert driver.current_url == server + "/"  # the token has left the address bar
    yield driver
    driver.quit()


def _json(base, path):
    with _open(base + path) as r:
        return json.loads(r.read())


def _shot(browser, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def _sample_ids(elements):
    return [int(el.get_attribute("data-sample")) for el in elements]


def test_browse_overview_group_sample_neighbour(server, browser, demo_db):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    info = json.loads(run_cli("info", "--db", demo_db, "--format", "json").stdout)
    rows = browser.find_elements(By.CSS_SELECTOR, "#splits tr")[1:]
    shown = {r.find_elements(By.TAG_NAME, "td")[0].text: int(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows}
    assert shown == {name: s["samples"] for name, s in info["splits"].items()}
    assert browser.find_elements(By.CSS_SELECTOR, "#shared tr")  # the shared-mistake statistics, both spaces
    cards = browser.find_elements(By.CSS_SELECTOR, "#groups .card")
    sizes = json.loads(run_cli("sql", "--db", demo_db, "--format", "json",
                               "SELECT cluster, count(*) AS n FROM clusters GROUP BY 1 ORDER BY n DESC, cluster").stdout)
    assert [int(c.get_attribute("data-group")) for c in cards] == [s["cluster"] for s in sizes]
    _shot(browser, "overview")

    group = sizes[0]["cluster"]
    cards[0].find_element(By.CSS_SELECTOR, "a[href^='/group/']").click()
    assert browser.current_url.endswith(f"/group/{group}")
    members = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#members a.thumb"))
    want = json.loads(run_cli("sql", "--db", demo_db, "--format", "json",
                              f"SELECT sample_id FROM clusters WHERE cluster = {group} ORDER BY sample_id").stdout)
    assert sorted(members) == [w["sample_id"] for w in want] and len(members) == sizes[0]["n"]
    assert browser.find_elements(By.CSS_SELECTOR, "#blame tr")
    _shot(browser, "group")

    first = browser.find_element(By.CSS_SELECTOR, "#members a.thumb")
    sid = int(first.get_attribute("data-sample"))
    first.click()
    assert browser.current_url.endswith(f"/sample/{sid}")
    meta = browser.find_element(By.ID, "meta")
    stored = json.loads(run_cli("sql", "--db", demo_db, "--format", "json",
                                f"SELECT label_name, pred_name FROM samples WHERE sample_id = {sid}").stdout)[0]
    assert (meta.get_attribute("data-label"), meta.get_attribute("data-pred")) == (stored["label_name"], stored["pred_name"])
    nb = json.loads(run_cli("neighbors", "--db", demo_db, "--id", sid, "-k", 10, "--format", "json").stdout)
    shown = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#saliency-neighbors a.thumb"))
    assert shown == [n["sample_id"] for n in nb["neighbors"]]
    feat = json.loads(run_cli("neighbors", "--db", demo_db, "--id", sid, "-k", 10, "--space", "feature", "--format", "json").stdout)
    assert _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#feature-neighbors a.thumb")) == [n["sample_id"] for n in feat["neighbors"]]
    for img in browser.find_elements(By.CSS_SELECTOR, "figure img"):  # the image, its input-space map and GradCAM drew
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    _shot(browser, "sample")

    browser.find_element(By.CSS_SELECTOR, "#saliency-neighbors a.thumb").click()
    assert browser.current_url.endswith(f"/sample/{shown[0]}")
    where = browser.find_element(By.NAME, "where")
    where.send_keys("NOT correct")
    where.submit()
    restricted = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#saliency-neighbors a.thumb"))
    want = json.loads(run_cli("neighbors", "--db", demo_db, "--id", shown[0], "-k", 10, "--where", "NOT correct",
                              "--format", "json").stdout)
    assert restricted == [n["sample_id"] for n in want["neighbors"]]


def test_sql_console_links_to_samples(server, browser, demo_db):
    from selenium.webdriver.common.by import By

    browser.get(server + "/sql")
    box = browser.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("SELECT sample_id, label_name, pred_name FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 5")
    box.submit()
    links = browser.find_elements(By.CSS_SELECTOR, "#sql-result a[data-sample]")
    want = json.loads(run_cli("sql", "--db", demo_db, "--format", "json",
                              "SELECT sample_id FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 5").stdout)
    assert _sample_ids(links) == [w["sample_id"] for w in want]
    _shot(browser, "sql")
    csv = _open(browser.find_element(By.ID, "csv").get_attribute("href")).read().decode()
    assert csv.splitlines()[0] == "sample_id,label_name,pred_name" and len(csv.splitlines()) == 6
    links[0].click()
    assert browser.current_url.endswith(f"/sample/{want[0]['sample_id']}")
    browser.get(server + "/sql?q=" + urllib.request.quote("DELETE FROM samples"))
    assert "only read-only queries" in browser.find_element(By.ID, "sql-error").text


def test_upload_search_equals_the_cli(server, browser, demo_db, tmp_path):
    from selenium.webdriver.common.by import By

    key = json.loads(run_cli("sql", "--db", demo_db, "--format", "json",
                             "SELECT sample_id FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 1").stdout)[0]
    png = _open(f"{server}/img/{key['sample_id']}.png?side=28").read()
    path = tmp_path / "digit.png"
    Image.open(io.BytesIO(png)).convert("L").save(path)
    browser.get(server + "/search")
    browser.find_element(By.NAME, "image").send_keys(str(path))
    browser.find_element(By.NAME, "label").send_keys("3")
    browser.find_element(By.ID, "search-button").click()
    shown = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#saliency-neighbors a.thumb"))
    cli = json.loads(run_cli("neighbors", "--db", demo_db, "--image", path, "--label", 3, "-k", 10, "--format", "json").stdout)
    assert shown == [n["sample_id"] for n in cli["neighbors"]] and len(shown) == 10
    _shot(browser, "search")
    assert not any(p.name.startswith("tmp") for p in Path(demo_db).iterdir())  # nothing of the upload stored


def test_sql_rows_are_bounded(server, demo_db):
    doc = _json(server, "/api/sql?q=" + urllib.request.quote("SELECT range AS i FROM range(5000)"))
    assert doc["truncated"] and doc["max_rows"] == 1000 and len(doc["rows"]) == 1000 and doc["rows"][-1] == {"i": 999}
    import saliencydb
    from saliencydb.errors import QueryError

    with saliencydb.open(demo_db) as d:  # the console's time limit: a statement running past it is stopped
        with pytest.raises(QueryError, match="longer than 0.2 s"):
            d.sql("SELECT count(*) FROM range(100000000000) a", timeout_s=0.2)
        assert d.sql("SELECT 1 AS x", timeout_s=5).to_pylist() == [{"x": 1}]


def test_bad_requests_are_4xx_without_tracebacks(server):
    import urllib.error

    cases = [("/sample/999999", 404, "no sample with id"), ("/sample/abc", 400, "must be an integer"),
             ("/img/999999.png", 404, "no sample with id"), ("/img/..%2F..%2Fetc%2Fpasswd", 404, ""),
             ("/img/group/99/profile.png", 404, "no error group"), ("/api/sql?q=" + urllib.request.quote("DROP TABLE samples"), 400, "read-only"),
             ("/api/sql?q=" + urllib.request.quote("SELECT * FROM read_csv('/etc/passwd')"), 400, "disabled"),
             ("/api/sql?q=" + urllib.request.quote("SELEC 1"), 400, "does not parse"), ("/api/neighbors/3?k=x", 400, "integer"),
             ("/api/neighbors/3?space=pixels", 400, "saliency or feature"), ("/static/../../etc/passwd", 404, "")]
    for path, status, words in cases:
        with pytest.raises(urllib.error.HTTPError) as err:
            _open(server + path)
        body = err.value.read().decode()
        assert err.value.code == status and words in body and "Traceback" not in body, (path, err.value.code, body[:300])
    big = b"x" * (11 * 2**20)
    req = urllib.request.Request(server + "/api/search", data=big, method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    with pytest.raises(urllib.error.HTTPError) as err:
        _open(req)
    assert err.value.code == 413


def test_follows_new_commits_and_never_locks(server, demo_db, browser):
    """An ingest while the app runs (so the app holds no writer lock) shows on the next page load; then triage."""
    from selenium.webdriver.common.by import By

    before = _json(server, "/api/info")["commit"]
    run_cli("ingest", "--db", demo_db, "--data", "builtin:mnist5k:train", "--split", "later", "--limit", 300, "-q")
    run_cli("triage", "--db", demo_db, "--split", "later")
    assert _json(server, "/api/info")["commit"] > before
    browser.get(server + "/")
    assert "later" in [r.find_element(By.TAG_NAME, "td").text for r in browser.find_elements(By.CSS_SELECTOR, "#splits tr")[1:]]
    browser.get(server + "/triage?split=later")
    new = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#triage-new a.thumb"))
    known = _sample_ids(browser.find_elements(By.CSS_SELECTOR, "#triage-known a.thumb"))
    rows = json.loads(run_cli("sql", "--db", demo_db, "--format", "json", "SELECT sample_id, cluster FROM triage").stdout)
    assert sorted(new) == sorted(r["sample_id"] for r in rows if r["cluster"] == -1)
    assert sorted(known) == sorted(r["sample_id"] for r in rows if r["cluster"] != -1)
    _shot(browser, "triage")


def test_serve_refuses_bad_arguments(tmp_path, demo_db):
    out = subprocess.run([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and out.stderr.startswith("Error: ") and "Traceback" not in out.stderr
    with socket.socket() as busy:  # a port in use: one line before anything starts
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(demo_db), "--port", str(port)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port"]
    assert "serving" not in out.stdout


def test_serving_beyond_loopback_warns(demo_db):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(demo_db), "--host", "0.0.0.0",
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        token = urllib.parse.unquote(line.split("?token=", 1)[1].split()[0])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/info", headers={"Authorization": f"Bearer {token}"})
        for _ in range(300):
            try:
                urllib.request.urlopen(request, timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:  # beyond loopback the token is required, as always
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"at http://127.0.0.1:{port}/?token=" in line
    assert "warning: serving on 0.0.0.0" in err and "has the token can read the database" in err and "ssh -L" in err
