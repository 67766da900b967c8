"""Every user-facing step at the paper's scale, as CLI subprocesses with their peak RSS (issue 27).

    python benchmarks/scale.py --dir /big/disk [--preset imagenet-val|million|tiny] [--samples N --units U --features F]
                               [--profile-dtype float32|float16] [--data clustered|noise] [--steps a,b,c]
                               [--index auto|flat|ivf|ivfpq|ivf-sq8]
                               [--serve-clients 8] [--serve-requests 20] [--json] [--save FILE] [--compare PREV.json]

A synthetic database is written through the real writer (Parquet parts of ``--part-rows`` samples, each
committed; the units table; both FAISS indexes through ``saliencydb.indexer.update_indexes``, as
benchmarks/query.py's ``build()`` does) into ``--dir/<name>-<samples>x<units>x<features>-<dtype>-<data>``
once, and reused by later runs (its build is then reported as null). The build itself runs as a subprocess
of this script (``scale.py --build-only``), so that its peak RSS is measured like every other step's.

Steps (``--steps`` selects; each a subprocess under GNU time, /usr/bin/time, required: wall seconds, peak RSS
(the child's ru_maxrss) and exit status; a failed step is recorded with the last lines of its output):

  build              this script's builder (null when the cached database is reused)
  info               saliencydb info
  sql                saliencydb sql "SELECT split, label, avg(correct::INT) FROM samples GROUP BY ALL"
  top_units          saliencydb sql "SELECT * FROM top_units(7, 10)"
  neighbors          saliencydb neighbors --id I -k 10, for 3 ids (first, middle, last), each timed
  neighbors-feature  the same with --space feature
  verify             saliencydb verify
  mistakes           saliencydb mistakes -k 10 (stores the knn table)
  clusters           saliencydb clusters --n-clusters 50 (stores the clusters and blame tables)
  recall             a stored flat index: recall@10 of an IVF index (the library's ``ivf`` kind, built from the
                     stored vectors in blocks) against the exact stored flat index, on 200 sampled queries; a stored
                     approximate index (``--index ivf-sq8``, or ``auto`` above 8 GiB of flat index): its recall@10 as
                     stored at build, and measured again against an exact scan of the Parquet profiles, as
                     ``neighbors`` takes its answers (candidates re-ranked) and as ``mistakes``' graph does
                     (``scale.py --recall-only``)
  serve              saliencydb serve, then --serve-clients threads sending --serve-requests requests each over a
                     mix of /api/neighbors/{id}, /, /sample/{id} and /group/{cluster}: p50/p99 per kind and the
                     server's peak RSS (VmHWM from /proc at the end)
  restat             saliencydb restat (run last: it rebuilds the indexes)

Steps that write (mistakes, clusters, restat) add versions to the cached database; once they ran, the old
versions are vacuumed (``saliencydb vacuum --keep-versions 1``, not timed), so reusing the database does not
pile up copies of its indexes.

Data (seeded, deterministic): ``clustered`` (the default): 200 latent centres in profile space, each a lognormal
pattern over the units; a sample is its centre's pattern times lognormal noise, with a label and (for a mistake)
a prediction fixed by its centre, mistakes concentrated in a fifth of the centres: true neighbours exist, so an
approximate index's recall means something. ``noise``: benchmarks/query.py's generator (correct samples are pure
noise: a worst case for any index).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name, usable_cores  # noqa: E402  (benchmarks/machine.py)

HERE = Path(__file__).resolve()
TIME = "/usr/bin/time"  # GNU time: the child's peak RSS
PRESETS = {
    "imagenet-val": {"samples": 50_000, "units": 26_560, "features": 2048, "profile_dtype": "float32", "classes": 1000},
    "million": {"samples": 1_000_000, "units": 4_800, "features": 512, "profile_dtype": "float16", "classes": 1000},
    "tiny": {"samples": 2_000, "units": 480, "features": 64, "profile_dtype": "float32", "classes": 10},
}
STEPS = ("build", "info", "sql", "top_units", "neighbors", "neighbors-feature", "verify", "mistakes", "clusters",
         "recall", "serve", "restat")
WRITING = ("mistakes", "clusters", "restat")
CENTRES = 200
LAYERS = 20
SERVE_KINDS = {"neighbors": "/api/neighbors/{id}?k=10", "overview": "/", "sample": "/sample/{id}",
               "group": "/group/{cluster}"}
RESULT = "RESULT "  # the line a --recall-only run prints its answer on


# -- the database -------------------------------------------------------------------------------------------
def float16_supported() -> bool:
    """Whether the installed saliencydb stores float16 profiles: the manifest's ``profile_dtype``, the samples
    schema taking it, and ``schemas.encode_profiles`` (float16 scaled per row, with its ``profile_exp`` column)."""
    import inspect
    from dataclasses import fields

    from saliencydb import schemas

    return ("profile_dtype" in {f.name for f in fields(schemas.Manifest)} and hasattr(schemas, "encode_profiles")
            and "profile_dtype" in inspect.signature(schemas.samples_schema).parameters)


def synthetic_layout(units: int):
    from saliencydb.saliency import UnitLayout
    from saliencydb.saliency.layout import Layer

    sizes = [units // LAYERS] * (LAYERS - 1)
    sizes.append(units - sum(sizes))
    offsets = [sum(sizes[:i]) for i in range(LAYERS)]
    return UnitLayout(tuple(Layer(f"layer{i}", f"layer{i}.weight", i, s, 576, o) for i, (s, o) in enumerate(zip(sizes, offsets))))


class Clustered:
    """200 latent centres: each a lognormal pattern over the units, a feature centre, a class, a confused class
    and an error rate (high in a fifth of them)."""

    def __init__(self, rng, units: int, features: int, classes: int):
        import numpy as np

        self.units, self.features = units, features
        self.centre = rng.normal(-6.0, 0.5, (CENTRES, units)).astype(np.float32)  # log of the pattern
        self.feat = rng.normal(0.0, 1.0, (CENTRES, features)).astype(np.float32)
        self.cls = rng.integers(0, classes, CENTRES)
        self.confused = (self.cls + rng.integers(1, max(classes, 2), CENTRES)) % classes
        hard = rng.random(CENTRES) < 0.2
        self.err = np.where(hard, rng.uniform(0.3, 0.6, CENTRES), rng.uniform(0.0, 0.04, CENTRES))
        self.weight = rng.dirichlet(np.full(CENTRES, 5.0))  # centres of unequal sizes

    def part(self, rng, k: int) -> dict:
        import numpy as np

        c = rng.choice(CENTRES, k, p=self.weight)
        raw = rng.standard_normal((k, self.units), dtype=np.float32)
        raw *= 0.35
        raw += self.centre[c]
        np.exp(raw, out=raw)
        wrong = rng.random(k) < self.err[c]
        raw[wrong] *= 2.0  # a mistake's loss, and so its gradients, are larger
        label = self.cls[c]
        pred = np.where(wrong, self.confused[c], label)
        loss = np.where(wrong, rng.uniform(0.7, 4.0, k), rng.uniform(0.0, 0.7, k)).astype(np.float32)
        feat = self.feat[c] + 0.5 * rng.standard_normal((k, self.features), dtype=np.float32)
        true_conf = np.exp(-loss)
        return {"raw": raw, "feat": feat, "label": label, "pred": pred, "wrong": wrong, "loss": loss,
                "true_conf": true_conf, "pred_conf": np.where(wrong, rng.uniform(0.4, 0.95, k), true_conf)}


class Noise:
    """benchmarks/query.py's generator: lognormal noise, 10% mistakes sharing one of 12 groups of inflated units."""

    def __init__(self, rng, units: int, features: int, classes: int):
        self.units, self.features, self.classes = units, features, classes
        self.modes = rng.integers(0, units, size=(12, 30))

    def part(self, rng, k: int) -> dict:
        import numpy as np

        raw = rng.lognormal(-6, 0.5, size=(k, self.units)).astype(np.float32)
        label = rng.integers(0, self.classes, k)
        wrong = rng.random(k) < 0.1
        pred = np.where(wrong, (label + rng.integers(1, self.classes, k)) % self.classes, label)
        mode = rng.integers(0, len(self.modes), k)
        for i in np.flatnonzero(wrong):
            raw[i, self.modes[mode[i]]] *= 8
        feat = rng.normal(size=(k, self.features)).astype(np.float32)
        return {"raw": raw, "feat": feat, "label": label, "pred": pred, "wrong": wrong,
                "loss": rng.random(k).astype(np.float32), "true_conf": rng.random(k).astype(np.float32),
                "pred_conf": rng.random(k).astype(np.float32)}


