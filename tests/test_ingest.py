"""Ingesting new sets: frozen statistics, incremental indexes, idempotence, crash safety, bad input."""

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image

import saliencydb
from saliencydb.data import parse_data_spec
from saliencydb.storage import DatabaseWriter
from saliencydb.schemas import FORMAT_VERSION

from helpers import run_cli, run_cli_subprocess

CNN = "python:saliencydb.data.zoo:small_cnn"


def _glob(db, query):
    """Plain DuckDB over the parts the current version lists (older versions' files stay until vacuum)."""
    files = [str(Path(db) / p["file"]) for p in _manifest(db)["parts"]]
    return duckdb.sql(query.replace("SAMPLES", f"read_parquet({files!r})")).fetchall()


def _manifest(db):
    return json.loads((Path(db) / "manifest.json").read_text())


@pytest.fixture
def base_db(tmp_path, trained_weights):
    """200 val digits indexed with the trained CNN (the reference split)."""
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--limit", 200, "--quiet", "--workers", 0)
    return db


def test_ingest_appends_with_frozen_statistics_and_extends_the_index(base_db, tmp_path):
    units_before = _glob(base_db, "SELECT mean, std FROM read_parquet('DB/units/*.parquet') ORDER BY unit_id".replace("DB", str(base_db)))
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 150, "--quiet")
    assert "150 samples added" in r.output
    m = _manifest(base_db)
    assert m["stats"]["frozen"] and m["stats"]["splits"] == ["val"]
    assert _glob(base_db, "SELECT mean, std FROM read_parquet('DB/units/*.parquet') ORDER BY unit_id".replace("DB", str(base_db))) == units_before
    assert m["indexes"]["saliency"]["ntotal"] == 350 and m["indexes"]["feature"]["ntotal"] == 350
    # the extended index answers exactly like a rebuilt one
    db = saliencydb.open(base_db)
    before = [db.neighbors(i, k=8).neighbors for i in (3, 250)]
    from saliencydb.indexer import update_indexes

    with DatabaseWriter(base_db) as w:
        update_indexes(w, rebuild=True)
        w.commit()
    db = saliencydb.open(base_db)
    after = [db.neighbors(i, k=8).neighbors for i in (3, 250)]
    assert [[n["sample_id"] for n in a] for a in before] == [[n["sample_id"] for n in a] for a in after]
    jobs = db.sql("SELECT command, split, added, skipped, failed, status FROM ingests ORDER BY start").to_pylist()
    assert jobs[-1] == {"command": "ingest", "split": "train", "added": 150, "skipped": 0, "failed": 0, "status": "partial"}
    # idempotent: the same source again adds nothing; without --limit it finishes the split
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 150, "--quiet")
    assert "0 samples added, 150 already there" in r.output
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--quiet")
    assert "2850 samples added, 150 already there" in r.output
    assert _glob(base_db, "SELECT count(*), count(DISTINCT key), count(DISTINCT sample_id) FROM SAMPLES WHERE split = 'train'") == [(3000, 3000, 3000)]
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--quiet")
    assert "0 samples added, 3000 already there" in r.output


def test_replace_reprofiles_a_split_in_one_commit(base_db):
    db = saliencydb.open(base_db)
    db.mistakes(5, n_boot=10)
    ids_before = _glob(base_db, "SELECT min(sample_id), max(sample_id) FROM SAMPLES")
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:val", "--split", "val", "--limit", 200, "--replace", "--quiet")
    assert "200 samples added" in r.output
    rows = _glob(base_db, "SELECT count(*), min(sample_id), count(DISTINCT key) FROM SAMPLES")
    assert rows == [(200, 200, 200)] and ids_before == [(0, 199)]
    m = _manifest(base_db)
    assert "knn" not in m["tables"] and m["pending"] == {}
    assert m["indexes"]["saliency"]["ntotal"] == 200
    assert saliencydb.open(base_db).neighbors(250, k=3).neighbors[0]["sample_id"] >= 200
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:val", "--split", "nosuch", "--replace", "--quiet", expect=1)
    assert "has no split 'nosuch'" in r.output


