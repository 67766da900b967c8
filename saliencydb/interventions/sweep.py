"""Dataset-level validation of the salient filters (paper figures 10, 16, 17): the same intervention on
every misclassified (or, as in A.2, correctly classified) sample of a split, over a range of k, with
percentile-bootstrap 95% intervals per filter choice."""

from __future__ import annotations

import numpy as np

from ..errors import QueryError
from ..progress import NullProgress
from .bench import Bench
from .filters import CHOICES, LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK, check_k
from .methods import DEFAULT_LR, DEFAULT_SIGMA, check_method, check_params
from .sample import DEFAULT_NEIGHBORS, sample_attempts

DEFAULT_KS = (1, 5, 10, 25, 50)
# per-sample values summarised per (k, filter choice)
METRICS = ("delta_true_conf", "correct_after", "delta_pred_conf")
NEIGHBOR_METRICS = ("nb_corrected_share", "nb_delta_true_conf")
_BOOT_CELLS = 1 << 22  # resample indices drawn per chunk of bootstrap rounds


def bootstrap_ci(values, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean of ``values`` (NaN/None dropped) and its percentile-bootstrap 95% interval."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    means = np.empty(n_boot)
    per = max(1, _BOOT_CELLS // len(v))
    for s in range(0, n_boot, per):
        b = min(per, n_boot - s)
        means[s : s + b] = v[rng.integers(0, len(v), size=(b, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "low": float(lo), "high": float(hi), "n": int(len(v))}


def select_samples(db, split: str, *, correct: bool = False, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """The misclassified (or correct) samples of ``split``; with ``limit``, a seeded random subset of them."""
    ids = db.ids_where("correct" if correct else "NOT correct", split)
    what = "correctly classified" if correct else "misclassified"
    if len(ids) == 0:
        raise QueryError(f"split '{split}' has no {what} samples" + ("" if correct else "; try --correct"))
    if limit is not None:
        if limit < 1:
            raise QueryError(f"--limit must be at least 1, got {limit}")
        if limit < len(ids):
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
    return ids


def validate(bench: Bench, split: str, method: str, ks=DEFAULT_KS, *, correct: bool = False, limit: int | None = None,
             n_boot: int = 1000, seed: int = 0, lr: float = DEFAULT_LR, sigma: float = DEFAULT_SIGMA,
             n_neighbors: int = DEFAULT_NEIGHBORS, progress=None) -> dict:
    """Run ``method`` on the salient, random and least-salient filters of every selected sample at every k
    (and the whole-network step for finetune); summarise per (k, filter choice) with bootstrap intervals."""
    check_method(method)
    check_params(lr, sigma)
    if n_boot < 1:
        raise QueryError(f"--bootstrap must be at least 1, got {n_boot}")
    ks = sorted({check_k(k, bench.n_units, "--ks value") for k in ks})
    if not ks:
        raise QueryError("--ks is empty; give values such as 1,5,10,25,50")
    ids = select_samples(bench.db, split, correct=correct, limit=limit, seed=seed)
    progress = progress or NullProgress()
    bench.prepare(ids)
    z = bench.z(ids)
    neighbors = None
    if method == "finetune":
        neighbors = bench.neighbors(ids, n_neighbors)
        bench.prepare(np.unique(neighbors))
    base = bench.baseline(ids)
    mismatches = int((base["correct"] != correct).sum())  # recomputed correctness differs from the stored one
    per: dict[tuple, dict[str, list]] = {}
    task = progress.task(f"{method} on {len(ids)} samples of {split}", len(ids), unit="samples")
    for i, sid in enumerate(ids.tolist()):
        rows = sample_attempts(bench, sid, method, ks, z=z[i], lr=lr, sigma=sigma, seed=seed,
                               neighbors=None if neighbors is None else neighbors[i])
        for r in rows:
            cell = per.setdefault((r["k"], r["filters"]), {m: [] for m in METRICS + NEIGHBOR_METRICS})
            for m in cell:
                cell[m].append(float(r[m]) if r.get(m) is not None else None)
        task.advance(1)
    task.close()
    rng = np.random.default_rng(seed)
    table = []
    choices = CHOICES + ((WHOLE_NETWORK,) if method == "finetune" else ())
    for k in ks + [None]:
        for name in choices:
            cell = per.get((k, name))
            if cell is None:
                continue
            row = {"k": k, "filters": name}
            for m in METRICS + (NEIGHBOR_METRICS if method == "finetune" else ()):
                row[m] = bootstrap_ci(cell[m], n_boot, rng)
            table.append(row)
    paired = []
    for k in ks:
        entry = {"k": k}
        for other in (RANDOM, LEAST_SALIENT):
            a = np.array(per[(k, SALIENT)]["delta_true_conf"])
            b = np.array(per[(k, other)]["delta_true_conf"])
            entry[f"salient_minus_{other}"] = bootstrap_ci(a - b, n_boot, rng)
        paired.append(entry)
    return {
        "split": split, "method": method, "samples": int(len(ids)),
        "which": "correct" if correct else "misclassified", "ks": ks, "bootstrap": n_boot, "seed": seed,
        "lr": lr if method == "finetune" else None, "sigma": sigma if method == "perturb" else None,
        "neighbors": n_neighbors if method == "finetune" else None,
        "baseline_accuracy_of_selected": float(base["correct"].mean()), "baseline_mismatches": mismatches,
        "rows": table, "paired_delta_true_conf": paired,
    }


def flat_rows(result: dict) -> list[dict]:
    """One flat row per (k, filter choice): mean and 95% interval of each metric."""
    out = []
    for r in result["rows"]:
        flat = {"k": "all" if r["k"] is None else r["k"], "filters": r["filters"], "n": r["delta_true_conf"]["n"]}
        for m in METRICS + NEIGHBOR_METRICS:
            if m in r:
                flat[m] = r[m]["mean"]
                flat[f"{m}_low"] = r[m]["low"]
                flat[f"{m}_high"] = r[m]["high"]
        out.append(flat)
    return out
