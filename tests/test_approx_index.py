"""Approximate indexes chosen by size (``--index auto``), their recall@10 measured against exact search and
stated by `info`, and answers from them that say they are approximate; an exact database's outputs unchanged.

Databases are written through the real writer (benchmarks/scale.py's builder: clustered synthetic profiles,
true neighbours exist) with the threshold of ``auto`` lowered as a parameter, not mocked."""

import importlib.util
import json
import sys

import faiss
import numpy as np
import pytest

import saliencydb
from saliencydb.storage.indexes import (APPROXIMATE_KIND, AUTO_FLAT_MAX_BYTES, probe_positions, rerank_candidates,
                                        resolve_kind)
from saliencydb.query.knn import knn_graph, stored_mistakes

from helpers import ROOT, run_cli

N, UNITS, FEATURES = 3000, 480, 64
SMALL_LIMIT = 1 << 20  # 1 MiB: the saliency index (3000 x 480 x 4 = 5.8 MB) is above it, the feature one (768 KB) below
EXACT_NEIGHBOR_KEYS = {"query", "space", "k", "neighbors", "summary", "commit", "note"}


def _scale():
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("bench_scale_approx", ROOT / "benchmarks" / "scale.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


def _build(path, flat_max_bytes=None, kind="auto", n=N):
    _scale().build(path, n, UNITS, FEATURES, 10, "float32", "clustered", 500, 0, index_kind=kind,
                   flat_max_bytes=flat_max_bytes)
    return path


@pytest.fixture(scope="module")
def approx_db(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("approx") / "db", flat_max_bytes=SMALL_LIMIT)


@pytest.fixture(scope="module")
def exact_db(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("exact") / "db")


def test_auto_resolves_by_the_size_of_a_flat_index():
    assert resolve_kind("auto", 50_000, 26_560) == "flat"  # 5.3 GB: exact
    assert resolve_kind("auto", 1_000_000, 4_800) == APPROXIMATE_KIND  # 19.2 GB
    assert resolve_kind("auto", 1000, 1000, flat_max_bytes=4_000_000) == "flat"
    assert resolve_kind("auto", 1001, 1000, flat_max_bytes=4_000_000) == APPROXIMATE_KIND
    assert resolve_kind("ivf", 10, 10) == "ivf" and AUTO_FLAT_MAX_BYTES == 8 << 30


def test_auto_builds_flat_below_the_threshold_and_approximate_above(exact_db, approx_db):
    with saliencydb.open(exact_db) as db:
        e = db.manifest.indexes["saliency"]
        assert (e.kind, e.built_kind, e.recall_at_10) == ("auto", "flat", None)
        assert "recall_at_10" not in e.to_dict() and "nprobe" not in e.to_dict()  # the manifest entry as before
    with saliencydb.open(approx_db) as db:
        sal, feat = db.manifest.indexes["saliency"], db.manifest.indexes["feature"]
        assert (sal.kind, sal.built_kind, sal.ntotal) == ("auto", APPROXIMATE_KIND, N)
        assert (feat.kind, feat.built_kind) == ("auto", "flat")  # 768 KB: under the limit
        index = db.snapshot.read_index("saliency")
        assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFScalarQuantizer)
        assert faiss.extract_index_ivf(index).nprobe == sal.nprobe
        size = (approx_db / sal.file).stat().st_size
        assert size < N * UNITS * 4 / 2  # one byte a unit (and the lists' ids), not four


def _brute_recall(db, entry):
    """recall@10 recomputed with numpy: every stored vector, the exact 10 of each sampled row, and the stored
    index's answers at its nprobe (the sample: the same fixed-seed positions in committed order)."""
    ids = np.concatenate([np.asarray(t) for t, _ in db.snapshot.iter_profiles()])
    x = db.vectors("saliency", ids)
    measured, _ = probe_positions(len(ids))
    index = db.snapshot.read_index("saliency")
    out = {}
    for name, take in (("recall_at_10", entry.rerank), ("graph_recall_at_10", 10)):
        _, found = index.search(x[measured], take + 1)
        hits = []
        for p, got in zip(measured, found):
            sims = x @ x[p]
            sims[p] = -np.inf
            want = set(ids[np.argsort(-sims)[:10]].tolist())
            got = [i for i in got.tolist() if i >= 0 and i != ids[p]][:take]
            hits.append(len(want & set(got)) / 10)
        out[name] = float(np.mean(hits))
    return out, len(measured)