def test_another_model_is_refused_with_the_model_named(base_db, trained_weights, tmp_path):
    m = _manifest(base_db)
    changed = tmp_path / "changed.pt"
    state = torch.load(trained_weights, weights_only=True)
    state["classifier.bias"] += 1
    torch.save(state, changed)
    m["model"]["weights"] = str(changed)
    (base_db / "manifest.json").write_text(json.dumps(m))
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--quiet", expect=1)
    assert f"holds model {CNN}" in r.output and "restore the original weights" in r.output


CRASHES = [
    ("part-written:1", "before the first commit"),
    ("part-committed:2", "between commits"),
    ("part-written:3", "renamed part not yet listed"),
    ("index-written:1", "during the index update"),
]


@pytest.fixture(scope="module")
def clean_ingest(tmp_path_factory, trained_weights):
    """An uninterrupted run of the command the crash tests interrupt."""
    db = tmp_path_factory.mktemp("clean") / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--limit", 200, "--quiet", "--workers", 0)
    run_cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 300,
            "--commit-every", 64, "--batch-size", 32, "--quiet", "--workers", 0)
    return db


@pytest.mark.parametrize("point, what", CRASHES)
def test_sigkill_at_every_point_of_the_commit_protocol(base_db, clean_ingest, point, what):
    args = ["ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 300,
            "--commit-every", 64, "--batch-size", 32, "--quiet", "--workers", 0]
    committed = _manifest(base_db)
    r = run_cli_subprocess(*args, env={**os.environ, "SALIENCYDB_CRASH_AT": point}, timeout=120)
    assert r.returncode == -9, (what, r.stderr)
    m = _manifest(base_db)
    # openable, and readers see exactly the last committed state
    db = saliencydb.open(base_db)
    n = db.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert n == sum(p["rows"] for p in m["parts"]) and n >= 200
    assert db.sql("SELECT count(*) AS n FROM samples WHERE split = 'val'").column("n")[0].as_py() == 200
    assert m["commit"] >= committed["commit"]
    db.close()  # a reader pins its version: vacuum below would keep it
    # rerunning the same command finishes the job: nothing lost, nothing twice
    r = run_cli_subprocess(*args, timeout=120)
    assert r.returncode == 0, r.stderr
    q = "SELECT split, key, raw_profile FROM SAMPLES ORDER BY split, key"
    got, want = _glob(base_db, q), _glob(clean_ingest, q)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want] and len(got) == 500
    assert _glob(base_db, "SELECT count(DISTINCT sample_id) FROM SAMPLES") == [(500,)]
    np.testing.assert_allclose(np.array([p for *_, p in got]), np.array([p for *_, p in want]), rtol=1e-5, atol=1e-10)
    m = _manifest(base_db)
    assert m["indexes"]["saliency"]["ntotal"] == 500 and m["indexes"]["feature"]["ntotal"] == 500
    listed = {p["file"] for p in m["parts"]} | {v["file"] for v in m["indexes"].values()} | {m["stats"]["file"]}
    listed |= {f for files in m["tables"].values() for f in files}
    def data_files():
        return {p.relative_to(base_db).as_posix() for p in base_db.rglob("*") if p.is_file()
                and p.relative_to(base_db).parts[0] not in ("versions", "pins")} - {"manifest.json", ".lock"}

    kept = set()
    for v in (base_db / "versions").glob("manifest-*.json"):
        k = json.loads(v.read_text())
        kept |= {p["file"] for p in k["parts"]} | {v["file"] for v in k["indexes"].values()} | {f for fs in k["tables"].values() for f in fs}
        kept |= {k["stats"]["file"]} if k["stats"] else set()
    assert listed <= data_files() <= kept  # no orphan or temporary file left: only files of kept versions
    assert not [p for p in base_db.rglob("*.tmp")]
    run_cli("vacuum", "--db", base_db, "--keep-versions", 1)
    assert data_files() == listed


def test_sigkill_while_computing_statistics_of_the_reference_split(tmp_path, trained_weights):
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--limit", 100, "--quiet", "--workers", 0]
    r = run_cli_subprocess(*args, env={**os.environ, "SALIENCYDB_CRASH_AT": "stats-written"}, timeout=120)
    assert r.returncode == -9
    m = _manifest(db)
    assert m["stats"] is None and sum(p["rows"] for p in m["parts"]) == 100
    assert saliencydb.open(db).info()["samples"] == 100
    assert run_cli_subprocess(*args, timeout=120).returncode == 0
    m = _manifest(db)
    assert m["stats"]["count"] == 100 and m["indexes"]["saliency"]["ntotal"] == 100


