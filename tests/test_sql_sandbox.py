"""The SQL sandbox, through the real CLI in subprocesses: `saliencydb sql` runs one read-only
statement and nothing else, whatever the statement tries (write the database directory, reach
files or the network outside it, change the connection's settings); `neighbors --where` takes
one predicate, not a way to append a query. Refusals are one line on stderr, exit code 1.
"""

import csv
import hashlib
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import run_cli, run_cli_subprocess

SECRET = "TOPSECRET-123"
PASSWD = "root:x:0:"  # what the first line of /etc/passwd would show

# (query, refused). <db>, <out> and <secret> stand for the database directory, a folder outside
# it, and a file in that folder holding SECRET. refused=False: DuckDB may run it, as a harmless read.
ATTEMPTS = [
    ("COPY samples TO '<db>/x.csv'", True),
    ("COPY (SELECT 1 AS a) TO '<db>/manifest.json' (FORMAT json)", True),
    ("COPY samples TO '<out>/out.csv'", True),
    ("COPY samples FROM '<secret>'", True),
    ("EXPORT DATABASE '<out>/exported'", True),
    ("ATTACH '<out>/attached.duckdb' AS a", True),
    ("INSTALL httpfs", True),
    ("LOAD httpfs", True),
    ("SET enable_external_access = true", True),
    ("SET lock_configuration = false", True),
    ("RESET enable_external_access", True),
    ("PRAGMA enable_profiling", True),
    ("CREATE TABLE t AS SELECT * FROM samples", True),
    ("CREATE OR REPLACE VIEW samples AS SELECT 1 AS sample_id", True),
    ("CREATE MACRO m(x) AS x + 1", True),
    ("CREATE SECRET s (TYPE S3, KEY_ID 'a', SECRET 'b')", True),
    ("INSERT INTO samples (sample_id) VALUES (-1)", True),
    ("UPDATE samples SET correct = true", True),
    ("DELETE FROM samples", True),
    ("DROP VIEW samples", True),
    ("ALTER VIEW samples RENAME TO s2", True),
    ("CALL pragma_version()", True),
    ("CHECKPOINT", True),
    ("UPDATE EXTENSIONS", True),
    ("EXPLAIN ANALYZE COPY samples TO '<out>/out.csv'", True),
    ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", True),
    ("EXPLAIN ANALYZE INSTALL httpfs", True),
    ("EXPLAIN ANALYZE SET enable_external_access = true", True),
    ("EXPLAIN (ANALYZE) SELECT * FROM read_text('<secret>')", True),
    ("EXPLAIN /* x */ ANALYZE COPY samples TO '<db>/x.csv'", True),
    ("EXPLAIN COPY samples TO '<out>/out.csv'", True),
    ("SELECT * FROM read_text('<secret>')", True),
    ("SELECT * FROM read_text('/etc/passwd')", True),
    ("SELECT * FROM read_csv('<secret>', header = false)", True),
    ("SELECT * FROM read_csv('/etc/passwd')", True),
    ("SELECT * FROM read_json('<secret>')", True),
    ("SELECT * FROM read_blob('<secret>')", True),
    ("SELECT * FROM '<secret>'", True),
    ("SELECT * FROM read_parquet('<db>/samples/**/*.parquet')", True),
    ("SELECT * FROM parquet_metadata('/etc/passwd')", True),
    ("SELECT * FROM glob('<out>/*')", True),
    ("PIVOT (SELECT * FROM read_text('<secret>')) ON content USING count(*)", True),
    ("SELECT * FROM query('SELECT content FROM read_text(''<secret>'')')", True),
    ("SELECT * FROM query('COPY samples TO ''<out>/out.csv''')", True),
    ("SELECT 42 AS answer FROM query('SELECT 1')", False),
    ("SELECT count(*) AS n FROM query_table('samples')", False),
    ("SELECT 1; DROP VIEW samples", True),
    ("SELECT 1 AS a; COPY samples TO '<out>/out.csv'", True),
    ("SELECT 1 --\n; SET enable_external_access = true", True),
    ("/* SELECT 1 */ COPY samples TO '<db>/x.csv'", True),
    ("-- SELECT 1\nDROP VIEW samples", True),
    ("SELECT 1 AS a -- ; DROP VIEW samples", False),
    # issue 28: a nested comment hides nothing from DuckDB's parser; a PIVOT (a MULTI statement) runs only as a SELECT
    ("/* /* */ SELECT */ CREATE TEMP TABLE samples AS SELECT s.* REPLACE (true AS correct, 'HACKED' AS label_name) "
     "FROM memory.main.samples s, (PIVOT (SELECT 1 AS a) ON a USING count(*)) p", True),
    ("/* /* */ SELECT */ COPY (PIVOT (SELECT 1 AS a) ON a USING count(*)) TO '<out>/out.csv'", True),
    ("PIVOT (SELECT 1 AS a) ON a USING count(*); DROP VIEW samples", True),
    ("EXPLAIN (\"analyze\" true) COPY samples TO '<out>/out.csv'", True),
    ("/* /* */ x */ PIVOT (SELECT 1 AS a) ON a USING count(*) ;", False),
]
TARGETS = ("<db>/x.csv", "<out>/out.csv", "<out>/exported", "<out>/attached.duckdb")


