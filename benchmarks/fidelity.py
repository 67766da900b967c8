"""What the shared-mistake statistics mean: each profile normalisation against the baselines that
use no saliency, on two real datasets and three training seeds of the demo CNN.

    python benchmarks/fidelity.py [--seeds 0,1,2] [--datasets mnist5k,sklearn-digits] [--json]

For every dataset (the demo's 2,000 held-out MNIST digits; scikit-learn's 719 held-out 8x8
digits) and every training seed, the demo CNN is trained with the demo recipe and the held-out
split is indexed (both cached under ``--cache-dir``). Then, for each profile normalisation
(``zscore``, the paper's; ``zscore-unitnorm``; ``zscore-dlogit``), over the split's mistakes and
their k = 10 nearest saliency neighbours:

  same_confusion   share of a mistake's neighbours that make its exact (label, prediction) confusion
  mistakes         share of a mistake's neighbours that are mistakes
  gap_vs_loss      same_confusion minus that of the loss-matched baseline (the k samples of closest loss)
  vs_zscore        same_confusion minus the paper's zscore, paired per mistake
  purity           k-means error groups (8) of the mistakes: share of the mistakes whose group's
                   most common confusion is theirs; purity_random: the same for random groups of
                   the same sizes (mean of 200 draws)

each with a 95% percentile-bootstrap interval over the mistakes (1,000 resamples), and the same
for the feature space and the three baselines of ``saliencydb mistakes`` (loss-matched,
label-matched, random). The neighbours are computed here with an exact numpy search and checked
against ``Database.mistakes``, so the table is what the tool reports. A normalisation "beats"
the paper's when its paired vs_zscore interval lies above zero for every dataset and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout

import saliencydb  # noqa: E402
from saliencydb.demo import default_cache_dir  # noqa: E402
from saliencydb.saliency.normalise import NORMALISATIONS  # noqa: E402
from saliencydb.seeds import builtin_database  # noqa: E402

K = 10
N_CLUSTERS = 8
BOOT = 1000
DATASETS = {"mnist5k": "builtin:mnist5k:val", "sklearn-digits": "builtin:sklearn-digits:val"}


def interval(values: np.ndarray, rng: np.random.Generator, n_boot: int = BOOT) -> dict:
    """Mean and percentile-bootstrap 95% interval."""
    values = np.asarray(values, dtype=np.float64)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "low": float(lo), "high": float(hi), "n": int(len(values))}


def neighbour_shares(vectors: np.ndarray, label: np.ndarray, pred: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the share of its K nearest others (cosine; ties: lower row) that are mistakes, and
    that make its confusion. ``vectors`` are L2-normalised."""
    sims = vectors[queries] @ vectors.T
    sims[np.arange(len(queries)), queries] = -np.inf
    nb = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    wrong = (label[nb] != pred[nb]).mean(axis=1)
    same = ((label[nb] == label[queries, None]) & (pred[nb] == pred[queries, None])).mean(axis=1)
    return wrong, same


def random_purity(sizes: list[int], pair: np.ndarray, rng: np.random.Generator, draws: int = 200) -> float:
    """Mean purity of random groups of the given sizes (the same mistakes, shuffled between groups)."""
    cuts = np.cumsum(sizes)[:-1]
    total = 0.0
    for _ in range(draws):
        hit = 0
        for group in np.split(rng.permutation(pair), cuts):
            hit += np.unique(group, return_counts=True)[1].max()
        total += hit / len(pair)
    return total / draws


