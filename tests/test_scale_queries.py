"""Issue 27: a saliency query scans the stored flat index memory-mapped, block by block, and answers
exactly what the index loaded whole answers; `verify` checks an index without reading its vectors."""

import importlib.util
import shutil

import faiss
import numpy as np
import pytest

import saliencydb
from helpers import ROOT
from saliencydb.storage import indexes, maintenance
from saliencydb.storage.reader import read_index, write_index


def _builder():
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "benchmarks" / "query.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("scale") / "db"
    _builder()(db, 700, 400, 16, part_rows=256)
    return db


def _flat_file(tmp_path, vectors, ids):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, ids)
    write_index(index, tmp_path / "t.faiss")
    return read_index(tmp_path, "t.faiss"), read_index(tmp_path, "t.faiss", mapped=True)


def test_scan_of_a_mapped_index_is_the_index_search_ties_included(tmp_path, monkeypatch):
    monkeypatch.setattr(indexes, "SCAN_BLOCK_BYTES", 40 * 32 * 4)  # 40 rows a block: many blocks
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for p in (3, 5, 41, 42, 120, 499):  # exact ties, across blocks
        x[p] = x[7]
    ids = (np.arange(500)[::-1] * 3 + 11).astype(np.int64)  # ids not in stored order
    whole, mapped = _flat_file(tmp_path, x, ids)
    for k in (1, 3, 5, 8, 20):
        for cand in (None, ids[::2], ids[[7, 3, 120, 499, 250]]):
            params = None if cand is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(cand))
            want_s, want_i = whole.search(x[7:8], k, params=params)
            got_s, got_i = indexes.scan_flat(mapped, x[7:8], k, cand, release=True)
            assert got_i.tolist() == want_i.tolist(), (k, cand)
            np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)
            if cand is not None:  # the filtered kernel is FAISS's own, bit for bit
                assert got_s.tobytes() == want_s.tobytes()


def test_neighbors_read_mapped_answer_as_the_loaded_index(synthetic_db, monkeypatch):
    monkeypatch.setattr(indexes, "SCAN_BLOCK_BYTES", 64 * 400 * 4)  # 64 rows a block
    with saliencydb.open(synthetic_db) as mapped, saliencydb.open(synthetic_db) as loaded:
        loaded.index("saliency")  # loaded whole: the search of today's callers (serve, mistakes)
        assert mapped.query_index("saliency")[1] and not loaded.query_index("saliency")[1]
        for sid in (0, 255, 256, 699):
            for where in (None, "NOT correct", "label < 5"):
                a = mapped.neighbors(sid, k=10, where=where).to_dict()
                b = loaded.neighbors(sid, k=10, where=where).to_dict()
                assert a["neighbors"] == b["neighbors"], (sid, where)
        for space, split in (("feature", None), ("feature", "val"), ("saliency", "val")):
            a = mapped.neighbors(42, k=7, space=space, split=split, where="correct").to_dict()
            assert a["neighbors"] == loaded_in(loaded, space).neighbors(42, k=7, space=space, split=split,
                                                                         where="correct").to_dict()["neighbors"]
        a = mapped.neighbors(3, k=699).to_dict()["neighbors"]  # every other sample, in the same order
        assert a == loaded.neighbors(3, k=699).to_dict()["neighbors"]
        assert 3 not in [r["sample_id"] for r in a]


def loaded_in(db, space):
    db.index(space)  # loaded whole: query_index then returns it
    assert not db.query_index(space)[1]
    return db


def test_verify_reading_an_index_mapped_still_finds_a_wrong_count(synthetic_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(synthetic_db, db)
    assert maintenance.verify(db).ok
    m = saliencydb.open(db)
    rel = m.manifest.indexes["saliency"].file
    m.close()
    index = read_index(db, rel)
    index.remove_ids(faiss.IDSelectorRange(0, 1))  # one vector fewer than the manifest lists
    path = db / rel
    path.unlink()
    write_index(index, path)
    problem = maintenance._check_index(db, maintenance.read_current(db), rel)
    assert problem == "holds 699 vectors, the manifest says 700"