def build(db: Path, samples: int, units: int, features: int, classes: int, dtype: str, data: str,
          part_rows: int, seed: int, index_kind: str = "flat", flat_max_bytes: int | None = None) -> None:
    """Write the synthetic database part by part (one part of profiles in memory at a time), commit each part,
    then the statistics (units table) and both indexes, as benchmarks/query.py's ``build()`` does. ``index_kind``
    (``--index``): the indexes' kind as asked (``auto``: flat up to ``flat_max_bytes``, else approximate)."""
    import numpy as np
    import pyarrow as pa

    from saliencydb.indexer import update_indexes
    from saliencydb.saliency import RunningStats
    from saliencydb.schemas import UNITS_SCHEMA, Manifest, samples_schema
    from saliencydb.schemas.manifest import ModelRecord, PartEntry, SplitEntry, StatsEntry
    from saliencydb.storage import DatabaseWriter

    rng = np.random.default_rng(seed)
    layout = synthetic_layout(units)
    extra = {"profile_dtype": dtype} if dtype != "float32" else {}
    manifest = Manifest(
        model=ModelRecord(spec="synthetic", weights=None, weights_sha256="0" * 64, num_classes=classes,
                          class_names=[str(i) for i in range(classes)],
                          transform={"mode": "L", "resize": None, "crop": None, "size": 28, "mean": [0.0], "std": [1.0]}),
        units=layout.to_dict(), feature_dim=features, **extra)
    schema = samples_schema(layout.n_units, features, **extra)
    gen = (Clustered if data == "clustered" else Noise)(rng, layout.n_units, features, classes)
    stats = RunningStats(layout.n_units)
    with DatabaseWriter(db, manifest) as w:
        m = w.manifest
        m.splits["val"] = SplitEntry(source="synthetic", rows=0, complete=True)
        for start in range(0, samples, part_rows):
            k = min(part_rows, samples - start)
            p = gen.part(rng, k)
            raw, stored = p.pop("raw"), {}
            if dtype == "float16":  # the writer's encoding; the statistics are those of what a reader gets back
                from saliencydb.schemas import PROFILE_EXP, decode_profiles, encode_profiles

                scaled, exp = encode_profiles(raw)
                raw, stored = decode_profiles(scaled, exp), {PROFILE_EXP: exp}
            else:
                scaled = raw
            ids = np.arange(start, start + k, dtype=np.int64)
            table = pa.table({
                "sample_id": ids, "split": ["val"] * k, "key": [f"s{i}" for i in ids],
                "label": p["label"].astype(np.int32), "label_name": [str(v) for v in p["label"]],
                "pred": p["pred"].astype(np.int32), "pred_name": [str(v) for v in p["pred"]], "correct": ~p["wrong"],
                "loss": p["loss"], "true_conf": p["true_conf"].astype(np.float32),
                "pred_conf": p["pred_conf"].astype(np.float32),
                "raw_profile": pa.FixedSizeListArray.from_arrays(pa.array(scaled.reshape(-1)), layout.n_units), **stored,
                "feature": pa.FixedSizeListArray.from_arrays(p["feat"].reshape(-1), features),
                "dlogit_norm": np.random.default_rng(start).uniform(0.05, 1.4, k).astype(np.float32),
                "text": pa.nulls(k, pa.string()),
            }, schema=schema)
            rel = w.write_parquet(w.unique_name("samples/val", "part", ".parquet"), table)
            m.parts.append(PartEntry(file=rel, split="val", rows=k, min_id=int(ids[0]), max_id=int(ids[-1])))
            m.splits["val"].rows += k
            m.next_sample_id += k
            stats.update(raw)
            w.commit()
            del table, raw, scaled, p
        units_table = pa.table({**layout.columns(), "mean": stats.mean, "std": stats.std}, schema=UNITS_SCHEMA)
        rel = w.write_parquet(w.unique_name("units", "units", ".parquet"), units_table)
        m.stats = StatsEntry(file=rel, splits=["val"], count=stats.count, frozen=False)
        update_indexes(w, index_kind, rebuild=True, flat_max_bytes=flat_max_bytes)
        w.commit()


