"""The query layer: neighbours (equal to brute force), the knn graph, SQL, clusters, bad input."""

import json

import duckdb
import numpy as np
import pytest
from PIL import Image

import saliencydb
from saliencydb.query.knn import mistakes

from helpers import run_cli


def _brute_force(db_path, space="saliency"):
    """All stored vectors, standardised with the stored units table and normalised, by plain duckdb + numpy."""
    col = "raw_profile" if space == "saliency" else "feature"
    rows = duckdb.sql(f"SELECT sample_id, split, correct, {col} FROM read_parquet('{db_path}/samples/**/*.parquet') ORDER BY sample_id").fetchall()
    ids = np.array([r[0] for r in rows])
    x = np.array([r[3] for r in rows], dtype=np.float64)
    if space == "saliency":
        units = duckdb.sql(f"SELECT mean, std FROM read_parquet('{db_path}/units/*.parquet') ORDER BY unit_id").fetchall()
        mean, std = np.array(units).T
        x = (x - mean) / std
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return ids, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), x


@pytest.mark.parametrize("space", ["saliency", "feature"])
def test_neighbors_equal_brute_force_cosine(digits_db, space):
    ids, _, _, x = _brute_force(digits_db, space)
    db = saliencydb.open(digits_db)
    for q in [0, 17, 599, 700]:
        res = db.neighbors(q, k=10, space=space)
        sims = x @ x[np.searchsorted(ids, q)]
        sims[np.searchsorted(ids, q)] = -np.inf
        want = ids[np.argsort(-sims, kind="stable")[:10]]
        got = [r["sample_id"] for r in res.neighbors]
        assert q not in got
        # equal up to ties of float32 rounding: same similarities, same set
        np.testing.assert_allclose([r["similarity"] for r in res.neighbors], np.sort(sims)[::-1][:10], atol=1e-5)
        assert set(got) == set(want) or np.isclose(np.sort(sims)[::-1][9], np.sort(sims)[::-1][10], atol=1e-6)


def test_where_filters_before_the_search(digits_db):
    ids, splits, correct, x = _brute_force(digits_db)
    db = saliencydb.open(digits_db)
    q = int(ids[np.flatnonzero(~correct)[0]])
    res = db.neighbors(q, k=10, where="NOT correct AND split = 'val'")
    assert len(res.neighbors) == 10
    assert all(not r["correct"] and r["split"] == "val" for r in res.neighbors)
    pool = np.flatnonzero(~correct & (splits == "val") & (ids != q))
    sims = x[pool] @ x[np.searchsorted(ids, q)]
    np.testing.assert_allclose([r["similarity"] for r in res.neighbors], np.sort(sims)[::-1][:10], atol=1e-5)
    assert res.summary["share_misclassified"] == 1.0
    res = db.neighbors(q, k=5, split="train")
    assert [r["split"] for r in res.neighbors] == ["train"] * 5


def test_neighbors_cli_formats(digits_db):
    out = json.loads(run_cli("neighbors", "--db", digits_db, "--id", 5, "-k", 3, "--format", "json").output)
    assert set(out) == {"query", "space", "k", "neighbors", "summary", "commit", "note"}
    assert out["note"] is None and out["commit"] >= 1
    assert [n["rank"] for n in out["neighbors"]] == [1, 2, 3]
    assert set(out["neighbors"][0]) == {"rank", "sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct", "similarity"}
    assert set(out["summary"]) == {"neighbors", "share_misclassified", "share_same_prediction", "share_same_confusion", "share_same_label"}
    csv_out = run_cli("neighbors", "--db", digits_db, "--id", 5, "-k", 3, "--format", "csv").output.splitlines()
    assert csv_out[0] == "rank,sample_id,split,key,label,label_name,pred,pred_name,correct,similarity" and len(csv_out) == 4
    table = run_cli("neighbors", "--db", digits_db, "--id", 5, "-k", 3).output
    assert "sample 5: label" in table and "of the 3 neighbours are misclassified" in table


