"""Dataset-level validation of the salient filters (paper figures 10, 16, 17): the same intervention on
every misclassified (or, as in A.2, correctly classified) sample of a split, over a range of k, with
percentile-bootstrap 95% intervals per filter choice.

The random control of a sample at one k is the mean over ``random_draws`` independent seeded draws of k
filters (``filters.draw_seed``); the intervals and the paired differences are over the samples' values."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import QueryError
from ..progress import NullProgress
from ..results import Result
from .bench import Bench
from .filters import CHOICES, LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK, check_k, parse_ks, seeded_subset
from .methods import DEFAULT_LR, DEFAULT_SIGMA, check_method, check_params
from .sample import DEFAULT_NEIGHBORS, sample_attempts

DEFAULT_KS = (1, 5, 10, 25, 50)
# per-sample values summarised per (k, filter choice)
METRICS = ("delta_true_conf", "correct_after", "delta_pred_conf")
NEIGHBOR_METRICS = ("nb_corrected_share", "nb_delta_true_conf")
_BOOT_CELLS = 1 << 22  # resample indices drawn per chunk of bootstrap rounds


@dataclass
class Estimate(Result):
    """A mean and its percentile-bootstrap 95% interval over ``n`` values (all None when there are none)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int


@dataclass
class ValidationRow(Result):
    """The estimates of one (k, filter choice); the neighbour metrics only for finetune."""

    k: int | None  # None: the whole-network step
    filters: str
    delta_true_conf: Estimate
    correct_after: Estimate
    delta_pred_conf: Estimate
    nb_corrected_share: Estimate | None = None
    nb_delta_true_conf: Estimate | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in super().to_dict().items() if not (key in NEIGHBOR_METRICS and value is None)}

    def metric(self, name: str) -> Estimate | None:
        """The estimate of the metric ``name`` (one of METRICS + NEIGHBOR_METRICS; None when not measured)."""
        return getattr(self, name) if name in METRICS + NEIGHBOR_METRICS else None

    def flat(self) -> dict:
        """Mean and interval of each metric as flat columns."""
        out = {"k": "all" if self.k is None else self.k, "filters": self.filters, "n": self.delta_true_conf.n}
        for m in METRICS + NEIGHBOR_METRICS:
            s = self.metric(m)
            if s is not None:
                out.update({m: s.mean, f"{m}_low": s.low, f"{m}_high": s.high})
        return out


@dataclass
class PairedDifference(Result):
    """Salient minus each control, paired per sample, of the change in true-class confidence at one k."""

    k: int
    salient_minus_random: Estimate
    salient_minus_least_salient: Estimate