def _tree(root: Path) -> dict[str, str | None]:
    """Every file (sha256) and folder (None) under root, by relative path; pins/ left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if "pins" not in rel.parts:
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def _error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def _attempt(digits_db: Path, root: Path, query: str) -> dict:
    """Run one attempt on a private copy of the database (root/db), next to an outside folder."""
    db, outside = root / "db", root / "outside"
    shutil.copytree(digits_db, db)
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{SECRET}\n")

    def fill(text: str) -> str:
        return text.replace("<db>", str(db)).replace("<out>", str(outside)).replace("<secret>", str(outside / "secret.txt"))

    db_before, all_before = _tree(db), _tree(root)
    r = run_cli_subprocess("sql", "--db", db, "--format", "csv", "--", fill(query), timeout=120)
    return {"result": r, "db_before": db_before, "db_after": _tree(db), "all_before": all_before,
            "all_after": _tree(root), "targets_made": [t for t in TARGETS if Path(fill(t)).exists()]}


@pytest.fixture(scope="module")
def escapes(digits_db, tmp_path_factory) -> dict:
    """Every attempt of ATTEMPTS, each a real CLI subprocess on its own writable copy of the
    database; run a few at a time, as they are independent (each costs about a second)."""
    queries = [q for q, _ in ATTEMPTS]
    roots = [tmp_path_factory.mktemp("escape") for _ in queries]
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        runs = pool.map(_attempt, [digits_db] * len(queries), roots, queries)
        return dict(zip(queries, runs))


@pytest.mark.parametrize("query, refused", ATTEMPTS, ids=[q.replace("\n", " ")[:60] for q, _ in ATTEMPTS])
def test_escape_attempt_is_contained(escapes, query, refused):
    run = escapes[query]
    r = run["result"]
    if refused:
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert r.stdout == ""
        line = _error_line(r)
        # a refusal is not damage: the committed files are intact (see the hash check below)
        assert "damaged" not in line, line
    else:
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
    assert SECRET not in r.stdout + r.stderr
    assert PASSWD not in r.stdout + r.stderr
    # nothing written: the database's files are byte-identical, nothing new next to them or outside
    assert run["db_after"] == run["db_before"]
    assert run["all_after"] == run["all_before"]
    assert run["targets_made"] == []


def test_harmless_reads_see_only_the_views(escapes):
    assert escapes["SELECT 42 AS answer FROM query('SELECT 1')"]["result"].stdout.split() == ["answer", "42"]
    assert escapes["SELECT count(*) AS n FROM query_table('samples')"]["result"].stdout.split() == ["n", "800"]
    assert escapes["SELECT 1 AS a -- ; DROP VIEW samples"]["result"].stdout.split() == ["a", "1"]


# -- legitimate read-only statements ------------------------------------------------------

def _sql_json(db, query):
    r = run_cli_subprocess("sql", "--db", db, "--format", "json", "--", query, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def test_group_by(digits_db):
    before = _tree(digits_db)
    rows = _sql_json(digits_db, "SELECT split, count(*) AS n, count(*) FILTER (NOT correct) AS wrong "
                                "FROM samples GROUP BY split ORDER BY split")
    assert [(r["split"], r["n"]) for r in rows] == [("train", 200), ("val", 600)]
    assert all(0 <= r["wrong"] <= r["n"] for r in rows)
    assert _tree(digits_db) == before


def test_with_query(digits_db):
    rows = _sql_json(digits_db, "WITH per AS (SELECT split, count(*) AS n FROM samples GROUP BY split) "
                                "SELECT sum(n)::BIGINT AS total, max(n) AS biggest FROM per")
    assert rows == [{"total": 800, "biggest": 600}]


def test_pivot(digits_db):
    rows = _sql_json(digits_db, "PIVOT samples ON split USING count(*) GROUP BY correct ORDER BY correct")
    assert [set(r) for r in rows] == [{"correct", "train", "val"}] * len(rows)
    assert sum(r["val"] for r in rows) == 600 and sum(r["train"] for r in rows) == 200
    wrong = _sql_json(digits_db, "SELECT split, count(*) AS n FROM samples WHERE NOT correct GROUP BY split")
    by_split = {r["split"]: r["n"] for r in wrong}
    pivot_wrong = next((r for r in rows if r["correct"] is False), {"val": 0, "train": 0})
    assert (pivot_wrong["val"], pivot_wrong["train"]) == (by_split.get("val", 0), by_split.get("train", 0))


def test_describe(digits_db):
    rows = _sql_json(digits_db, "DESCRIBE samples")
    types = {r["column_name"]: r["column_type"] for r in rows}
    assert types["sample_id"] == "BIGINT" and types["split"] == "VARCHAR" and types["correct"] == "BOOLEAN"
    assert {"raw_profile", "feature", "confusion"} <= set(types)


def test_plain_explain(digits_db):
    rows = _sql_json(digits_db, "EXPLAIN SELECT split, count(*) FROM samples GROUP BY split")
    assert rows and "explain_value" in rows[0]
    assert "AGGREGATE" in " ".join(str(v) for r in rows for v in r.values()).upper()


def test_summarize(digits_db):
    rows = _sql_json(digits_db, "SUMMARIZE SELECT sample_id, split FROM samples")
    by_col = {r["column_name"]: r for r in rows}
    assert by_col["sample_id"]["count"] == 800 and by_col["split"]["approx_unique"] == 2


# -- neighbors --where ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["1=1) UNION SELECT 'abc' --", "sample_id > 0; DROP VIEW samples", "",
                                   "correct) OR (1=1"])
def test_where_that_is_not_one_predicate_is_refused(digits_db, where):
    before = _tree(digits_db)
    r = run_cli_subprocess("neighbors", "--db", digits_db, "--id", 5, "-k", 3, "--where", where, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    _error_line(r)
    assert "abc" not in r.stdout
    assert _tree(digits_db) == before


def test_where_predicate_filters_the_candidates(digits_db):
    r = run_cli_subprocess("neighbors", "--db", digits_db, "--id", 5, "-k", 3, "--where", "NOT correct",
                           "--format", "json", timeout=120)
    assert r.returncode == 0, r.stderr
    neighbors = json.loads(r.stdout)["neighbors"]
    assert len(neighbors) == 3
    assert all(n["correct"] is False for n in neighbors), neighbors
    assert 5 not in {n["sample_id"] for n in neighbors}


# -- issue 28: no parser trick turns SQL into a write; nothing a statement makes outlives it ---------

HACK = ("/* /* */ SELECT */ CREATE TEMP TABLE samples AS SELECT s.* REPLACE (true AS correct, 'HACKED' AS label_name) "
        "FROM memory.main.samples s, (PIVOT (SELECT 1 AS a) ON a USING count(*)) p")


def _check(query: str):
    import duckdb

    from saliencydb.query.database import check_read_only

    return check_read_only(duckdb.connect(":memory:"), query)


@pytest.mark.parametrize("query", [
    HACK,
    "/* /* */ SELECT */ COPY (PIVOT (SELECT 1 AS a) ON a) TO '.tmp/w.csv'",
    "COPY (PIVOT (SELECT 1 AS a) ON a USING count(*)) TO 'x.csv'",
    "CREATE VIEW v AS PIVOT (SELECT 1 AS a) ON a USING count(*)",
    "INSERT INTO t SELECT * FROM (PIVOT (SELECT 1 AS a) ON a USING count(*))",
    "EXPLAIN PIVOT (SELECT 1 AS a) ON a USING count(*)",
    "PIVOT (SELECT 1 AS a) ON a USING count(*)) p, (SELECT 1",
    "EXPLAIN (\"analyze\" true) CREATE TABLE x AS SELECT 1",
    "EXPLAIN (ANALYZE) SELECT 1",
    "EXPLAIN /* /* */ x */ ANALYZE SELECT 1",
    "EXPLAIN analyse SELECT 1",
    "EXPLAIN (FORMAT json, ANALYZE) SELECT 1",
    "EXPLAIN (FORMAT json) COPY t TO 'x.csv'",
    "EXPLAIN CREATE TABLE x AS SELECT 1",
    "/* /* */ SELECT */ DROP VIEW samples",
])
def test_the_parser_decides_what_runs(query):
    from saliencydb.errors import QueryError

    with pytest.raises(QueryError, match="read-only|EXPLAIN|one SQL statement|parse"):
        _check(query)


@pytest.mark.parametrize("query, runs", [
    ("SELECT 1 /* /* */ a */", "SELECT 1 /* /* */ a */"),
    ("EXPLAIN /* c */ SELECT 1", "EXPLAIN /* c */ SELECT 1"),
    ("EXPLAIN (format json) SELECT 1", "EXPLAIN (format json) SELECT 1"),
    ("PIVOT t ON a USING count(*); -- done", "SELECT * FROM (\nPIVOT t ON a USING count(*)\n)"),
    ("/* /* */ x */ PIVOT t ON a -- last\n", "SELECT * FROM (\n/* /* */ x */ PIVOT t ON a -- last\n\n)"),
])
def test_reads_run_as_given_and_a_pivot_as_a_select(query, runs):
    assert _check(query) == runs


def test_nested_comment_pivot_cannot_shadow_samples(digits_db):
    import saliencydb
    from saliencydb.errors import QueryError

    with saliencydb.open(digits_db) as db:
        with pytest.raises(QueryError, match="read-only"):
            db.sql(HACK)
        assert db.sql("SELECT count(*) AS n, count(*) FILTER (label_name = 'HACKED') AS hacked FROM samples").to_pylist() \
            == [{"n": 800, "hacked": 0}]
        # a PIVOT is still a query, with its rows in their order
        rows = db.sql("/* /* */ a */ PIVOT samples ON split USING count(*) GROUP BY correct ORDER BY correct DESC;").to_pylist()
        assert [r["correct"] for r in rows] == sorted((r["correct"] for r in rows), reverse=True)
        assert sum(r["train"] + r["val"] for r in rows) == 800


def test_what_a_statement_creates_is_rolled_back_unseen(digits_db):
    """Were a writing statement to get past the check, it runs on its own cursor in a transaction that is rolled
    back: the next query, the library's own SQL and the owner connection see none of it (tried directly with
    the runner that ``sql`` uses after its check)."""
    import saliencydb

    with saliencydb.open(digits_db) as db:
        for statement in [HACK.replace("/* /* */ SELECT */ ", ""), "CREATE TEMP TABLE samples AS SELECT 1 AS sample_id",
                          "CREATE OR REPLACE VIEW memory.main.samples AS SELECT 1 AS sample_id",
                          "CREATE TEMP MACRO top_units(a, b) AS TABLE SELECT 1 AS rank", "CREATE TABLE t AS SELECT 1 AS x",
                          "SELECT setseed(0.5)"]:
            db._run(statement)
            n = "SELECT count(*) AS n FROM samples WHERE label_name <> 'HACKED'"
            assert db.sql(n).to_pylist() == [{"n": 800}], statement
            assert db._execute(n).fetchall() == [(800,)] and db.con.execute(n).fetchall() == [(800,)], statement
            assert db.sql("SELECT count(*) AS n FROM top_units(7, 5)").to_pylist() == [{"n": 5}], statement
            made = db.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name IN ('t', 'samples')").to_pylist()
            assert made == [{"n": 0}], statement
        # the same on the owner connection: it has no TEMP objects either
        assert db.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall() == [(0,)]


def test_temp_directory_is_unreachable(digits_db, tmp_path, monkeypatch):
    """DuckDB keeps its temporary directory (<cwd>/.tmp) reachable with external access off; the connection has
    none (nothing spills), and its local file system is off: no read there, no write there."""
    import duckdb

    import saliencydb
    from saliencydb.errors import QueryError

    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text(SECRET)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    with saliencydb.open(digits_db) as db:
        assert db.sql("SELECT current_setting('temp_directory') AS t").to_pylist() == [{"t": ""}]
        for query in ["SELECT content FROM read_text('.tmp/*')", f"SELECT content FROM read_text('{tmp_path}/.tmp/*')",
                      "SELECT * FROM read_text('.tmp/secret.txt')", "SELECT * FROM glob('.tmp/*')",
                      "COPY (SELECT 1 AS a) TO '.tmp/x.csv'", f"COPY (SELECT 1 AS a) TO '{tmp_path}/.tmp/x.csv'",
                      "/* /* */ SELECT */ COPY (PIVOT (SELECT 1 AS a) ON a) TO '.tmp/w.csv'"]:
            with pytest.raises(QueryError) as err:
                db.sql(query)
            assert SECRET not in str(err.value), query
            with pytest.raises(duckdb.Error, match="disabled"):  # the runner itself, unchecked: the connection refuses
                db._run(query)
    r = run_cli_subprocess("sql", "--db", digits_db, "/* /* */ SELECT */ COPY (PIVOT (SELECT 1 AS a) ON a) TO '.tmp/w.csv'",
                           cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and SECRET not in r.stdout + r.stderr
    _error_line(r)
    r = run_cli_subprocess("sql", "--db", digits_db, "--format", "csv", "SELECT content FROM read_text('.tmp/*')",
                           cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and SECRET not in r.stdout + r.stderr
    assert _tree(tmp_path) == before


def test_failures_leave_no_pending_result(digits_db):
    """A failing query, a query stopped by its time limit, an unknown sample, a result left half read: the next
    query of the same open database works."""
    import saliencydb
    from saliencydb.errors import QueryError

    with saliencydb.open(digits_db) as db:
        failing = [lambda: db.sample(999999), lambda: db.sql("SELECT error('boom')"), lambda: db.sql("SELEC 1"),
                   lambda: db.sql("SELECT count(*) FROM range(100000000000) a", timeout_s=0.2),
                   lambda: db.ids_where("sample_id > 'x'::DATE"), lambda: db._execute("SELECT * FROM nowhere")]
        for fail in failing:
            with pytest.raises(QueryError):
                fail()
            assert db.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]
            assert db.sample(3)["sample_id"] == 3
        db._execute("SELECT * FROM range(10)").fetchone()  # left unfinished: its cursor's, not the database's
        assert db.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]
        assert db.con.execute("SELECT 2").fetchall() == [(2,)]
        assert len(db.ids_where("NOT correct")) + len(db.ids_where("correct")) == 800


ODD = "SELECT 'infinity'::DATE AS d, ['-infinity'::TIMESTAMP] AS l, DATE '2024-01-02' AS ok"


def test_values_python_cannot_hold_are_text_in_the_library(digits_db):
    import datetime

    import saliencydb

    with saliencydb.open(digits_db) as db:
        assert db.sql(ODD).to_pylist() == [{"d": "infinity", "l": "[-infinity]", "ok": datetime.date(2024, 1, 2)}]
        rows = db.sql("SELECT * FROM test_all_types()").to_pylist()
        assert len(rows) == 3 and rows[0]["date"] == "5877642-06-25 (BC)" and rows[2]["timestamp"] is None


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_values_python_cannot_hold_through_the_cli(digits_db, fmt):
    r = run_cli("sql", "--db", digits_db, "--format", fmt, ODD)
    assert "infinity" in r.output and "[-infinity]" in r.output and "Traceback" not in r.output
    if fmt == "json":
        assert json.loads(r.output) == [{"d": "infinity", "l": "[-infinity]", "ok": "2024-01-02"}]
    r = run_cli("sql", "--db", digits_db, "--format", fmt, "SELECT * FROM test_all_types()")
    assert "Traceback" not in r.output
    if fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(r.output)))) == 3 and "infinity" in r.output
    if fmt == "json":
        assert len(json.loads(r.output)) == 3


@pytest.fixture
def served(digits_copy):
    """A real `saliencydb serve` over a copy of the digits database, stopped at the end."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "serve", "--db", str(digits_copy), "--port", str(port),
                             "--no-token"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/info", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_after_failures_and_odd_values(served):
    from urllib.parse import quote

    one = served + "/api/sql?q=" + quote("SELECT 1 AS x")
    for path, status in [("/api/samples/999999", 404), ("/api/sql?q=" + quote("SELECT error('boom')"), 400),
                         ("/api/sql?q=" + quote("SELEC 1"), 400), ("/api/sql?q=" + quote(HACK), 400),
                         ("/sample/999999", 404), ("/api/samples/3", 200)]:
        code, body = _get(served + path)
        assert code == status and "Traceback" not in body, (path, code, body[:300])
        assert _get(one) == (200, '{"columns":["x"],"rows":[{"x":1}],"truncated":false,"max_rows":1000,"notes":[]}'), path
    code, body = _get(served + "/api/sql?q=" + quote(ODD))
    assert code == 200 and json.loads(body)["rows"] == [{"d": "infinity", "l": "[-infinity]", "ok": "2024-01-02"}]
    code, body = _get(served + "/api/sql?q=" + quote("SELECT * FROM test_all_types()"))
    assert code == 200 and len(json.loads(body)["rows"]) == 3, body[:300]
    code, body = _get(served + "/api/sql?q=" + quote("SELECT 'nan'::DOUBLE AS n, 1.50::DECIMAL(4,2) AS d"))
    assert code == 200 and json.loads(body)["rows"] == [{"n": "nan", "d": 1.5}]
    for path, words in [("/img/3.png?side=%C2%B2%C2%B2", "side must be an integer"), ("/img/3.png?side=%D9%A9%D9%A6", "side must"),
                        ("/api/samples/%D9%A3", "must be an integer"), ("/api/samples/" + "9" * 30, "must be an integer"),
                        ("/api/neighbors/3?k=%C2%B2", "must be an integer"), ("/api/samples/%203", "must be an integer")]:
        code, body = _get(served + path)
        assert code == 400 and words in body and "Traceback" not in body and body.count("\n") <= 1, (path, code, body)
    assert _get(served + "/img/3.png?side=64")[0] == 200