def test_new_image_query_equals_the_stored_sample(digits_db, tmp_path):
    """The same digit given as a PNG file gets the stored sample's profile and neighbours."""
    from saliencydb.data import parse_data_spec

    db = saliencydb.open(digits_db)
    key, label = db.con.execute("SELECT key, label FROM samples WHERE sample_id = 42").fetchone()
    source = parse_data_spec("builtin:mnist5k:all")
    img = source.load(int(key.split("/")[1]))
    img.save(tmp_path / "digit.png")
    by_image = db.neighbors(image=str(tmp_path / "digit.png"), label=str(label), k=6)
    by_id = db.neighbors(42, k=5)
    got = [r["sample_id"] for r in by_image.neighbors]
    assert got[0] == 42 and by_image.neighbors[0]["similarity"] > 0.9999
    assert got[1:] == [r["sample_id"] for r in by_id.neighbors]
    # wrong size and a label outside the classes: one clear error each
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    r = run_cli("neighbors", "--db", digits_db, "--image", tmp_path / "big.png", "--label", 3, expect=1)
    assert "expects exactly 28x28" in r.output and r.output.count("\n") == 1
    r = run_cli("neighbors", "--db", digits_db, "--image", tmp_path / "digit.png", "--label", "eleven", expect=1)
    assert "not one of the model's 10 classes" in r.output
    (tmp_path / "junk.png").write_bytes(b"not an image")
    r = run_cli("neighbors", "--db", digits_db, "--image", tmp_path / "junk.png", "--label", 3, expect=1)
    assert "cannot decode" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--id", 123456], "no sample with id 123456"),
        (["--id", 1, "-k", 5000], "larger than the"),
        (["--id", 1, "--split", "nope"], "unknown split 'nope'"),
        (["--id", 1, "--where", "no_such_column > 1"], "--where"),
        (["--id", 1, "--where", "true); DROP VIEW samples; SELECT (1"], "one SQL predicate"),
        (["--id", 1, "--where", "true; DROP VIEW samples"], "one SQL predicate"),
        ([], "give either a sample id"),
    ],
)
def test_neighbors_bad_input(digits_db, args, message):
    r = run_cli("neighbors", "--db", digits_db, *args, expect=1)
    assert message in r.output and "Traceback" not in r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1


def test_mistakes_graph_and_statistic(digits_copy):
    db = saliencydb.open(digits_copy)
    report = mistakes(db, k=10, n_boot=200)
    db = db.reopen()
    knn = db.sql("SELECT space, count(*) AS n, count(DISTINCT sample_id) AS q, sum((sample_id = neighbor_id)::INT) AS self FROM knn GROUP BY space ORDER BY space").to_pylist()
    assert knn == [{"space": "feature", "n": 8000, "q": 800, "self": 0}, {"space": "saliency", "n": 8000, "q": 800, "self": 0}]
    per = db.sql("SELECT count(*) AS c FROM knn GROUP BY space, sample_id HAVING count(*) != 10").num_rows
    assert per == 0
    cross = db.sql("SELECT count(*) AS c FROM knn k JOIN samples a USING (sample_id) JOIN samples b ON b.sample_id = k.neighbor_id WHERE a.split != b.split").column("c")[0].as_py()
    assert cross == 0  # neighbours stay within the split
    # the statistic recomputed from the stored graph with SQL
    val = db.sql(
        """SELECT a.correct, avg(b.correct::DOUBLE) AS share FROM knn k JOIN samples a USING (sample_id)
           JOIN samples b ON b.sample_id = k.neighbor_id WHERE k.space = 'saliency' AND a.split = 'val'
           GROUP BY a.sample_id, a.correct"""
    ).to_pandas().groupby("correct")["share"].mean()
    e = report["splits"]["val"]["saliency"]
    assert e["correct_neighbors_of_correct"]["mean"] == pytest.approx(val[True])
    assert e["correct_neighbors_of_incorrect"]["mean"] == pytest.approx(val[False])
    lo, hi = e["correct_neighbors_of_incorrect"]["ci95"]
    assert lo <= e["correct_neighbors_of_incorrect"]["mean"] <= hi
    # on a trained model, saliency neighbours of mistakes are mistakes more often than correct ones' are
    assert e["correct_neighbors_of_incorrect"]["mean"] < e["correct_neighbors_of_correct"]["mean"]
    again = run_cli("mistakes", "--db", digits_copy, "--format", "csv", "--bootstrap", 50)
    assert "read, not searched again" in again.stderr  # the stored graph is this version's for -k 10
    out = again.stdout.splitlines()
    assert out[0] == "split,space,group,samples,correct_neighbors,ci95_low,ci95_high,same_confusion"
    assert len(out) == 1 + 2 * (2 + 3) * 2  # 2 splits x (2 spaces + 3 baselines) x 2 groups