def test_readers_work_while_a_writer_holds_the_lock(base_db):
    with DatabaseWriter(base_db) as w:
        db = saliencydb.open(base_db)
        assert db.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == 200
        assert len(db.neighbors(0, k=3).neighbors) == 3
        r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--quiet", expect=1)
        assert "being written by another process" in r.output


def _bad_inputs_csv(root: Path) -> Path:
    """A CSV of digits with every kind of bad input mixed in."""
    src = parse_data_spec("builtin:mnist5k:train")
    root.mkdir()
    rows = []
    for i in range(12):
        src.load(i * 250).save(root / f"ok{i}.png")
        rows.append((f"ok{i}.png", src.label(i * 250)))
    src.load(5).convert("RGBA").save(root / "rgba.png")
    rows.append(("rgba.png", src.label(5)))
    src.load(6).convert("RGB").save(root / "rgb.jpg")
    rows.append(("rgb.jpg", src.label(6)))
    src.load(7).save(root / "trunc.jpg")
    data = (root / "trunc.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    rows.append(("trunc.jpg", 1))
    (root / "garbage.png").write_bytes(os.urandom(300))
    rows.append(("garbage.png", 2))
    rows.append(("missing.png", 3))
    src.load(8).save(root / "label12.png")
    rows.append(("label12.png", 12))
    Image.new("L", (28, 28), 255).save(root / "white.png")
    rows.append(("white.png", 4))
    Image.new("L", (40, 40), 0).save(root / "wrongsize.png")
    rows.append(("wrongsize.png", 5))
    (root / "list.csv").write_text("path,label\n" + "".join(f"{p},{l}\n" for p, l in rows))
    return root / "list.csv"


NAN_MODEL = '''
import torch
from saliencydb.data.zoo import SmallCNN

class Fragile(SmallCNN):
    """The demo CNN, except that an all-white input gives non-finite logits."""
    def forward(self, x):
        out = super().forward(x)
        white = (x.flatten(1).min(dim=1).values > 2.5)[:, None]
        return torch.where(white, torch.full_like(out, float("nan")), out)

def factory(num_classes=10):
    return Fragile(num_classes)
'''


def test_bad_input_is_recorded_and_the_rest_ingested(tmp_path, trained_weights):
    (tmp_path / "fragile.py").write_text(NAN_MODEL)
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"python:{tmp_path / 'fragile.py'}:factory", "--weights", trained_weights,
            "--data", "builtin:mnist5k:val", "--limit", 100, "--quiet", "--workers", 0)
    csv = _bad_inputs_csv(tmp_path / "new")
    r = run_cli_subprocess("ingest", "--db", db, "--data", f"csv:{csv}", "--split", "shifted", "--quiet", "--workers", "2", "--batch-size", 4)
    assert r.returncode == 2, r.stderr
    assert "14 samples added" in r.stdout and "6 failed" in r.stdout and "Traceback" not in r.stderr
    d = saliencydb.open(db)
    fails = dict(d.sql("SELECT key, reason FROM failures").to_pylist() and
                 [(x["key"], x["reason"]) for x in d.sql("SELECT key, reason FROM failures").to_pylist()])
    assert set(fails) == {"trunc.jpg", "garbage.png", "missing.png", "label12.png", "white.png", "wrongsize.png"}
    assert "does not exist" in fails["missing.png"] and "outside the model's 10 classes" in fails["label12.png"]
    assert "non-finite" in fails["white.png"] and "28x28" in fails["wrongsize.png"]
    assert "cannot decode" in fails["garbage.png"] and "trunc.jpg" in fails["trunc.jpg"]
    keys = {x["key"] for x in d.sql("SELECT key FROM samples WHERE split = 'shifted'").to_pylist()}
    assert keys == {f"ok{i}.png" for i in range(12)} | {"rgba.png", "rgb.jpg"}
    job = d.sql("SELECT added, failed, status FROM ingests WHERE split = 'shifted'").to_pylist()
    assert job == [{"added": 14, "failed": 6, "status": "complete_with_failures"}]
    # a rerun adds nothing new and reports the same failures again
    r = run_cli_subprocess("ingest", "--db", db, "--data", f"csv:{csv}", "--split", "shifted", "--quiet")
    assert r.returncode == 2 and "0 samples added" in r.stdout and "6 failed" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--db", "{tmp}/nothing", "--data", "builtin:mnist5k:val", "--split", "x"], "no database at"),
        (["--db", "{db}", "--data", "bogus:spec", "--split", "x"], "unknown kind 'bogus'"),
        (["--db", "{db}", "--data", "builtin:mnist5k:val", "--split", "x", "--replace"], "has no split 'x'"),
        (["--db", "{db}", "--data", "builtin:mnist5k:train", "--split", "val"], "already holds builtin:mnist5k:val"),
        (["--db", "{db}", "--data", "builtin:mnist5k:train"], "Missing option '--split'"),
    ],
)
def test_wrong_arguments_give_one_clear_line(base_db, tmp_path, args, message):
    args = [a.replace("{db}", str(base_db)).replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli_subprocess("ingest", *args, "--quiet", timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr


def test_newer_format_is_refused_by_ingest(base_db):
    m = _manifest(base_db)
    m["format_version"] = FORMAT_VERSION + 1
    (base_db / "manifest.json").write_text(json.dumps(m))
    r = run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--quiet", expect=1)
    assert "upgrade saliencydb" in r.output


def test_triage_assigns_new_mistakes(base_db):
    db = saliencydb.open(base_db)
    db.clusters(3)
    run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 600, "--quiet")
    out = json.loads(run_cli("triage", "--db", base_db, "--split", "train", "--format", "json").output)
    db = saliencydb.open(base_db)
    n_new = db.sql("SELECT count(*) AS n FROM samples WHERE split = 'train' AND NOT correct").column("n")[0].as_py()
    assert out["new_mistakes"] == n_new > 0
    assert sum(g["new_mistakes"] for g in out["known_groups"]) + out["new_failure_mode"] == n_new
    assert [g["cluster"] for g in out["known_groups"]] == [0, 1, 2]
    stored = db.sql("SELECT cluster, count(*) AS n FROM triage GROUP BY cluster ORDER BY cluster").to_pylist()
    assert sum(r["n"] for r in stored) == n_new
    assert len(out["layer_drift"]) == 3 and out["reference_splits"] == ["val"]
    # every new mistake is compared with the nearest centroid, and put in that group when it joins one
    members = db.sql("SELECT sample_id, cluster FROM clusters").to_pylist()
    cents = []
    for c in range(3):
        v = db.vectors("saliency", [m["sample_id"] for m in members if m["cluster"] == c]).mean(0)
        cents.append(v / np.linalg.norm(v))
    tri = db.sql("SELECT sample_id, cluster, similarity FROM triage ORDER BY sample_id").to_pylist()
    sims = db.vectors("saliency", [t["sample_id"] for t in tri]) @ np.stack(cents).T
    np.testing.assert_allclose([t["similarity"] for t in tri], sims.max(1), rtol=1e-4, atol=1e-5)
    joined = np.array([t["cluster"] for t in tri])
    assert (joined[joined >= 0] == sims.argmax(1)[joined >= 0]).all()
    table = run_cli("triage", "--db", base_db, "--split", "train").output
    assert "new failure mode" in table
    r = run_cli("triage", "--db", base_db, "--split", "nope", expect=1)
    assert "unknown split 'nope'" in r.output


def test_restat_recomputes_over_chosen_splits(base_db):
    run_cli("ingest", "--db", base_db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 100, "--quiet")
    r = run_cli("restat", "--db", base_db, "--splits", "val,train", "--quiet")
    assert "statistics over val, train (300 samples)" in r.output
    db = saliencydb.open(base_db)
    raw = db.rows("raw_profile", np.arange(300))
    mean, std = db.stats
    np.testing.assert_allclose(mean, raw.astype(np.float64).mean(0), rtol=1e-6, atol=1e-12)
    want_std = raw.astype(np.float64).std(0, ddof=1)
    np.testing.assert_allclose(std, np.where(want_std <= 1e-14, 1, want_std), rtol=1e-5)
    m = _manifest(base_db)
    assert m["stats"]["frozen"] and m["stats"]["splits"] == ["val", "train"]
    assert m["indexes"]["saliency"]["ntotal"] == 300
    r = run_cli("restat", "--db", base_db, "--splits", "val,nope", "--quiet", expect=1)
    assert "unknown split 'nope'" in r.output
