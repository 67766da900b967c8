"""Agreement of the approximate ``rms`` profile with the exact ``mean_abs`` one, beside its speed.

    python benchmarks/approximate.py [--json]

On a trained model and real data (the demo's small CNN with the weights shipped in the package,
or with ``--train`` trained here and cached, and the 2,000 held-out built-in MNIST digits) it indexes the digits twice, with ``--aggregate
mean_abs`` (the paper's) and ``--aggregate rms``, and prints for each sample, averaged:

  spearman       rank correlation of the two standardised profiles
  top10_overlap  share of the 10 most salient units that the two profiles have in common
  knn_overlap    share of the 10 nearest saliency neighbours that the two databases share

and the shared-mistake statistic (appendix A.2) of each database, with the time each
index took. The speed of the two aggregates on ResNet-18 at several sizes is measured by
``benchmarks/profiles.py`` (method ``engine_rms``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout

import saliencydb  # noqa: E402
from saliencydb.demo import MODEL_SPEC, VAL_DATA, default_cache_dir, shipped_weights, train_demo_model  # noqa: E402
from saliencydb.indexer import Indexer  # noqa: E402

K = 10


def ranks(a: np.ndarray) -> np.ndarray:
    """Row-wise ranks (0..n-1; ties broken by position, fine for continuous values)."""
    out = np.empty_like(a, dtype=np.float64)
    order = np.argsort(a, axis=1)
    np.put_along_axis(out, order, np.arange(a.shape[1], dtype=np.float64)[None, :].repeat(a.shape[0], 0), axis=1)
    return out


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    ta = np.argpartition(-a, k, axis=1)[:, :k]
    tb = np.argpartition(-b, k, axis=1)[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])


def build(db: Path, weights: Path, aggregate: str) -> dict:
    t = time.perf_counter()
    Indexer(db, model=MODEL_SPEC, weights=str(weights), batch_size=128, workers=0, aggregate=aggregate).run(VAL_DATA, split="val")
    seconds = time.perf_counter() - t
    with saliencydb.open(db) as d:
        report = d.mistakes(k=K, n_boot=1000, seed=0).to_dict()["splits"]["val"]["saliency"]  # writes the knn table
    with saliencydb.open(db) as d:
        ids = d.ids_where(split="val")
        z = d.z(ids)
        knn = d.sql("SELECT sample_id, neighbor_id FROM knn WHERE space = 'saliency'").to_pylist()
    neighbours: dict[int, set] = {}
    for row in knn:
        neighbours.setdefault(row["sample_id"], set()).add(row["neighbor_id"])
    return {"seconds": seconds, "samples_per_s": len(ids) / seconds, "ids": ids, "z": z, "neighbours": neighbours,
            "correct_neighbors_of_correct": report["correct_neighbors_of_correct"]["mean"],
            "correct_neighbors_of_incorrect": report["correct_neighbors_of_incorrect"]["mean"],
            "same_confusion_of_incorrect": report["same_confusion_of_incorrect"]["mean"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--train", action="store_true", help="train the demo model here (as `saliencydb demo --train`) "
                    "instead of using the weights shipped with saliencydb")
    ap.add_argument("--cache-dir", type=Path, help="with --train: where the model is cached (default ~/.cache/saliencydb)")
    args = ap.parse_args()
    weights = train_demo_model(args.cache_dir or default_cache_dir()) if args.train else shipped_weights()
    with tempfile.TemporaryDirectory() as tmp:
        exact = build(Path(tmp) / "mean_abs", weights, "mean_abs")
        approx = build(Path(tmp) / "rms", weights, "rms")
    assert np.array_equal(exact["ids"], approx["ids"])
    knn_overlap = np.mean([len(exact["neighbours"][i] & approx["neighbours"][i]) / K for i in exact["neighbours"]])
    result = {
        "data": f"{VAL_DATA}, demo small CNN ({len(exact['ids'])} samples, {exact['z'].shape[1]} units)",
        "spearman": float(np.mean(spearman_rows(exact["z"], approx["z"]))),
        "top10_overlap": float(np.mean(top_overlap(exact["z"], approx["z"], K))),
        "knn_overlap": float(knn_overlap),
        "aggregates": {
            name: {k: round(v, 4) for k, v in r.items() if k not in ("ids", "z", "neighbours")}
            for name, r in (("mean_abs", exact), ("rms", approx))
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"approximate (rms) vs exact (mean_abs) profiles: {result['data']}")
    print(f"  per sample, averaged: Spearman {result['spearman']:.3f}, top-10 unit overlap {result['top10_overlap']:.1%}, "
          f"10-NN overlap {result['knn_overlap']:.1%}")
    print(f"  {'aggregate':<9}  {'index s':>7}  {'samples/s':>9}  {'correct nbrs of correct':>23}  "
          f"{'correct nbrs of incorrect':>25}  {'same confusion':>14}")
    for name, r in result["aggregates"].items():
        print(f"  {name:<9}  {r['seconds']:>7.2f}  {r['samples_per_s']:>9.0f}  {r['correct_neighbors_of_correct']:>23.1%}  "
              f"{r['correct_neighbors_of_incorrect']:>25.1%}  {r['same_confusion_of_incorrect']:>14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