def measure(db_path: Path, rng: np.random.Generator) -> dict:
    """Every statistic of one database (one dataset, one training seed)."""
    out = {"normalisations": {}}
    paired_base = None
    for name in NORMALISATIONS:
        with saliencydb.open(db_path, normalisation=name) as d:
            meta = d.sql("SELECT sample_id, label, pred, correct FROM samples WHERE split = 'val' ORDER BY sample_id")
            ids, label, pred = (meta.column(c).to_numpy() for c in ("sample_id", "label", "pred"))
            mistakes_rows = np.flatnonzero(label != pred)
            vectors = d.vectors("saliency", ids)
            wrong, same = neighbour_shares(vectors, label, pred, mistakes_rows)
            report = d.mistakes(K, n_boot=200, write=False).splits["val"]
            tool = report.spaces["saliency"].same_confusion_of_incorrect.mean
            assert abs(tool - same.mean()) < 1e-9, f"{name}: numpy {same.mean()} vs the tool's {tool}"
            groups = d.clusters(N_CLUSTERS, split="val", write=False)
        pair = label[mistakes_rows] * 1000 + pred[mistakes_rows]
        loss_same = report.baselines["loss"].same_confusion_of_incorrect.mean
        row = {"same_confusion": interval(same, rng), "mistakes": interval(wrong, rng),
               "gap_vs_loss": interval(same - loss_same, rng),
               # each group's most common confusion: the first of its top confusions
               "purity": sum(g.top_confusions[0].count for g in groups.clusters) / groups.samples,
               "purity_random": random_purity([g.size for g in groups.clusters], pair, rng)}
        if paired_base is None:
            paired_base = same
            out["samples"], out["mistakes"] = int(len(ids)), int(len(mistakes_rows))
            out["baselines"] = {b: {"same_confusion": e.same_confusion_of_incorrect.mean,
                                    "mistakes": 1 - e.correct_neighbors_of_incorrect.mean}
                                for b, e in report.baselines.items()}
            f = report.spaces["feature"]
            out["feature"] = {"same_confusion": f.same_confusion_of_incorrect.mean,
                              "mistakes": 1 - f.correct_neighbors_of_incorrect.mean}
        else:
            row["vs_zscore"] = interval(same - paired_base, rng)
        out["normalisations"][name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--models", default="cnn", help="the demo's models: cnn, vit (its small ViT, linear units), or both")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the tables")
    ap.add_argument("--save", type=Path, help="also write the JSON document to this file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = args.cache_dir or default_cache_dir()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    results = {}
    for model in args.models.split(","):
        for ds in args.datasets.split(","):
            if model == "vit" and ds != "mnist5k":  # the small ViT's 7x7 patches and position table are for 28x28
                print(f"skipped {ds} for the vit: it takes 28x28 digits", file=sys.stderr)
                continue
            for seed in seeds:
                db = builtin_database(DATASETS[ds], seed, cache, model=model)
                results[f"{ds}/seed{seed}" if model == "cnn" else f"{ds}/{model}/seed{seed}"] = measure(db, rng)
    seconds = time.perf_counter() - t0
    doc = json.dumps({"k": K, "n_clusters": N_CLUSTERS, "seconds": seconds, "runs": results}, indent=1)
    if args.save:
        args.save.write_text(doc)
    if args.json:
        print(doc)
        return
    print_tables(results, seconds)


def _ci(e: dict, pct: bool = True) -> str:
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(e['mean'])} [{f(e['low'])}, {f(e['high'])}]"


def print_tables(results: dict, seconds: float) -> None:
    print(f"k = {K} neighbours; {N_CLUSTERS} k-means groups; 95% bootstrap intervals over the mistakes ({seconds:.0f} s)\n")
    print("| run | mistakes | normalisation | same confusion | mistakes among nbrs | gap vs loss-matched | vs zscore (paired) | purity (random) |")
    print("|---|---|---|---|---|---|---|---|")
    for run, r in results.items():
        for name, row in r["normalisations"].items():
            vs = _ci(row["vs_zscore"]) if "vs_zscore" in row else "-"
            print(f"| {run} | {r['mistakes']}/{r['samples']} | {name} | {_ci(row['same_confusion'])} | {_ci(row['mistakes'])} | "
                  f"{_ci(row['gap_vs_loss'])} | {vs} | {row['purity']:.0%} ({row['purity_random']:.0%}) |")
    print("\n| run | space | same confusion | mistakes among nbrs |")
    print("|---|---|---|---|")
    for run, r in results.items():
        for space, e in [("feature", r["feature"])] + [(f"baseline: {b}", e) for b, e in r["baselines"].items()]:
            print(f"| {run} | {space} | {e['same_confusion']:.1%} | {e['mistakes']:.0%} |")
    print("\nsummary over runs (mean of the runs' means; runs where the paired interval vs zscore lies above / contains / below 0):")
    for name in NORMALISATIONS:
        rows = [r["normalisations"][name] for r in results.values()]
        line = (f"  {name:16s} same confusion {np.mean([x['same_confusion']['mean'] for x in rows]):.1%}, "
                f"mistakes {np.mean([x['mistakes']['mean'] for x in rows]):.0%}, "
                f"gap vs loss {np.mean([x['gap_vs_loss']['mean'] for x in rows]):+.1%}, "
                f"purity {np.mean([x['purity'] for x in rows]):.0%}")
        if name != "zscore":
            signs = [(x["vs_zscore"]["low"] > 0, x["vs_zscore"]["high"] < 0) for x in rows]
            above, below = sum(a for a, _ in signs), sum(b for _, b in signs)
            line += f"; vs zscore: above {above}, contains {len(rows) - above - below}, below {below}"
        print(line)
    for space in ("feature",):
        print(f"  {space:16s} same confusion {np.mean([r[space]['same_confusion'] for r in results.values()]):.1%}")
    for b in next(iter(results.values()))["baselines"]:
        print(f"  {b + '-matched' if b != 'random' else b:16s} same confusion "
              f"{np.mean([r['baselines'][b]['same_confusion'] for r in results.values()]):.1%}")


if __name__ == "__main__":
    main()
