"""A seed sweep over the built-in model: does "the salient filters matter more than random ones" hold for
the demo CNN trained with other seeds, or only for one lucky model?

For each model seed the demo CNN is trained (cached) on a builtin training split, its validation split is
indexed into a database under the cache directory (reused, and resumed, on the next run), and ``validate``
runs on that split's mistakes; each seed's paired salient - random difference of the change in
true-class confidence is kept per k, and summarised across seeds by the sign of its 95% interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .demo import DEMO_MODELS, RECIPE, default_cache_dir, train_demo_model
from .errors import QueryError
from .indexer import Indexer
from .interventions import Bench, Estimate, Validation, ValidationSettings, validate
from .progress import NullProgress, Progress
from .query import open as open_db
from .results import Result

SPLIT = "val"


@dataclass
class SeedDifference(Result):
    """One model seed's paired salient - random difference of the change in true-class confidence at one k."""

    k: int
    salient_minus_random: Estimate


@dataclass
class SeedRun(Result):
    """One model seed: its weights, its database, the validation split's accuracy and the paired differences.
    ``validation`` (the whole ``validate`` result) is kept on the object, not in the JSON."""

    internal = ("validation",)

    model_seed: int
    weights: str
    weights_sha256: str
    database: str
    samples: int  # in the validation split
    accuracy: float | None
    mistakes: int
    validated: int  # samples the interventions ran on
    paired_delta_true_conf: list[SeedDifference]
    validation: Validation | None = field(default=None, repr=False)


@dataclass
class SignCount(Result):
    """Across the model seeds, at one k: how many intervals of salient - random lie above 0, contain 0, lie
    below 0, and the mean of the seeds' means."""

    k: int
    seeds: int
    above_zero: int
    contains_zero: int
    below_zero: int
    mean: float | None


@dataclass
class SeedSweep(Result):
    """A ``seed-sweep`` result: one run per model seed, and the sign counts per k across them."""

    data: str
    method: str
    model_seeds: list[int]
    ks: list[int]
    limit: int | None
    bootstrap: int
    random_draws: int
    seed: int  # of the validation (sample subsets, random controls, bootstrap)
    epochs: int
    runs: list[SeedRun]
    summary: list[SignCount]

    def rows(self) -> list[dict]:
        """One row per (model seed, k) (the CSV output)."""
        return [{"model_seed": r.model_seed, "k": p.k, "accuracy": r.accuracy, "mistakes": r.mistakes,
                 "validated": r.validated, "salient_minus_random": p.salient_minus_random.mean,
                 "low": p.salient_minus_random.low, "high": p.salient_minus_random.high,
                 "weights_sha256": r.weights_sha256}
                for r in self.runs for p in r.paired_delta_true_conf]


def builtin_split(data: str) -> tuple[str, str]:
    """``builtin:NAME:val`` -> (NAME, ``builtin:NAME:train``); any other spec is one clear line."""
    from .data import parse_data_spec

    kind, _, rest = str(data).partition(":")
    name, _, split = rest.partition(":")
    if kind != "builtin" or not name:
        raise QueryError(f"--data {data!r}: a seed sweep trains the built-in model, so give a builtin validation "
                         "split such as builtin:mnist5k:val")
    if split != SPLIT:
        raise QueryError(f"--data {data!r}: give the validation split, builtin:{name}:val (the model is trained on "
                         f"builtin:{name}:train)")
    parse_data_spec(data)  # an unknown builtin is one line
    return name, f"builtin:{name}:train"


