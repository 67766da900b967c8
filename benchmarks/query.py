"""Query-layer benchmark: single-query latency and the full neighbour graph on a synthetic
database (default 20,000 samples x 4,800 units, the size of ResNet-18's profile).

    python benchmarks/query.py [--samples 20000] [--units 4800] [--features 512] [--json]

The database is written through the real writer (Parquet parts, statistics, FAISS indexes),
then queried through the real Database object. Prints a table, or one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import saliencydb
from saliencydb.indexer import update_indexes
from saliencydb.storage import DatabaseWriter
from saliencydb.saliency import RunningStats, UnitLayout
from saliencydb.saliency.layout import Layer
from saliencydb.schemas import UNITS_SCHEMA, Manifest, samples_schema
from saliencydb.schemas.manifest import ModelRecord, PartEntry, SplitEntry, StatsEntry

CLASSES = 10


def build(db: Path, n: int, units: int, features: int, part_rows: int = 2048, seed: int = 0, index_kind: str = "flat") -> float:
    """Write a synthetic database; returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    per_layer = units // 20
    layers = tuple(Layer(f"layer{i}", f"layer{i}.weight", i, per_layer, 576, i * per_layer) for i in range(20))
    layout = UnitLayout(layers)
    manifest = Manifest(
        model=ModelRecord(spec="synthetic", weights=None, weights_sha256="0" * 64, num_classes=CLASSES,
                          class_names=[str(i) for i in range(CLASSES)],
                          transform={"mode": "L", "resize": None, "crop": None, "size": 28, "mean": [0.0], "std": [1.0]}),
        units=layout.to_dict(), feature_dim=features)
    # 12 latent "failure modes": mistakes share a few abnormally large units, as real profiles do
    modes = rng.integers(0, layout.n_units, size=(12, 30))
    stats = RunningStats(layout.n_units)
    with DatabaseWriter(db, manifest) as w:
        m = w.manifest
        m.splits["val"] = SplitEntry(source="synthetic", rows=0, complete=True)
        for start in range(0, n, part_rows):
            k = min(part_rows, n - start)
            raw = rng.lognormal(-6, 0.5, size=(k, layout.n_units)).astype(np.float32)
            label = rng.integers(0, CLASSES, k)
            wrong = rng.random(k) < 0.1
            pred = np.where(wrong, (label + rng.integers(1, CLASSES, k)) % CLASSES, label)
            mode = rng.integers(0, len(modes), k)
            for i in np.flatnonzero(wrong):
                raw[i, modes[mode[i]]] *= 8
            feat = rng.normal(size=(k, features)).astype(np.float32)
            ids = np.arange(start, start + k, dtype=np.int64)
            table = pa.table({
                "sample_id": ids, "split": ["val"] * k, "key": [f"s{i}" for i in ids],
                "label": label.astype(np.int32), "label_name": [str(v) for v in label],
                "pred": pred.astype(np.int32), "pred_name": [str(v) for v in pred], "correct": ~wrong,
                "loss": rng.random(k).astype(np.float32), "true_conf": rng.random(k).astype(np.float32),
                "pred_conf": rng.random(k).astype(np.float32),
                "raw_profile": pa.FixedSizeListArray.from_arrays(raw.reshape(-1), layout.n_units),
                "feature": pa.FixedSizeListArray.from_arrays(feat.reshape(-1), features),
                # its own generator: the profiles stay those of databases built before the column
                "dlogit_norm": np.random.default_rng(start).uniform(0.05, 1.4, k).astype(np.float32),
                "text": pa.nulls(k, pa.string()),  # images: no sentence
            }, schema=samples_schema(layout.n_units, features))
            rel = w.write_parquet(w.unique_name("samples/val", "part", ".parquet"), table)
            m.parts.append(PartEntry(file=rel, split="val", rows=k, min_id=int(ids[0]), max_id=int(ids[-1])))
            m.splits["val"].rows += k
            m.next_sample_id += k
            stats.update(raw)
            w.commit()
        units_table = pa.table({**layout.columns(), "mean": stats.mean, "std": stats.std}, schema=UNITS_SCHEMA)
        rel = w.write_parquet(w.unique_name("units", "units", ".parquet"), units_table)
        m.stats = StatsEntry(file=rel, splits=["val"], count=stats.count, frozen=False)
        update_indexes(w, index_kind, rebuild=True)
        w.commit()
    return time.perf_counter() - t0


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--units", type=int, default=4_800)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50, help="single queries timed (median reported)")
    ap.add_argument("--index", dest="index_kind", choices=("flat", "ivf", "ivfpq"), default="flat", help="FAISS index kind of the database")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "db"
        build_s = build(db_path, args.samples, args.units, args.features, index_kind=args.index_kind)
        t = time.perf_counter()
        db = saliencydb.open(db_path)
        db.index("saliency")
        open_s = time.perf_counter() - t
        rng = np.random.default_rng(1)
        ids = rng.integers(0, args.samples, args.queries)
        db.neighbors(int(ids[0]), k=10)  # warm-up
        it = iter(ids.tolist() * 3)
        single = timed(lambda: db.neighbors(next(it), k=10), args.queries)
        filtered = timed(lambda: db.neighbors(next(it), k=10, where="NOT correct"), args.queries)
        feature = timed(lambda: db.neighbors(next(it), k=10, space="feature"), args.queries)
        t = time.perf_counter()
        report = db.mistakes(10, n_boot=200, write=True)
        graph_s = time.perf_counter() - t
        disk = sum(p.stat().st_size for p in db_path.rglob("*") if p.is_file())
    sal = report.to_dict()["splits"]["val"]["saliency"]
    result = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "database": {"samples": args.samples, "units": args.units, "features": args.features, "bytes_on_disk": disk},
        "build_seconds": round(build_s, 2),
        "open_and_load_index_seconds": round(open_s, 3),
        "neighbors_ms_median": round(1000 * statistics.median(single), 2),
        "neighbors_where_ms_median": round(1000 * statistics.median(filtered), 2),
        "neighbors_feature_ms_median": round(1000 * statistics.median(feature), 2),
        "knn_graph_both_spaces_seconds": round(graph_s, 2),
        "knn_graph_samples_per_second": round(2 * args.samples / graph_s, 1),
        "check_incorrect_correct_share": round(sal["correct_neighbors_of_incorrect"]["mean"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"synthetic database: {args.samples:,} samples x {args.units:,} units, {args.features} features, "
          f"{disk / 2**20:,.0f} MiB on disk (built in {build_s:.1f}s)")
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    rows = [
        ("open + load saliency index", f"{open_s * 1000:,.0f} ms"),
        ("neighbors --id, k=10 (median)", f"{result['neighbors_ms_median']} ms"),
        ("neighbors --where 'NOT correct' (median)", f"{result['neighbors_where_ms_median']} ms"),
        ("neighbors --space feature (median)", f"{result['neighbors_feature_ms_median']} ms"),
        ("full knn graph, k=10, both spaces", f"{graph_s:.1f} s ({result['knn_graph_samples_per_second']:,.0f} queries/s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