def db_name(args) -> str:
    shape = {"samples": args.samples, "units": args.units, "features": args.features}
    name = args.preset if args.preset and all(PRESETS[args.preset][k] == v for k, v in shape.items()) else "custom"
    kind = "" if args.index == "auto" else f"-{args.index}"
    return f"{name}-{args.samples}x{args.units}x{args.features}-{args.profile_dtype}-{args.data}{kind}"


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- recall of an IVF index (run as a subprocess: --recall-only) -------------------------------------------
def recall(db_path: Path, queries: int, k: int, seed: int) -> dict:
    """recall@k of the library's ``ivf`` index against the stored exact flat index, on ``queries`` sampled
    stored profiles (each query's own row left out of both answers)."""
    import faiss
    import numpy as np

    import saliencydb
    from saliencydb.storage import indexes

    with saliencydb.open(db_path) as db:
        entry = db.manifest.indexes["saliency"]
        if getattr(entry, "approximate", False):
            return stored_recall(db, entry, queries, k, seed)
        flat, mapped = db.query_index("saliency")
        if indexes.flat_part(flat) is None:
            raise SystemExit(f"recall: the stored saliency index of {db_path} is not flat (exact); nothing to compare with")
        n, d = flat.ntotal, flat.d
        ids = faiss.vector_to_array(flat.id_map)
        xb = faiss.rev_swig_ptr(indexes.flat_part(flat).get_xb(), n * d).reshape(n, d)
        block = max(1, indexes.SCAN_BLOCK_BYTES // (4 * d))
        # a mapped block's pages handed back after use (madvise), so the vectors are never all resident at once
        release = (getattr(indexes, "release", None) or getattr(indexes, "_release", None)) if mapped else None

        def chunks():
            for start in range(0, n, block):
                rows = xb[start:start + block]
                yield ids[start:start + block], np.array(rows, dtype=np.float32)  # a copy: the mapping's pages go back
                if callable(release):
                    release(rows)

        pos = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
        q = np.array(xb[pos], dtype=np.float32)
        t = time.perf_counter()
        exact = exact_knn(q, chunks(), k + 1)  # brute force over the stored flat index's vectors, block by block
        exact_s = time.perf_counter() - t
        t = time.perf_counter()
        ivf = indexes.build_index(d, chunks, "ivf", n_expected=n)
        build_s = time.perf_counter() - t
        kind = indexes.kind_of(ivf)
        t = time.perf_counter()
        _, approx = ivf.search(q, k + 1)
        search_s = time.perf_counter() - t
    hits = []
    for r, p in enumerate(pos):
        own = ids[p]
        want = [i for i in exact[r].tolist() if i != own and i >= 0][:k]
        got = [i for i in approx[r].tolist() if i != own and i >= 0][:k]
        hits.append(len(set(want) & set(got)) / max(1, len(want)))
    ivf_part = faiss.extract_index_ivf(ivf) if kind != "flat" else None
    return {"k": k, "queries": len(pos), "recall": round(float(np.mean(hits)), 4), "index_kind": kind,
            "nlist": None if ivf_part is None else int(ivf_part.nlist),
            "nprobe": None if ivf_part is None else int(ivf_part.nprobe),
            "ivf_build_s": round(build_s, 3), "ivf_search_s": round(search_s, 4), "exact_search_s": round(exact_s, 4)}


def stored_recall(db, entry, queries: int, k: int, seed: int) -> dict:
    """The stored approximate index's recall@k as the library measured it when it was built (the manifest's entry),
    and measured again here on this script's own sample of ``queries`` stored rows: the exact answers by a scan of
    the Parquet profiles (two streamed passes: the sample, then every row against it), the index's answers as
    ``neighbors`` takes them (its ``rerank`` best candidates; the exact k among them) and as the graph does (its top k)."""
    import numpy as np

    n = db.manifest.rows()

    def chunks():
        for ids, raw, dlogit in db.snapshot.iter_raw_profiles(batch_rows=1024):
            yield ids, db.search_vectors("saliency", raw, dlogit)

    pos = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
    q, q_ids, seen = [], [], 0
    for ids, rows in chunks():
        local = pos[(pos >= seen) & (pos < seen + len(ids))] - seen
        q.append(rows[local])
        q_ids.append(ids[local])
        seen += len(ids)
    q, q_ids = np.concatenate(q).astype(np.float32), np.concatenate(q_ids)
    t = time.perf_counter()
    exact = exact_knn(q, chunks(), k + 1)
    exact_s = time.perf_counter() - t
    index = db.snapshot.read_index("saliency", mapped=True)
    measured = {}
    for name, take in (("recall", entry.rerank or k), ("graph_recall", k)):
        t = time.perf_counter()
        _, approx = index.search(q, take + 1)
        measured[name + "_search_s"] = round(time.perf_counter() - t, 4)
        hits = []
        for r, own in enumerate(q_ids.tolist()):
            want = [i for i in exact[r].tolist() if i != own and i >= 0][:k]
            got = [i for i in approx[r].tolist() if i != own and i >= 0][:take]
            hits.append(len(set(want) & set(got)) / max(1, len(want)))
        measured[name] = round(float(np.mean(hits)), 4)
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return {"k": k, "queries": len(pos), "recall": measured["recall"], "graph_recall": measured["graph_recall"],
            "index_kind": entry.built_kind, "nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe), "rerank": entry.rerank,
            "stored": {"recall_at_10": entry.recall_at_10, "graph_recall_at_10": entry.graph_recall_at_10,
                       "recall_queries": entry.recall_queries, "nprobe": entry.nprobe},
            "index_bytes": (db.path / entry.file).stat().st_size, "ivf_build_s": None,
            "ivf_search_s": measured["recall_search_s"], "exact_search_s": round(exact_s, 4)}


def exact_knn(q, chunks, k: int):
    """The ids of the ``k`` largest inner products of each query among all chunks' rows (exact)."""
    import numpy as np

    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for ids, rows in chunks:
        s = np.concatenate([best_s, q @ rows.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(q), len(ids)))], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