def test_stored_recall_is_the_brute_force_recall_and_high(approx_db):
    with saliencydb.open(approx_db) as db:
        entry = db.manifest.indexes["saliency"]
        want, queries = _brute_recall(db, entry)
    assert entry.recall_queries == queries == 200
    assert entry.recall_at_10 == pytest.approx(want["recall_at_10"], abs=1e-4)
    assert entry.graph_recall_at_10 == pytest.approx(want["graph_recall_at_10"], abs=1e-4)
    assert entry.rerank == rerank_candidates(APPROXIMATE_KIND, 10) and entry.nprobe >= 1
    assert entry.recall_at_10 >= 0.95, entry  # the default settings, on clustered profiles
    assert entry.graph_recall_at_10 >= 0.9, entry


def test_info_states_exact_or_approximate_with_the_recall(exact_db, approx_db):
    text = run_cli("info", "--db", approx_db).output
    line = next(l for l in text.splitlines() if "saliency index:" in l)
    with saliencydb.open(approx_db) as db:
        entry = db.manifest.indexes["saliency"]
    assert f"ivf-sq8, approximate, recall@10 {entry.recall_at_10:.3f} on 200 samples (nprobe {entry.nprobe}" in line
    doc = json.loads(run_cli("info", "--db", approx_db, "--format", "json").stdout)
    sal = doc["indexes"]["saliency"]
    assert sal["approximate"] is True and sal["recall_at_10"] == entry.recall_at_10 and sal["recall_queries"] == 200
    assert sal["nprobe"] == entry.nprobe and sal["kind"] == "ivf-sq8" and sal["requested"] == "auto"
    assert set(doc["indexes"]["feature"]) == {"kind", "requested", "ntotal", "stale"}  # exact: as before
    exact_text = run_cli("info", "--db", exact_db).output
    assert "approximate" not in exact_text and "indexes    saliency: flat 3000, feature: flat 3000" in exact_text
    exact_doc = json.loads(run_cli("info", "--db", exact_db, "--format", "json").stdout)
    assert exact_doc["indexes"]["saliency"] == {"kind": "flat", "requested": "auto", "ntotal": N, "stale": False}


def test_neighbors_say_approximate_and_show_exact_similarities(exact_db, approx_db):
    out = run_cli("neighbors", "--db", approx_db, "--id", 7, "-k", 10, "--format", "json").stdout
    doc = json.loads(out)
    a = doc["approximate"]
    with saliencydb.open(approx_db) as db:
        entry = db.manifest.indexes["saliency"]
        x = db.vectors("saliency", [r["sample_id"] for r in doc["neighbors"]])
        q = db.vectors("saliency", [7])[0]
    assert a == {"index": "ivf-sq8", "recall_at_10": entry.recall_at_10, "recall_queries": 200, "nprobe": entry.nprobe,
                 "rerank": entry.rerank}
    assert doc["note"].startswith("approximate: searched in the ivf-sq8 saliency index, recall@10")
    assert [r["similarity"] for r in doc["neighbors"]] == pytest.approx((x @ q).tolist(), abs=1e-5)
    table = run_cli("neighbors", "--db", approx_db, "--id", 7, "-k", 5)
    assert "note: approximate: searched in the ivf-sq8 saliency index" in table.output
    feature = json.loads(run_cli("neighbors", "--db", approx_db, "--id", 7, "--space", "feature", "--format", "json").stdout)
    assert "approximate" not in feature and feature["note"] is None  # the feature index is exact flat
    exact = json.loads(run_cli("neighbors", "--db", exact_db, "--id", 7, "-k", 10, "--format", "json").stdout)
    assert set(exact) == EXACT_NEIGHBOR_KEYS and exact["note"] is None