@dataclass
class Validation(Result):
    """A ``validate`` result. ``table`` is the JSON document's ``rows``. ``per_sample`` (not in the JSON):
    per (k, filter choice), each metric's value per sample, in the order of ``sample_ids`` (the random
    control's: the mean over its draws)."""

    internal = ("sample_ids", "per_sample")

    split: str
    method: str
    samples: int
    which: str  # misclassified or correct
    ks: list[int]
    bootstrap: int
    seed: int
    random_draws: int  # random-control draws per sample and k; a sample's random value is their mean
    lr: float | None
    sigma: float | None
    neighbors: int | None
    baseline_accuracy_of_selected: float
    baseline_mismatches: int  # samples the reloaded model classifies differently than stored
    table: list[ValidationRow]
    paired_delta_true_conf: list[PairedDifference]
    out: str | None = None  # the figure, when one was written (left out of the JSON otherwise)
    sample_ids: list[int] = field(default_factory=list, repr=False)
    per_sample: dict[tuple, dict[str, list]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        doc = {("rows" if key == "table" else key): value for key, value in super().to_dict().items()}
        if self.out is None:
            del doc["out"]
        return doc

    def rows(self) -> list[dict]:
        """One flat row per (k, filter choice): mean and 95% interval of each metric (the CSV output)."""
        return [r.flat() for r in self.table]


def bootstrap(values, n_boot: int, rng: np.random.Generator) -> Estimate:
    """Mean of ``values`` (NaN/None dropped) and its percentile-bootstrap 95% interval."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return Estimate(mean=None, low=None, high=None, n=0)
    means = np.empty(n_boot)
    per = max(1, _BOOT_CELLS // len(v))
    for s in range(0, n_boot, per):
        b = min(per, n_boot - s)
        means[s : s + b] = v[rng.integers(0, len(v), size=(b, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(mean=float(v.mean()), low=float(lo), high=float(hi), n=int(len(v)))


def bootstrap_ci(values, n_boot: int, rng: np.random.Generator) -> dict:
    """``bootstrap`` as a dict ``{mean, low, high, n}``."""
    return bootstrap(values, n_boot, rng).to_dict()


def check_draws(random_draws) -> int:
    """``--random-draws``: a whole number of at least 1."""
    if isinstance(random_draws, bool) or not isinstance(random_draws, (int, np.integer)) or random_draws < 1:
        raise QueryError(f"--random-draws must be at least 1, got {random_draws}")
    return int(random_draws)


def select_samples(db, split: str, *, correct: bool = False, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """The misclassified (or correct) samples of ``split``; with ``limit``, a seeded random subset of them."""
    ids = db.ids_where("correct" if correct else "NOT correct", split)
    what = "correctly classified" if correct else "misclassified"
    if len(ids) == 0:
        raise QueryError(f"split '{split}' has no {what} samples" + ("" if correct else "; try --correct"))
    return seeded_subset(ids, limit, seed)


@dataclass(frozen=True)
class ValidationSettings:
    """How ``validate`` runs, whatever the split and method: what its result records.

    At which k: ``ks`` (None: those of 1, 5, 10, 25, 50 that fit the model, as the CLI's default).
    On which samples: the mistakes, or with ``correct`` the correctly classified; ``limit``: a seeded subset of that many.
    The statistics: ``n_boot`` bootstrap resamples; ``seed`` of the subset, the random controls and the bootstrap.
    The random control: ``random_draws`` seeded draws per sample and k, averaged (1: one draw, as in earlier versions).
    The edits: ``lr`` (finetune), ``sigma`` (perturb); ``n_neighbors``: saliency neighbours scored per sample (finetune).
    """

    ks: tuple[int, ...] | None = None
    correct: bool = False
    limit: int | None = None
    n_boot: int = 1000
    seed: int = 0
    random_draws: int = 1
    lr: float = DEFAULT_LR
    sigma: float = DEFAULT_SIGMA
    n_neighbors: int = DEFAULT_NEIGHBORS

    def __post_init__(self) -> None:
        if self.ks is not None:  # any iterable of ks (a list, a range), kept as a tuple
            object.__setattr__(self, "ks", tuple(self.ks))

    def checked_ks(self, n_units: int) -> list[int]:
        """The ks, sorted and distinct, each checked against the model's ``n_units``."""
        if self.ks is None:
            return parse_ks(None, n_units)
        ks = sorted({check_k(k, n_units, "--ks value") for k in self.ks})
        if not ks:
            raise QueryError("--ks is empty; give values such as 1,5,10,25,50")
        return ks

    def check(self) -> None:
        """The options that need no model, each wrong one a clear line."""
        check_params(self.lr, self.sigma)
        check_draws(self.random_draws)
        if self.n_boot < 1:
            raise QueryError(f"--bootstrap must be at least 1, got {self.n_boot}")
        if self.limit is not None and self.limit < 1:
            raise QueryError(f"--limit must be at least 1, got {self.limit}")


def validate(bench: Bench, split: str, method: str, settings: ValidationSettings | None = None, *,
             progress=None) -> Validation:
    """Run ``method`` on the salient, random and least-salient filters of every selected sample at every k
    (and the whole-network step for finetune); summarise per (k, filter choice) with bootstrap intervals.
    ``settings``: the ks, the samples, the bootstrap, the random control's draws and the edits' step sizes
    (``ValidationSettings``; None: its defaults)."""
    s = settings or ValidationSettings()
    check_method(method)
    s.check()
    random_draws = check_draws(s.random_draws)
    ks = s.checked_ks(bench.n_units)
    ids = select_samples(bench.db, split, correct=s.correct, limit=s.limit, seed=s.seed)
    neighbors = _prepare(bench, ids, method, s.n_neighbors)
    base = bench.baseline(ids)
    per = _collect(bench, ids, method, ks, neighbors, split=split, lr=s.lr, sigma=s.sigma, seed=s.seed,
                   random_draws=random_draws, progress=progress or NullProgress())
    rng = np.random.default_rng(s.seed)
    table = _summarise(per, ks, method, s.n_boot, rng)
    return Validation(
        split=split, method=method, samples=int(len(ids)), which="correct" if s.correct else "misclassified", ks=ks,
        bootstrap=s.n_boot, seed=s.seed, random_draws=random_draws, lr=s.lr if method == "finetune" else None,
        sigma=s.sigma if method == "perturb" else None, neighbors=s.n_neighbors if method == "finetune" else None,
        baseline_accuracy_of_selected=float(base["correct"].mean()),
        # recomputed correctness that differs from the stored one
        baseline_mismatches=int((base["correct"] != s.correct).sum()),
        table=table, paired_delta_true_conf=_paired(per, ks, s.n_boot, rng),
        sample_ids=[int(i) for i in ids], per_sample=per,
    )


def _prepare(bench: Bench, ids: np.ndarray, method: str, n_neighbors: int) -> np.ndarray | None:
    """Load the samples (and, for finetune, their saliency neighbours, returned) into the bench."""
    bench.prepare(ids)
    if method != "finetune":
        return None
    neighbors = bench.neighbors(ids, n_neighbors)
    bench.prepare(np.unique(neighbors))
    return neighbors


def _collect(bench: Bench, ids: np.ndarray, method: str, ks: list[int], neighbors, *, split: str, lr: float,
             sigma: float, seed: int, random_draws: int, progress) -> dict[tuple, dict[str, list]]:
    """Every attempt on every sample: per (k, filter choice), the per-sample values of each metric (for a
    choice tried several times on a sample, the random control, the mean over its attempts)."""
    z = bench.z(ids)
    per: dict[tuple, dict[str, list]] = {}
    task = progress.task(f"{method} on {len(ids)} samples of {split}", len(ids), unit="samples")
    for i, sid in enumerate(ids.tolist()):
        attempts = sample_attempts(bench, sid, method, ks, z=z[i], lr=lr, sigma=sigma, seed=seed,
                                   neighbors=None if neighbors is None else neighbors[i], random_draws=random_draws)
        for key, values in _per_attempt_values(attempts).items():
            cell = per.setdefault(key, {m: [] for m in METRICS + NEIGHBOR_METRICS})
            for m, vs in values.items():
                cell[m].append(_mean(vs))
        task.advance(1)
    task.close()
    return per


def _per_attempt_values(attempts) -> dict[tuple, dict[str, list]]:
    """The attempts on one sample grouped by (k, filter choice): each metric's value per attempt."""
    grouped: dict[tuple, dict[str, list]] = {}
    for a in attempts:
        cell = grouped.setdefault((a.k, a.filters), {m: [] for m in METRICS + NEIGHBOR_METRICS})
        for m, values in cell.items():
            value = getattr(a, m)
            values.append(None if value is None else float(value))
    return grouped


def _mean(values: list) -> float | None:
    """The mean of the values that are not None (None when there are none); one value is returned as it is."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else float(np.mean(kept))


def _summarise(per: dict, ks: list[int], method: str, n_boot: int, rng: np.random.Generator) -> list[ValidationRow]:
    """One row of bootstrap estimates per (k, filter choice), k in order, the whole-network step last."""
    table = []
    choices = CHOICES + ((WHOLE_NETWORK,) if method == "finetune" else ())
    metrics = METRICS + (NEIGHBOR_METRICS if method == "finetune" else ())
    for k in ks + [None]:
        for name in choices:
            cell = per.get((k, name))
            if cell is not None:
                table.append(ValidationRow(k=k, filters=name, **{m: bootstrap(cell[m], n_boot, rng) for m in metrics}))
    return table


def _paired(per: dict, ks: list[int], n_boot: int, rng: np.random.Generator) -> list[PairedDifference]:
    """Salient minus each control, sample by sample, at each k."""
    paired = []
    for k in ks:
        salient = np.array(per[(k, SALIENT)]["delta_true_conf"])
        diff = {other: bootstrap(salient - np.array(per[(k, other)]["delta_true_conf"]), n_boot, rng)
                for other in (RANDOM, LEAST_SALIENT)}
        paired.append(PairedDifference(k=k, salient_minus_random=diff[RANDOM], salient_minus_least_salient=diff[LEAST_SALIENT]))
    return paired
