"""The exact neighbour graph in bounded memory (query.graph): block against block, equal to a brute
force search whatever the block size, ties included; and ``mistakes`` through it."""

import tracemalloc

import numpy as np
import pytest

import saliencydb
from saliencydb.query import graph as graph_mod
from saliencydb.query.graph import Vectors, block_rows, knn_positions, scratch_vectors
from saliencydb.query.knn import knn_graph, stored_graphs


def _brute(x: np.ndarray, positions: np.ndarray, k: int):
    """Best first; ties by the earlier position; never itself."""
    sub = x[positions]
    sims = sub @ sub.T
    np.fill_diagonal(sims, -np.inf)
    out_s, out_p = [], []
    for r in range(len(positions)):
        order = np.lexsort((positions, -sims[r]))[:k]
        out_s.append(sims[r, order])
        out_p.append(positions[order])
    return np.array(out_s), np.array(out_p)


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1000])
def test_blocks_give_the_brute_force_graph(block):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(57, 6)).astype(np.float32)
    x[10] = x[3]  # exact duplicates: equal similarities, ranked by position
    x[40] = x[3]
    x[22] = x[5] * 2
    positions = np.flatnonzero(rng.random(57) < 0.8)
    want_s, want_p = _brute(x, positions, 5)
    got_s, got_p = knn_positions(Vectors(x, np.arange(57), mapped=False), positions, 5, block)
    np.testing.assert_array_equal(got_p, want_p)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert not (got_p == positions[:, None]).any()


def test_many_equal_similarities_choose_the_earliest_positions():
    x = np.ones((30, 4), np.float32)  # every pair equally similar
    got_s, got_p = knn_positions(Vectors(x, np.arange(30), mapped=False), np.arange(30), 3, 4)
    want = [[p for p in range(30) if p != r][:3] for r in range(30)]
    np.testing.assert_array_equal(got_p, want)
    np.testing.assert_allclose(got_s, 4.0)


def test_scratch_vectors_are_mapped_and_removed():
    rng = np.random.default_rng(1)
    chunks = [(np.arange(i * 10, i * 10 + 10), rng.normal(size=(10, 8)).astype(np.float32)) for i in range(5)]
    with scratch_vectors(8, lambda: iter(chunks)) as v:
        path = v.rows.filename
        np.testing.assert_array_equal(np.asarray(v.rows), np.concatenate([c[1] for c in chunks]))
        np.testing.assert_array_equal(v.ids, np.arange(50))
        s, p = knn_positions(v, np.arange(50), 4, block_rows(8, 8 * 4 * 7))
        np.testing.assert_array_equal(p, _brute(np.concatenate([c[1] for c in chunks]), np.arange(50), 4)[1])
    import os
    assert not os.path.exists(path)


def test_memory_holds_blocks_not_the_matrix():
    n, d = 6000, 256  # 5.9 MiB of vectors; blocks of 512 rows (0.5 MiB)
    x = np.random.default_rng(2).normal(size=(n, d)).astype(np.float32)
    with scratch_vectors(d, lambda: iter([(np.arange(n), x)])) as v:
        del x
        tracemalloc.start()
        try:
            knn_positions(v, np.arange(n), 10, 512)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # two blocks, their 512 x 512 similarities and the merge's temporaries; never the 6000 x 256 matrix
    # nor a 6000 x 6000 similarity matrix (137 MiB)
    assert peak < 6 * 512 * 512 * 8 + 2 * 512 * d * 4 + 4 * n * 10 * 8, peak


def test_mistakes_graph_equals_a_brute_force_search(digits_copy, monkeypatch):
    """The stored graph (from the mapped flat index) and one from scratch vectors (a normalisation
    override) are each the brute-force graph of the database's search vectors, split by split."""
    monkeypatch.setattr(graph_mod, "GRAPH_BLOCK_BYTES", 64 * 4 * 112)  # blocks of 64 rows: many block pairs
    db = saliencydb.open(digits_copy)
    db.mistakes(5, n_boot=20)
    db = db.reopen()
    k, graphs = stored_graphs(db)
    meta = db.sql("SELECT sample_id, split FROM samples ORDER BY sample_id").to_pydict()
    for g in graphs:
        ids = np.array(meta["sample_id"])
        x = db.vectors(g.space, ids)
        for split in sorted(set(meta["split"])):
            pos = np.flatnonzero(np.array(meta["split"]) == split)
            _, want = _brute(x, pos, k)
            rows = np.searchsorted(g.ids, ids[pos])
            assert np.array_equal(g.ids[rows], ids[pos])
            agree = (g.neighbors[rows] == ids[want]).mean()
            assert agree > 0.999, (g.space, split, agree)  # float32 sums in another order may swap a near-tie
    override = saliencydb.open(digits_copy, normalisation="zscore-unitnorm")
    g = knn_graph(override, "saliency", 5)
    x = override.vectors("saliency", g.ids)
    assert np.allclose((x * override.vectors("saliency", g.neighbors[:, 0])).sum(1), g.similarity[:, 0], atol=1e-5)
    db.close()
    override.close()