def demo_units() -> int:
    """The number of filters of the built-in CNN (the largest k is half of it)."""
    from .data.zoo import small_cnn
    from .saliency.layout import UnitLayout

    return UnitLayout.from_module(small_cnn()).n_units


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: whole numbers >= 0, repeats dropped, in the order given."""
    items = [s.strip() for s in str(text).split(",")]
    if not items or not all(s.isdigit() for s in items):
        raise QueryError(f"--seeds {text!r} is not a comma-separated list of whole numbers such as 0,1,2")
    return list(dict.fromkeys(int(s) for s in items))


def builtin_database(data: str, seed: int, cache_dir: Path, progress: Progress | None = None, wait: bool = False, *,
                     device: str = "auto", model: str = "cnn", **recipe) -> Path:
    """The database of the builtin validation split ``data`` (e.g. builtin:mnist5k:val) indexed with the demo CNN
    trained (cached) with ``seed`` on the matching training split (``recipe`` overrides more of the demo's
    recipe, e.g. ``epochs=1``): ``cache_dir/databases/NAME-seedSEED-WEIGHTS``, created, resumed or reused."""
    name, train = builtin_split(data)
    progress = progress or NullProgress()
    cache_dir = Path(cache_dir)
    weights = train_demo_model(cache_dir, progress, data=train, model=model, **{**recipe, "seed": int(seed)})
    db = cache_dir / "databases" / f"{name}{'' if model == 'cnn' else '-' + model}-seed{int(seed)}-{weights.stem}"
    if not _indexed(db, weights):
        Indexer(db, model=DEMO_MODELS[model][0], weights=str(weights), device=device, batch_size=128, workers=0,
                progress=progress, wait=wait).run(data, split=SPLIT)
    return db


def _indexed(db: Path, weights: Path) -> bool:
    """Whether ``db`` already holds the whole validation split, made with ``weights`` (then nothing is committed)."""
    from .storage import is_database, read_current

    if not db.is_dir() or not is_database(db):
        return False
    m = read_current(db)
    return SPLIT in m.splits and m.splits[SPLIT].complete and m.model.weights == str(weights.resolve())


@dataclass(frozen=True)
class SweepSettings:
    """How ``seed_sweep`` trains, indexes and validates each model seed.

    Each seed's validation: ``validation`` (ks, limit, bootstrap, seed, random draws, step sizes; on the mistakes).
    The training: ``epochs`` (None: the demo recipe's); ``cache_dir`` keeps the models and databases (None: the demo's).
    How it runs: ``device``; ``progress``; ``wait`` for another writer's lock on a database.
    """

    validation: ValidationSettings = field(default_factory=lambda: ValidationSettings(random_draws=10))
    epochs: int | None = None
    cache_dir: Path | None = None
    device: str = "auto"
    progress: Progress | None = None
    wait: bool = False


def seed_sweep(data: str, seeds, method: str, settings: SweepSettings | None = None) -> SeedSweep:
    """``validate`` (``method`` at each k of ``settings.validation`` on the mistakes of the validation split) on the
    built-in model trained with each of ``seeds``; per seed the split's accuracy and the paired salient - random
    differences, per k the signs of their intervals across seeds. ks None: those of 1, 5, 10, 25, 50 that fit the model."""
    from .models.device import resolve_device

    s = settings or SweepSettings()
    builtin_split(data)
    validation = replace(s.validation, ks=_check_options(s.validation, method))
    resolve_device(s.device)  # an unknown device is one line before any training
    seeds = list(dict.fromkeys(int(seed) for seed in seeds))
    if not seeds:
        raise QueryError("--seeds is empty; give model seeds such as 0,1,2")
    recipe = {} if s.epochs is None else {"epochs": _check_epochs(s.epochs)}
    cache_dir = Path(s.cache_dir) if s.cache_dir is not None else default_cache_dir()
    runs = []
    for model_seed in seeds:
        db = builtin_database(data, model_seed, cache_dir, s.progress, s.wait, device=s.device, **recipe)
        runs.append(_seed_run(db, model_seed, method, validation, device=s.device, progress=s.progress))
    ks = runs[0].validation.ks
    return SeedSweep(data=data, method=method, model_seeds=seeds, ks=ks, limit=validation.limit,
                     bootstrap=validation.n_boot, random_draws=validation.random_draws, seed=validation.seed,
                     epochs=int(recipe.get("epochs", RECIPE["epochs"])), runs=runs,
                     summary=[_sign_count(k, runs) for k in ks])


def _check_options(validation: ValidationSettings, method: str) -> list[int]:
    """The options ``validate`` checks, checked before minutes of training; returns the ks, sorted."""
    from .interventions.methods import check_method

    ks = validation.checked_ks(demo_units())
    check_method(method)
    validation.check()
    if validation.correct:
        raise QueryError("a seed sweep validates each model's mistakes; drop correct=True")
    return ks


def _check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise QueryError(f"--epochs must be at least 1, got {epochs}")
    return epochs


def _seed_run(db: Path, model_seed: int, method: str, validation: ValidationSettings, *, device: str,
              progress) -> SeedRun:
    """``validate`` on the validation split of one model seed's database."""
    from .models.device import resolve_device

    with open_db(db) as d:
        split = d.info().splits[SPLIT]
        v = validate(Bench(d, device=resolve_device(device)), SPLIT, method, validation, progress=progress)
        m = d.manifest.model
    return SeedRun(model_seed=model_seed, weights=m.weights or "",
                   weights_sha256=m.weights_sha256, database=str(db), samples=split.samples, accuracy=split.accuracy,
                   mistakes=split.mistakes, validated=v.samples,
                   paired_delta_true_conf=[SeedDifference(k=p.k, salient_minus_random=p.salient_minus_random)
                                           for p in v.paired_delta_true_conf],
                   validation=v)


def _sign_count(k: int, runs: list[SeedRun]) -> SignCount:
    """Where the seeds' intervals of salient - random at ``k`` lie with respect to 0."""
    stats = [p.salient_minus_random for r in runs for p in r.paired_delta_true_conf if p.k == k]
    stats = [s for s in stats if s.mean is not None]
    return SignCount(k=k, seeds=len(stats), above_zero=sum(s.low > 0 for s in stats),
                     contains_zero=sum(s.low <= 0 <= s.high for s in stats), below_zero=sum(s.high < 0 for s in stats),
                     mean=sum(s.mean for s in stats) / len(stats) if stats else None)
