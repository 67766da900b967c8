"""The SQL sandbox, through the real CLI in subprocesses: `saliencydb sql` runs one read-only
statement and nothing else, whatever the statement tries (write the database directory, reach
files or the network outside it, change the connection's settings); `neighbors --where` takes
one predicate, not a way to append a query. Refusals are one line on stderr, exit code 1.
"""

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import run_cli_subprocess

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