def test_clusters_deterministic_and_joinable(digits_copy):
    a = saliencydb.open(digits_copy).clusters(4, seed=3).to_dict()
    b = saliencydb.open(digits_copy).clusters(4, seed=3, write=False).to_dict()  # clustered again, not stored
    c = saliencydb.open(digits_copy).clusters(4, seed=3).to_dict()  # the stored run is current: read back
    base_a, base_b, base_c = a.pop("base_commit"), b.pop("base_commit"), c.pop("base_commit")
    assert base_a < base_b == base_c + 1  # the second ran on the version the first stored; the third read that
    assert base_c == base_a and a.pop("stored") is True and b.pop("stored") is False and c.pop("reused") is True
    assert a == b
    assert c.pop("stored") is True and c == a
    db = saliencydb.open(digits_copy)
    n_err = db.sql("SELECT count(*) AS n FROM samples WHERE NOT correct").column("n")[0].as_py()
    sizes = db.sql("SELECT cluster, count(*) AS n FROM clusters GROUP BY cluster ORDER BY cluster").to_pylist()
    assert sum(r["n"] for r in sizes) == n_err == a["samples"]
    assert [r["n"] for r in sizes] == [g["size"] for g in a["clusters"]]
    assert [r["n"] for r in sizes] == sorted([r["n"] for r in sizes], reverse=True)
    assert db.sql("SELECT count(*) AS n FROM clusters JOIN samples USING (sample_id) WHERE correct").column("n")[0].as_py() == 0
    # blame: per cluster, units ranked by mean standardised saliency, equal to a numpy recomputation
    top = db.sql("SELECT unit_id, mean_z FROM blame WHERE cluster = 0 ORDER BY rank LIMIT 3").to_pylist()
    members = db.sql("SELECT sample_id FROM clusters WHERE cluster = 0").column("sample_id").to_pylist()
    mean, std = db.stats
    z = (db.rows("raw_profile", members) - mean) / std
    want = np.argsort(-z.mean(0))[:3]
    assert [r["unit_id"] for r in top] == list(want)
    np.testing.assert_allclose([r["mean_z"] for r in top], z.mean(0)[want], rtol=1e-4)
    r = run_cli("clusters", "--db", digits_copy, "--n-clusters", 100000, expect=1)
    assert "more than the" in r.output


def test_sql_is_read_only(digits_copy):
    before = sorted(p.name for p in digits_copy.rglob("*"))
    for stmt in [
        "DROP VIEW samples",
        "CREATE TABLE t AS SELECT 1",
        f"COPY (SELECT 1) TO '{digits_copy}/samples/val/evil.parquet'",
        "DELETE FROM samples",
        f"ATTACH '{digits_copy}/x.duckdb'",
        "SET threads = 1",
        "SELECT 1; DROP VIEW samples",
    ]:
        r = run_cli("sql", "--db", digits_copy, stmt, expect=1)
        assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert sorted(p.name for p in digits_copy.rglob("*")) == before
    r = run_cli("sql", "--db", digits_copy, "SELEC oops", expect=1)
    assert "SQL" in r.output


def test_sql_helpers(digits_db):
    db = saliencydb.open(digits_db)
    top = db.sql("SELECT * FROM top_units(7, 5)").to_pylist()
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    z = [r["z"] for r in top]
    assert z == sorted(z, reverse=True)
    mean, std = db.stats
    full = (db.rows("raw_profile", [7])[0] - mean) / std
    np.testing.assert_allclose(z, np.sort(full)[::-1][:5], rtol=1e-5)
    assert db.sql("SELECT count(*) AS n FROM profile(7)").column("n")[0].as_py() == 112
    assert db.sql("SELECT name FROM classes WHERE class = 3").column("name")[0].as_py() == "3"
    assert db.sql("SELECT confusion FROM samples WHERE sample_id = 7").column("confusion")[0].as_py().count(" -> ") == 1
    out = run_cli("sql", "--db", digits_db, "SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split", "--format", "json").output
    assert json.loads(out) == [{"split": "train", "n": 200}, {"split": "val", "n": 600}]