# -- running a step -----------------------------------------------------------------------------------------
def saliencydb_exe() -> str:
    exe = Path(sys.executable).with_name("saliencydb")
    return str(exe) if exe.exists() else shutil.which("saliencydb") or "saliencydb"


def run_timed(argv: list[str], label: str, timeout: float | None = None, tail_lines: int = 15) -> dict:
    """One subprocess under GNU time: wall seconds, peak RSS (MiB, the child's ru_maxrss) and exit status; the
    last lines of its output when it failed. Never raises: a step that cannot run is a failed step."""
    with tempfile.TemporaryDirectory() as tmp:
        peak, log = Path(tmp) / "peak", Path(tmp) / "log"
        t = time.perf_counter()
        try:
            with open(log, "w") as out:  # a file, not a pipe: the child never blocks on a full pipe
                proc = subprocess.Popen([TIME, "-o", str(peak), "-f", "%M"] + argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # GNU time and the command it runs: this step's own group
                    proc.wait()
                    rc = 124
        except OSError as e:
            return {"label": label, "wall_s": None, "peak_rss_mib": None, "rc": 127, "tail": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - t
        output = log.read_text(errors="replace")
        try:
            kib = int(peak.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            kib = None
    row = {"label": label, "wall_s": round(wall, 3), "peak_rss_mib": None if kib is None else round(kib / 1024, 1), "rc": rc}
    if rc != 0:
        row["tail"] = "\n".join(output.rstrip().splitlines()[-tail_lines:]) + ("\n(timed out)" if rc == 124 else "")
    row["_output"] = output
    return row


def step_of(runs: list[dict], **extra) -> dict:
    """A step's record: its runs, the median wall time, the largest peak, the worst exit status."""
    walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
    peaks = [r["peak_rss_mib"] for r in runs if r["peak_rss_mib"] is not None]
    for r in runs:
        r.pop("_output", None)
    rc = next((r["rc"] for r in runs if r["rc"] != 0), 0)
    return {"runs": runs, "wall_s": round(statistics.median(walls), 3) if walls else None,
            "peak_rss_mib": max(peaks) if peaks else None, "rc": rc, **extra}


def cli_commands(db: Path, n: int) -> dict[str, list[tuple[str, list[str]]]]:
    exe, d = saliencydb_exe(), str(db)
    ids = sorted({min(7, n - 1), n // 2, n - 1})
    return {
        "info": [("info", [exe, "info", "--db", d])],
        "sql": [("sql group-by", [exe, "sql", "--db", d, "SELECT split, label, avg(correct::INT) FROM samples GROUP BY ALL"])],
        "top_units": [("sql top_units(7, 10)", [exe, "sql", "--db", d, "SELECT * FROM top_units(7, 10)"])],
        "neighbors": [(f"neighbors --id {i}", [exe, "neighbors", "--db", d, "--id", str(i), "-k", "10"]) for i in ids],
        "neighbors-feature": [(f"neighbors --id {i} --space feature",
                               [exe, "neighbors", "--db", d, "--id", str(i), "-k", "10", "--space", "feature"]) for i in ids],
        "verify": [("verify", [exe, "verify", "--db", d])],
        "mistakes": [("mistakes -k 10", [exe, "mistakes", "--db", d, "-k", "10", "-q"])],
        "clusters": [("clusters --n-clusters 50", [exe, "clusters", "--db", d, "--n-clusters", "50"])],
        "restat": [("restat", [exe, "restat", "--db", d, "-q"])],
    }


def recall_step(db: Path, args) -> dict:
    run = run_timed([sys.executable, str(HERE), "--recall-only", "--db", str(db), "--recall-queries", str(args.recall_queries),
                     "--seed", str(args.seed)], "recall@10 ivf vs exact", args.step_timeout)
    lines = [x for x in run["_output"].splitlines() if x.startswith(RESULT)]
    result = json.loads(lines[-1][len(RESULT):]) if run["rc"] == 0 and lines else None
    if run["rc"] == 0 and result is None:
        run["rc"], run["tail"] = 1, "no result line: " + run["_output"][-1000:]
    return step_of([run], result=result)


# -- serve --------------------------------------------------------------------------------------------------
def serve_step(db: Path, n: int, args) -> dict:
    """``saliencydb serve`` (benchmarks/serve.py's Server), a warm-up request of each kind, then ``clients`` threads
    each sending ``requests`` requests over the mix of kinds; per kind p50/p99, and the server's peak RSS."""
    from serve import HOST, BenchmarkError, Server, free_port, get, percentile  # benchmarks/serve.py

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(db, free_port(), Path(tmp))
        try:
            server.start(args.step_timeout or 600)
            return _serve_load(server, n, args, t0, HOST, get, percentile)
        except (BenchmarkError, OSError, http.client.HTTPException) as e:
            run = {"label": "serve", "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": _vmhwm(server), "rc": 1,
                   "tail": f"{e}\n{server.log_tail(1500)}"}
            return step_of([run], result=None)
        finally:
            server.stop()


def _vmhwm(server) -> float | None:
    try:
        for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, AttributeError, ValueError):
        pass
    return None


def _serve_load(server, n: int, args, t0: float, host: str, get, percentile) -> dict:
    start_s = time.perf_counter() - t0
    kinds = dict(SERVE_KINDS)
    conn = http.client.HTTPConnection(host, server.port, timeout=args.request_timeout)
    q = urllib.parse.quote("SELECT DISTINCT cluster FROM clusters ORDER BY cluster")
    status, body, _ = get(conn, f"/api/sql?q={q}")
    clusters = [int(r["cluster"]) for r in json.loads(body)["rows"]] if status == 200 else []
    if not clusters:
        kinds.pop("group")  # no clusters table (the clusters step did not run): no group page to ask for
    warmup = {}
    for kind, template in kinds.items():
        status, body, dt = get(conn, template.format(id=0, cluster=clusters[0] if clusters else 0))
        warmup[kind] = round(1000 * dt, 2)
        if status != 200:
            raise OSError(f"warm-up {template} answered HTTP {status}: {body[:300]!r}")
    conn.close()
    names = list(kinds)
    lat: dict[str, list[float]] = {k: [] for k in names}
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(f"{args.seed}:{c}")
        conn = http.client.HTTPConnection(host, server.port, timeout=args.request_timeout)
        try:
            for j in range(args.serve_requests):
                kind = names[(c + j) % len(names)]
                path = kinds[kind].format(id=rng.randrange(n), cluster=rng.choice(clusters) if clusters else 0)
                try:
                    status, body, dt = get(conn, path)
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(f"GET {path}: {type(e).__name__}: {e}")
                    conn.close()
                    continue
                with lock:
                    lat[kind].append(dt)
                    if status != 200:
                        errors.append(f"GET {path}: HTTP {status}: {body[:200].decode(errors='replace')}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.serve_clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    load_s = time.perf_counter() - t
    peak = _vmhwm(server)
    per_kind = {}
    for kind in names:
        v = sorted(lat[kind])
        per_kind[kind] = {"path": kinds[kind], "count": len(v),
                          "p50_ms": round(1000 * percentile(v, 50), 2) if v else None,
                          "p99_ms": round(1000 * percentile(v, 99), 2) if v else None}
    result = {"clients": args.serve_clients, "requests_per_client": args.serve_requests, "start_s": round(start_s, 3),
              "load_s": round(load_s, 3), "warmup_ms": warmup, "kinds": per_kind, "errors": len(errors),
              "error_examples": errors[:5], "server_peak_rss_mib": peak}
    run = {"label": f"serve, {args.serve_clients} clients", "wall_s": round(time.perf_counter() - t0, 3),
           "peak_rss_mib": peak, "rc": 1 if errors or not server.alive() else 0}
    if run["rc"]:
        run["tail"] = "\n".join(errors[:5]) + "\n" + server.log_tail(1000)
    return step_of([run], result=result)


# -- the run ------------------------------------------------------------------------------------------------
def skipped(why: str) -> dict:
    return {"runs": [], "wall_s": None, "peak_rss_mib": None, "rc": None, "skipped": why}


def build_step(db: Path, args) -> dict:
    if (db / "manifest.json").exists():
        return {"runs": [], "wall_s": None, "peak_rss_mib": None, "rc": 0, "cached": True}
    tmp = db.with_name(db.name + ".building")  # renamed into place once complete: an interrupted build is never reused
    if tmp.exists():
        shutil.rmtree(tmp)
    db.parent.mkdir(parents=True, exist_ok=True)
    run = run_timed([sys.executable, str(HERE), "--build-only", "--out", str(tmp), "--samples", str(args.samples),
                     "--units", str(args.units), "--features", str(args.features), "--classes", str(args.classes),
                     "--profile-dtype", args.profile_dtype, "--data", args.data, "--part-rows", str(args.part_rows),
                     "--seed", str(args.seed), "--index", args.index], "build", args.step_timeout)
    if run["rc"] == 0:
        tmp.rename(db)
    return step_of([run], cached=False)


def benchmark(args) -> dict:
    db = (args.dir / db_name(args)).resolve()
    steps: dict[str, dict] = {}
    steps["build"] = build_step(db, args) if "build" in args.steps or not (db / "manifest.json").exists() else \
        {"runs": [], "wall_s": None, "peak_rss_mib": None, "rc": 0, "cached": True}
    if steps["build"]["rc"] != 0:
        for name in args.steps:
            steps.setdefault(name, skipped("the database could not be built"))
        return document(args, db, steps, None)
    size = disk_bytes(db)
    commands = cli_commands(db, args.samples)
    for name in STEPS[1:]:
        if name not in args.steps:
            continue
        if name == "recall":
            steps[name] = recall_step(db, args)
        elif name == "serve":
            steps[name] = serve_step(db, args.samples, args)
        else:
            steps[name] = step_of([run_timed(argv, label, args.step_timeout) for label, argv in commands[name]])
    housekeeping = None
    if any(s in args.steps for s in WRITING):
        run = run_timed([saliencydb_exe(), "vacuum", "--db", str(db), "--keep-versions", "1"], "vacuum", args.step_timeout)
        run.pop("_output", None)
        housekeeping = run
    doc = document(args, db, steps, size)
    doc["housekeeping"] = housekeeping
    return doc


def document(args, db: Path, steps: dict, size: int | None) -> dict:
    return {
        "machine": {"cpu": cpu_name(), "cores": usable_cores(), "python": sys.version.split()[0]},
        "database": {"path": str(db), "samples": args.samples, "units": args.units, "features": args.features,
                     "classes": args.classes, "profile_dtype": args.profile_dtype, "data": args.data, "index": args.index,
                     "part_rows": args.part_rows, "bytes_on_disk": size, "build_seconds": steps["build"]["wall_s"],
                     "reused": bool(steps["build"].get("cached"))},
        "settings": {"preset": args.preset, "steps": args.steps, "seed": args.seed, "serve_clients": args.serve_clients,
                     "serve_requests": args.serve_requests, "recall_queries": args.recall_queries},
        "steps": steps,
    }


def growth(prev: dict, cur: dict) -> dict:
    """Per step, the exponents e of t ~ n^e and rss ~ n^e between two runs: e = log(x2/x1) / log(n2/n1), n the
    samples (the samples x units when the two runs have the same number of samples)."""
    d1, d2 = prev["database"], cur["database"]
    n1, n2, by = d1["samples"], d2["samples"], "samples"
    if n1 == n2:
        n1, n2, by = n1 * d1["units"], n2 * d2["units"], "samples x units"
    out = {"n": by, "n1": n1, "n2": n2, "steps": {}}
    if n1 == n2:
        return out

    def exp(a, b):
        return round(math.log(b / a) / math.log(n2 / n1), 2) if a and b else None

    for name, s2 in cur["steps"].items():
        s1 = prev["steps"].get(name)
        if s1:
            out["steps"][name] = {"time": exp(s1.get("wall_s"), s2.get("wall_s")),
                                  "rss": exp(s1.get("peak_rss_mib"), s2.get("peak_rss_mib"))}
    return out


def print_report(r: dict) -> None:
    d, m = r["database"], r["machine"]
    size = "?" if d["bytes_on_disk"] is None else f"{d['bytes_on_disk'] / 2**30:.2f} GiB"
    print(f"database: {d['samples']:,} samples x {d['units']:,} units, {d['features']} features, {d['profile_dtype']}, "
          f"{d['data']} data, {size} on disk" + (" (reused)" if d["reused"] else ""))
    print(f"machine: {m['cpu']}, {m['cores']} cores")

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    print("| step | run | wall s | peak RSS MiB | rc |")
    print("|---|---|---:|---:|---:|")
    for name, s in r["steps"].items():
        if not s["runs"]:
            print(f"| {name} | {'cached' if s.get('cached') else s.get('skipped', '')} | - | - | {cell(s['rc'], 'd')} |")
        for run in s["runs"]:
            print(f"| {name} | {run['label']} | {cell(run['wall_s'], '.2f')} | {cell(run['peak_rss_mib'], ',.0f')} | {run['rc']} |")
    for name, s in r["steps"].items():
        for run in s["runs"]:
            if run["rc"] != 0 and run.get("tail"):
                print(f"\n{name} ({run['label']}) failed (exit {run['rc']}):\n    " + run["tail"].replace("\n", "\n    "))
    rec = r["steps"].get("recall", {}).get("result")
    if rec and rec.get("stored"):
        st = rec["stored"]
        print(f"\nrecall@{rec['k']} of the stored {rec['index_kind']} index (nlist {rec['nlist']}, nprobe {rec['nprobe']}, "
              f"{rec['index_bytes'] / 2**30:.2f} GiB) against exact, {rec['queries']} queries: neighbors "
              f"({rec['rerank']} candidates re-ranked) {rec['recall']:.3f}, graph (its own top {rec['k']}) "
              f"{rec['graph_recall']:.3f}; as stored at build on {st['recall_queries']} samples: {st['recall_at_10']:.3f} / "
              f"{st['graph_recall_at_10']:.3f}; searched in {rec['ivf_search_s'] * 1000:.0f} ms "
              f"(exact scan of the profiles: {rec['exact_search_s']:.1f} s)")
    elif rec:
        print(f"\nrecall@{rec['k']} of {rec['index_kind']} (nlist {rec['nlist']}, nprobe {rec['nprobe']}) against exact, "
              f"{rec['queries']} queries: {rec['recall']:.3f}; ivf built in {rec['ivf_build_s']:.1f} s, "
              f"searched in {rec['ivf_search_s'] * 1000:.0f} ms (exact: {rec['exact_search_s'] * 1000:.0f} ms)")
    srv = r["steps"].get("serve", {}).get("result")
    if srv:
        print(f"\nserve: {srv['clients']} clients x {srv['requests_per_client']} requests, up in {srv['start_s']:.1f} s, "
              f"server peak RSS {cell(srv['server_peak_rss_mib'], ',.0f')} MiB, {srv['errors']} errors")
        for kind, k in srv["kinds"].items():
            print(f"  {kind:<10} {k['path']:<26} n={k['count']:<4} p50 {cell(k['p50_ms'], ',.1f')} ms, "
                  f"p99 {cell(k['p99_ms'], ',.1f')} ms (warm-up {srv['warmup_ms'][kind]:,.0f} ms)")
    g = r.get("compare")
    if g:
        print(f"\ngrowth exponents against {g['file']} (n = {g['n']}: {g['n1']:,} -> {g['n2']:,}):")
        for name, e in g["steps"].items():
            print(f"  {name:<18} time {cell(e['time'], '.2f')}, peak RSS {cell(e['rss'], '.2f')}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where the database is built once and reused")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="imagenet-val")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--units", type=int)
    ap.add_argument("--features", type=int)
    ap.add_argument("--classes", type=int)
    ap.add_argument("--profile-dtype", choices=("float32", "float16"))
    ap.add_argument("--data", choices=("clustered", "noise"), default="clustered")
    ap.add_argument("--index", choices=("auto", "flat", "ivf", "ivfpq", "ivf-sq8"), default="auto",
                    help="the indexes' kind as asked (`index --index`): auto, the library's default, is exact flat up to "
                         "8 GiB of flat index (the million preset: ivf-sq8); another kind names the database apart")
    ap.add_argument("--part-rows", type=int, default=1024, help="samples per committed part (the indexer's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--serve-clients", type=int, default=8)
    ap.add_argument("--serve-requests", type=int, default=20, help="requests per client (over the mix of kinds)")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--step-timeout", type=float, default=None, help="seconds a step may run (default: no limit)")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    ap.add_argument("--save", type=Path, help="also write the JSON document to this file")
    ap.add_argument("--compare", type=Path, help="an earlier run's JSON: print each step's growth exponent")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--recall-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := [s for s in args.steps if s not in STEPS]:
        ap.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if not (args.build_only or args.recall_only) and args.dir is None:
        ap.error("--dir is required")
    if min(args.samples, args.units, args.features, args.part_rows) < 1 or args.units < LAYERS or args.classes < 2:
        ap.error(f"--samples, --features and --part-rows must be positive, --units at least {LAYERS}, --classes at least 2")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.recall_only:
        print(RESULT + json.dumps(recall(args.db, args.recall_queries, 10, args.seed)), flush=True)
        return
    if args.profile_dtype == "float16" and not float16_supported():
        sys.exit("scale benchmark: this saliencydb cannot store float16 profiles yet (no Manifest.profile_dtype / "
                 "schemas.encode_profiles); use --profile-dtype float32")
    if args.build_only:
        build(args.out, args.samples, args.units, args.features, args.classes, args.profile_dtype, args.data,
              args.part_rows, args.seed, index_kind=args.index)
        return
    if not Path(TIME).exists():
        sys.exit(f"scale benchmark: GNU time ({TIME}) is required to measure peak RSS")
    result = benchmark(args)
    if args.compare:
        result["compare"] = {"file": str(args.compare), **growth(json.loads(args.compare.read_text()), result)}
    doc = json.dumps(result, indent=1)
    if args.save:
        args.save.write_text(doc)
    if args.json:
        print(doc)
    else:
        print_report(result)


if __name__ == "__main__":
    main()