def test_mistakes_builds_an_approximate_graph_and_says_so(approx_db, exact_db):
    with saliencydb.open(approx_db) as db:
        g = knn_graph(db, "saliency", 10)
        assert g.approximate is not None and g.approximate.index == "ivf-sq8"
        assert np.array_equal(g.ids, np.arange(N))  # every sample, in committed order
        x = db.vectors("saliency", g.ids)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        exact = np.argsort(-sims, axis=1)[:, :10]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), g.neighbors.tolist())])
        assert not (g.neighbors == g.ids[:, None]).any() and recall >= 0.9, recall
        # the graph's similarities are the 8-bit codes' estimates of the exact ones
        assert np.abs(g.similarity - np.take_along_axis(sims, g.neighbors, 1)).max() < 0.02
    out = run_cli("mistakes", "--db", approx_db, "-k", 10, "--format", "json").stdout
    doc = json.loads(out)
    assert set(doc["approximate"]) == {"saliency"} and doc["approximate"]["saliency"]["index"] == "ivf-sq8"
    assert "the saliency neighbour graph is approximate" in doc["note"]
    with saliencydb.open(approx_db) as db:
        stored = stored_mistakes(db)  # read back from the knn table: it still says so
        assert stored.approximate["saliency"].recall_at_10 == doc["approximate"]["saliency"]["recall_at_10"]
        assert "approximate" in stored.note
    exact = json.loads(run_cli("mistakes", "--db", exact_db, "-k", 10, "--format", "json").stdout)
    assert "approximate" not in exact and "note" not in exact


def test_an_explicit_kind_is_kept_and_too_few_rows_fall_back_to_exact(tmp_path):
    small = _build(tmp_path / "small", kind="ivf-sq8", n=12)  # fewer rows than its 13 lists
    with saliencydb.open(small) as db:
        e = db.manifest.indexes["saliency"]
        assert (e.kind, e.built_kind) == ("ivf-sq8", "flat") and e.recall_at_10 is None
    assert "approximate" not in run_cli("info", "--db", small).output


def test_index_and_ingest_print_the_recall_and_an_extended_index_is_measured_again(tmp_path, cnn_weights):
    db = tmp_path / "digits"
    model = ["--model", "python:saliencydb.data.zoo:small_cnn", "--weights", cnn_weights, "--workers", 0, "-q"]
    out = run_cli("index", "--db", db, *model, "--data", "builtin:mnist5k:val", "--limit", 600, "--index", "ivf-sq8").stdout
    assert "index: saliency: ivf-sq8, approximate, recall@10 " in out and "on 200 samples (nprobe " in out
    with saliencydb.open(db) as d:
        first = d.manifest.indexes["saliency"]
        assert (first.kind, first.built_kind, first.ntotal) == ("ivf-sq8", "ivf-sq8", 600)
    out = run_cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 200,
                  "--workers", 0, "-q").stdout
    with saliencydb.open(db) as d:
        entry = d.manifest.indexes["saliency"]
        assert (entry.kind, entry.built_kind, entry.ntotal) == ("ivf-sq8", "ivf-sq8", 800)  # extended, not rebuilt
        assert f"index: saliency: {entry.describe()}" in out
        want, queries = _brute_recall(d, entry)  # measured again over all 800 rows
    assert queries == entry.recall_queries == 200
    assert entry.recall_at_10 == pytest.approx(want["recall_at_10"], abs=1e-4)
    assert entry.graph_recall_at_10 == pytest.approx(want["graph_recall_at_10"], abs=1e-4)
    run_cli("mistakes", "--db", db, "-k", 5)
    assert "no damage" in run_cli("verify", "--db", db).output  # the knn parts with their metadata included