def test_json_shapes_are_the_documented_ones(digits_copy):
    """The top-level keys of every query command's JSON, as the README documents them."""
    info = json.loads(run_cli("info", "--db", digits_copy, "--format", "json").output)
    assert set(info) == {"path", "format_version", "commit", "latest_commit", "versions", "operation", "model", "units",
                         "feature_dim", "metric", "samples", "splits", "statistics", "indexes", "derived"}
    assert set(info["splits"]["val"]) == {"source", "complete", "samples", "accuracy", "mistakes", "failures"}
    mis = json.loads(run_cli("mistakes", "--db", digits_copy, "--format", "json", "--bootstrap", 20).output)
    assert set(mis) == {"k", "bootstrap", "seed", "splits", "base_commit", "stored", "normalisation"}
    assert set(mis["splits"]["val"]) == {"samples", "correct", "incorrect", "saliency", "feature", "baselines"}
    assert set(mis["splits"]["val"]["baselines"]) == {"loss", "label", "random"}
    assert set(mis["splits"]["val"]["saliency"]["correct_neighbors_of_incorrect"]) == {"mean", "ci95", "n"}
    cl = json.loads(run_cli("clusters", "--db", digits_copy, "--n-clusters", 3, "--format", "json").output)
    assert set(cl) == {"run", "n_clusters", "samples", "clusters", "base_commit", "stored"}
    assert set(cl["clusters"][0]) == {"cluster", "size", "top_confusions", "top_layers", "top_units", "exemplars"}
    run_cli("clusters", "--db", digits_copy, "--n-clusters", 3, "--split", "val")  # triage compares with groups built without train
    tri = json.loads(run_cli("triage", "--db", digits_copy, "--split", "train", "--format", "json").output)
    assert set(tri) == {"split", "run", "new_mistakes", "known_groups", "new_failure_mode", "reference_splits", "layer_drift",
                        "base_commit", "stored", "groups_built_on"}
    rows = json.loads(run_cli("sql", "--db", digits_copy, "SELECT 1 AS one", "--format", "json").output)
    assert rows == [{"one": 1}]


def test_query_commands_start_without_torch(digits_copy):
    """sql, info, neighbors by id, mistakes, clusters and profile-plot never import torch (interactive start-up);
    the engine is loaded only for a new image."""
    import subprocess
    import sys

    script = f"""
import sys
from click.testing import CliRunner
from saliencydb.cli import cli
db = {str(digits_copy)!r}
for args in (["sql", "--db", db, "SELECT count(*) FROM samples"], ["info", "--db", db],
             ["neighbors", "--db", db, "--id", "5", "-k", "3"], ["mistakes", "--db", db],
             ["clusters", "--db", db, "--n-clusters", "3"],
             ["profile-plot", "--db", db, "--split", "val", "--out", db + "/../profiles.png"]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output)
print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _synthetic_db(path, n, units, index_kind):
    """A synthetic database written through the real writer (the query benchmark's builder)."""
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "benchmarks" / "query.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.build(path, n, units, 8, index_kind=index_kind)
    return path


def test_ivfpq_index_is_small_and_reranked_neighbours_are_exact(tmp_path):
    """IVF-PQ keeps compressed codes; single queries re-rank its candidates by the exact profiles,
    so neighbours match brute force. Too few rows to train it: an exact flat index instead."""
    db_path = _synthetic_db(tmp_path / "pq", 12_000, 200, "ivfpq")
    with saliencydb.open(db_path) as db:
        info = db.info()["indexes"]["saliency"]
        assert (info["kind"], info["requested"], info["ntotal"]) == ("ivfpq", "ivfpq", 12_000)
        size = (db_path / db.manifest.indexes["saliency"]["file"]).stat().st_size
        assert size < 12_000 * 200 * 4 / 4  # a flat index holds 4 bytes per unit and sample
        ids = db.ids_where()
        vectors = db.vectors("saliency", ids)
        recall = []
        for sid in range(0, 12_000, 240):  # 50 queries
            got = db.neighbors(sid, k=10).neighbors
            sims = vectors @ vectors[sid]
            sims[sid] = -np.inf
            want = set(ids[np.argsort(-sims)[:10]].tolist())
            recall.append(len(want & {r["sample_id"] for r in got}) / 10)
            # what is returned is ranked by, and shows, the exact cosine similarity
            assert [r["similarity"] for r in got] == pytest.approx([float(sims[r["sample_id"]]) for r in got], abs=1e-5)
            assert all(a["similarity"] >= b["similarity"] for a, b in zip(got, got[1:]))
        assert np.mean(recall) >= 0.9, np.mean(recall)
        wrong = set(db.ids_where("NOT correct").tolist())
        filtered = db.neighbors(5, k=5, where="NOT correct").neighbors
        assert len(filtered) == 5 and all(r["sample_id"] in wrong for r in filtered)
        # a filter so narrow that the probed lists may hold none of it: still the exact answer
        few = [17, 4_321, 9_876, 11_111]
        got = db.neighbors(5, k=3, where=f"sample_id IN ({', '.join(map(str, few))})").neighbors
        sims = vectors[few] @ vectors[5]
        assert [r["sample_id"] for r in got] == [few[i] for i in np.argsort(-sims, kind="stable")[:3]]
    small = _synthetic_db(tmp_path / "small", 2_000, 200, "ivfpq")
    with saliencydb.open(small) as db:
        info = db.info()["indexes"]["saliency"]
        assert (info["kind"], info["requested"]) == ("flat", "ivfpq")
