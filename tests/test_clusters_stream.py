"""Issue 27: `clusters` above its memory budget trains on a seeded sample of the chosen rows and assigns
every row in one streaming pass; below it (and when the sample holds every row) the answer is unchanged."""

import importlib.util
import tracemalloc

import numpy as np
import pytest

import saliencydb
from helpers import ROOT
from saliencydb.query import clusters as clusters_mod


def _tables(db):
    clusters = db.sql("SELECT * FROM clusters ORDER BY sample_id").to_pylist()
    blame = db.sql("SELECT * FROM blame ORDER BY cluster, rank").to_pylist()
    return clusters, blame


def _spy(monkeypatch, name):
    calls = []
    real = getattr(clusters_mod, name)

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(clusters_mod, name, spy)
    return calls


@pytest.mark.parametrize("kw", [dict(errors_only=True), dict(errors_only=False, split="val")])
def test_streaming_with_every_row_in_the_sample_is_the_in_memory_answer(digits_copy, monkeypatch, kw):
    before = saliencydb.open(digits_copy).clusters(4, seed=3, **kw).to_dict()
    before.pop("base_commit")
    tables_before = _tables(saliencydb.open(digits_copy))
    streamed = _spy(monkeypatch, "_streamed")
    trained = _spy(monkeypatch, "_train")
    monkeypatch.setattr(clusters_mod, "_in_memory", lambda n_rows, n_units: False)  # the streaming path...
    monkeypatch.setattr(clusters_mod, "_stored_run", lambda *a: None)  # clustered again, not read back
    after = saliencydb.open(digits_copy).clusters(4, seed=3, **kw).to_dict()  # ...with the default budgets
    after.pop("base_commit")
    assert len(streamed) == 1 and trained[0][0].shape[0] == before["samples"]  # every chosen row trained
    assert after == before
    assert _tables(saliencydb.open(digits_copy)) == tables_before


def test_in_memory_profiles_read_in_blocks_are_the_whole_read(digits_copy, monkeypatch):
    db = saliencydb.open(digits_copy)
    ids = db.ids_where()
    monkeypatch.setattr(clusters_mod, "BLOCK_BYTES", 37 * db.manifest.n_units * 4)  # 37 rows a read
    assert np.array_equal(clusters_mod._z(db, ids), db.z(ids))


def test_sampled_training_is_deterministic_and_assigns_every_row(digits_copy, monkeypatch):
    db = saliencydb.open(digits_copy)
    units = db.manifest.n_units
    monkeypatch.setattr(clusters_mod, "TRAIN_BYTES", 40 * units * 4)  # 40 training rows
    monkeypatch.setattr(clusters_mod, "BLOCK_BYTES", 64 * units * 4)  # many blocks, many searches
    trained = _spy(monkeypatch, "_train")
    a = db.clusters(5, seed=1, errors_only=False, write=False).to_dict()
    b = saliencydb.open(digits_copy).clusters(5, seed=1, errors_only=False).to_dict()
    assert [x[0].shape[0] for x in trained] == [40, 40]
    assert np.array_equal(trained[0][0], trained[1][0])
    a.pop("base_commit"), b.pop("base_commit"), b.pop("stored"), a.pop("stored")
    assert a == b
    db = saliencydb.open(digits_copy)
    n = db.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    per_sample = db.sql("SELECT sample_id, count(*) AS n FROM clusters GROUP BY sample_id").to_pylist()
    assert len(per_sample) == n == a["samples"] and all(r["n"] == 1 for r in per_sample)
    assert sum(g["size"] for g in a["clusters"]) == n
    sizes = [g["size"] for g in a["clusters"]]
    assert sizes == sorted(sizes, reverse=True)
    members = db.sql("SELECT sample_id FROM clusters WHERE cluster = 0").column("sample_id").to_numpy()
    want = db.z(members).astype(np.float64).mean(axis=0)
    blame = db.sql("SELECT unit_id, mean_z FROM blame WHERE cluster = 0 ORDER BY unit_id").to_pylist()
    assert [r["unit_id"] for r in blame] == list(range(units))
    np.testing.assert_allclose([r["mean_z"] for r in blame], want, rtol=1e-4, atol=1e-5)


def _build():
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "benchmarks" / "query.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


def test_peak_memory_is_bounded_by_the_budget_not_the_samples(tmp_path, monkeypatch):
    rows, units = 3000, 2000
    _build()(tmp_path / "db", rows, units, 64)
    full = rows * units * 4  # 24 MB: the chosen rows' float32 matrix (errors_only=False: all rows)
    monkeypatch.setattr(clusters_mod, "TRAIN_BYTES", full // 12)  # 250 training rows, 2 MB
    monkeypatch.setattr(clusters_mod, "BLOCK_BYTES", full // 24)  # 125 rows a block, 1 MB
    db = saliencydb.open(tmp_path / "db")
    db.ids_where()  # DuckDB's views and the samples' metadata are not the subject
    tracemalloc.start()
    try:
        result = db.clusters(8, errors_only=False, write=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.samples == rows and sum(g.size for g in result.clusters) == rows
    # held at once: the 2 MB training sample, or a block's float64 standardisation (~3 x 2 MB) plus the
    # pending rows, their copy and its normalisation (~4 x 1 MB), plus O(rows) arrays and the
    # clusters' sums: about 10 MB; the in-memory path holds the full matrix twice over, and more.
    assert peak < full / 2, f"traced peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB matrix"
