"""The demo: a small CNN trained on built-in real digits, a held-out split indexed, and what the
database finds. The trained weights ship with the package (``demo_weights/``, checked against their
recorded SHA-256), so the demo trains nothing and its numbers do not depend on how a processor rounds a
training run (the README prints them; tests/test_readme.py compares); ``train=True`` trains them here with
RECIPE instead (training rounds differently on other CPUs, so the numbers may then differ)."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import parse_data_spec
from .data.zoo import small_cnn, small_vit
from .errors import ModelError, SpecError
from .indexer import Indexer
from .query.results import ClustersResult, DatabaseInfo, MistakesReport
from .storage.derived import DerivedWriter
from .progress import NullProgress, Progress
from .query import open as open_db

MODEL_SPEC = "python:saliencydb.data.zoo:small_cnn"
VIT_SPEC = "python:saliencydb.data.zoo:small_vit"
# the demo's models: their spec, and how their recipe differs from RECIPE
DEMO_MODELS = {"cnn": (MODEL_SPEC, {}), "vit": (VIT_SPEC, {"max_lr": 3e-3})}
TRAIN_DATA = "builtin:mnist5k:train"
VAL_DATA = "builtin:mnist5k:val"
RECIPE = {"epochs": 15, "batch_size": 64, "max_lr": 1e-2, "weight_decay": 1e-4, "seed": 0}
# The weights the demo uses, shipped in saliencydb/demo_weights/ (provenance in its README.md): each made once by
# train_demo_model(cache, model=M) with RECIPE on TRAIN_DATA; (file name, SHA-256 of the file's bytes). The name
# carries the recipe's tag, so a changed recipe no longer matches it (tests/test_demo_weights.py).
WEIGHTS_DIR = Path(__file__).resolve().parent / "demo_weights"
SHIPPED_WEIGHTS = {
    "cnn": ("mnist5k-small-cnn-98ed74321a.pt", "693ed7bc5e53918382b7647e2442c950ea3ea8214f1cbae5c486e9853429ad64"),
    "vit": ("mnist5k-small-vit-c519cc8188.pt", "d4f9110fe8c99a9557bb4d276ddba824c877348742c7b53e8044f35c3e535ece"),
}


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "saliencydb"


def weights_name(model: str = "cnn", data: str = TRAIN_DATA, **recipe) -> str:
    """The file name of the demo ``model`` trained on ``data`` with RECIPE (``recipe`` overrides it): it carries
    a hash of the whole recipe, so weights made with another recipe are never taken for these."""
    recipe = {**RECIPE, **DEMO_MODELS[model][1], **recipe}
    tag = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()[:10]
    name = "mnist5k" if data == TRAIN_DATA else data.replace(":", "-").replace("/", "-")
    return f"{name}-small-{model}-{tag}.pt"


def shipped_weights(model: str = "cnn") -> Path:
    """The trained weights of the demo ``model`` that ship with saliencydb, checked against their recorded
    SHA-256: a missing or changed file is one line, never silently other numbers."""
    _check_model(model)
    name, sha256 = SHIPPED_WEIGHTS[model]
    path = WEIGHTS_DIR / name
    if not path.is_file():
        raise ModelError(f"the demo's weights {path} are missing from this installation; reinstall saliencydb, "
                         "or train them here with `saliencydb demo --train`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise ModelError(f"the demo's weights {path} have SHA-256 {digest[:16]}..., not the recorded "
                         f"{sha256[:16]}...; reinstall saliencydb, or train them here with `saliencydb demo --train`")
    return path


def train_demo_model(cache_dir: Path, progress: Progress | None = None, *, data: str = TRAIN_DATA, model: str = "cnn",
                     **recipe) -> Path:
    """Train the demo's ``model`` (``cnn``, the small CNN, or ``vit``, the small ViT; see DEMO_MODELS) on ``data``
    (a builtin training split; the demo's is builtin:mnist5k:train) with the demo's recipe (``recipe``
    overrides it, e.g. ``seed=1``) on this machine's CPU, or reuse the cached weights; returns the weights
    file. The demo itself uses the shipped weights (``shipped_weights``) unless asked to train."""
    _check_model(model)
    recipe = {**RECIPE, **DEMO_MODELS[model][1], **recipe}
    path = Path(cache_dir) / weights_name(model, data, **recipe)
    if path.is_file():
        return path
    source = parse_data_spec(data)
    transform = source.default_transform
    x = torch.stack([transform(source.load(i)) for i in range(len(source))])
    y = torch.tensor([source.label(i) for i in range(len(source))])
    torch.manual_seed(recipe["seed"])
    net = small_cnn() if model == "cnn" else small_vit()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, usable_cores()))  # never more threads than the cores this process may use
    try:
        _fit(net, x, y, recipe, progress or NullProgress())
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict, progress: Progress) -> None:
    """AdamW with a one-cycle schedule over shuffled mini-batches (the shuffling seeded by the recipe's seed)."""
    g = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["max_lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["epochs"] * ((len(x) + recipe["batch_size"] - 1) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["max_lr"], total_steps=steps)
    task = progress.task("training the demo model", recipe["epochs"], unit="epochs")
    model.train()
    for _ in range(recipe["epochs"]):
        for batch in torch.randperm(len(x), generator=g).split(recipe["batch_size"]):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
            sched.step()
        task.advance(1)
    task.close()
    model.eval()


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "QUOTA PERIOD" in microseconds, or "max PERIOD"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (torch's default
    thread count follows the affinity, not the quota: a container given 2 CPUs of a 64-core host would
    otherwise train with dozens of threads on 2 cores' worth of time)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota readable here
        pass
    return max(1, cores)


def _check_model(model: str) -> None:
    if model not in DEMO_MODELS:
        raise SpecError(f"unknown demo model {model!r}; use one of {', '.join(DEMO_MODELS)}")


@dataclass
class DemoResult:
    db: Path
    weights: Path
    info: DatabaseInfo
    mistakes: MistakesReport
    clusters: ClustersResult
    seconds: float
    report: Path | None = None
    trained: bool = False  # trained here with RECIPE (train=True), not the shipped weights
    model: str = "cnn"  # the key of DEMO_MODELS


def run_demo(db: str | os.PathLike = "demo-db", *, cache_dir: Path | None = None, n_clusters: int = 8,
             progress: Progress | None = None, report: bool = True, wait: bool = False, model: str = "cnn",
             train: bool = False) -> DemoResult:
    """Index builtin:mnist5k:val with the demo ``model`` (its shipped weights; with ``train``, trained here or
    reused from ``cache_dir``), run the mistakes report and the clusters.

    An existing demo database made with the same weights is brought up to date, never
    deleted (indexing resumes; the mistakes and clusters become new commits). Any other
    database, or a directory that is not one, is refused before anything is written."""
    t0 = time.perf_counter()
    progress = progress or NullProgress()
    db = Path(db)
    _check_model(model)
    spec = DEMO_MODELS[model][0]
    _check_demo_db(db, None, spec)  # another database is refused before minutes of training
    if train:
        weights = train_demo_model(cache_dir or default_cache_dir(), progress, model=model)
    else:
        weights = shipped_weights(model)
    _check_demo_db(db, weights, spec)
    # on the CPU on every machine: a GPU's rounding would make the printed numbers differ from the README's
    Indexer(db, model=spec, weights=str(weights), device="cpu", batch_size=128, workers=0, progress=progress,
            wait=wait).run(VAL_DATA, split="val")
    # the lock is taken before reading, so the tables are computed from the version they are stored on
    with DerivedWriter(db, wait=wait, operation="demo") as w:
        with open_db(db) as d:
            mistakes = d.mistakes(10, progress=progress, store=w)
    with DerivedWriter(db, wait=wait, operation="demo") as w:
        with open_db(db) as d:
            clusters = d.clusters(n_clusters, store=w)
    with open_db(db) as d:
        info = d.info()
    result = DemoResult(db=db, weights=weights, info=info, mistakes=mistakes, clusters=clusters, seconds=0.0,
                        trained=train, model=model)
    if report:
        from .report import write_report

        result.report = write_report(db, db / "report.html", progress=progress)
    result.seconds = time.perf_counter() - t0
    return result


def _check_demo_db(db: Path, weights: Path | None, spec: str = MODEL_SPEC) -> None:
    """Refuse a directory that holds anything but this demo's own database."""
    from .errors import DatabaseError
    from .storage import is_database, read_current

    if not db.exists() or not any(db.iterdir()):
        return
    if not is_database(db):
        raise DatabaseError(f"'{db}' exists and is not a saliencydb database; remove it or pass another --db")
    m = read_current(db)
    from .models import load_model

    if m.model.spec != spec or (m.splits["val"].source if "val" in m.splits else VAL_DATA) != VAL_DATA:
        raise DatabaseError(f"'{db}' holds a database that is not the demo's (model {m.model.spec}); "
                            "the demo never replaces it: pass another --db")
    if weights is not None and load_model(spec, str(weights)).weights_sha256 != m.model.weights_sha256:
        raise DatabaseError(f"'{db}' holds a demo database made with other weights; remove it (`rm -r {db}`) "
                            "or pass another --db")


def story(result: DemoResult) -> str:
    """What the demo found, in a few lines with real numbers."""
    val = result.info.splits["val"]
    sal_space, feat_space = result.mistakes.splits["val"].spaces["saliency"], result.mistakes.splits["val"].spaces["feature"]
    sal = 1 - sal_space.correct_neighbors_of_incorrect.mean
    feat = 1 - feat_space.correct_neighbors_of_incorrect.mean
    sal_ok = sal_space.correct_neighbors_of_correct.mean
    pair = sal_space.same_confusion_of_incorrect.mean
    pair_f = feat_space.same_confusion_of_incorrect.mean
    base = result.mistakes.splits["val"].baselines
    pair_loss, pair_random = base["loss"].same_confusion_of_incorrect.mean, base["random"].same_confusion_of_incorrect.mean
    wrong_loss = 1 - base["loss"].correct_neighbors_of_incorrect.mean
    ratio = f"{sal / feat:.1f}x as often" if feat > 0 else "where feature neighbours never are"
    units = result.info.units
    conv = units.kind == "conv-filter"
    what = f"{units.count:,} filters" if conv else f"{units.count:,} linear units (rows of its linear layers' weights)"
    lines = [
        f"A small {'CNN' if conv else 'vision transformer'} trained on 3,000 real handwritten digits classifies "
        f"{val.samples:,} held-out digits with {val.accuracy:.1%} accuracy: {val.mistakes} mistakes.",
        _weights_line(result),
        "",
        f"For every digit, saliencydb stored which of the network's {what} its loss leans on abnormally hard,",
        "and found its 10 nearest neighbours by that profile (and, as a baseline, by the network's features).",
        f"  - the saliency neighbours of a mistake are mistakes {sal:.0%} of the time; feature neighbours {feat:.0%} ({ratio});",
        f"  - {pair:.0%} of a mistake's saliency neighbours make the very same confusion (feature space: {pair_f:.0%});",
        f"  - the saliency neighbours of a correct digit are correct {sal_ok:.0%} of the time.",
        f"  - without the profile, the 10 digits of closest loss are mistakes {wrong_loss:.0%} of the time (a high loss",
        f"    nearly means a mistake), but only {pair_loss:.0%} make the same confusion (random digits: {pair_random:.1%}):",
        "    the shared confusion is what saliency adds beyond the loss.",
        "",
        f"The {result.clusters.samples} mistakes fall into {len(result.clusters.clusters)} error groups by profile; the largest:",
    ]
    for g in result.clusters.clusters[:4]:
        pairs = ", ".join(f"{p.pair} x{p.count}" for p in g.top_confusions[:2])
        unit = g.top_units[0]
        lines.append(f"  - group {g.cluster}: {g.size} mistakes ({pairs}); most blamed {'filter' if conv else 'unit'} {unit.layer}[{unit.channel}]")
    worst = _first_confident_mistake(result)
    lines += [
        "",
        "Try next:",
        f"  saliencydb neighbors --db {result.db} --id {worst} -k 5",
        f"  saliencydb sql --db {result.db} \"SELECT cluster, sum(k) AS n, first(confusion ORDER BY k DESC, confusion) AS typical FROM (SELECT cluster, confusion, count(*) AS k FROM clusters JOIN samples USING (sample_id) GROUP BY ALL) GROUP BY cluster ORDER BY n DESC, cluster\"",
        f"  saliencydb explain --db {result.db} --id {worst} --out mistake-{worst}.png",
    ]
    if result.report:
        lines += ["", f"Report: {result.report}"]
    lines.append(f"(demo took {result.seconds:.0f}s)")
    lines.append(f"Browse it in a web app: saliencydb serve --db {result.db}   (then open the URL it prints, with its token)")
    return "\n".join(lines)


def _weights_line(result: DemoResult) -> str:
    """Where the model's weights come from, and so whether the numbers are the README's."""
    if result.trained:
        recipe = {**RECIPE, **DEMO_MODELS[result.model][1]}
        return (f"Its weights were trained on this machine's CPU with the demo's recipe (seed {recipe['seed']}, {recipe['epochs']} "
                "epochs); training rounds differently\non other processors, so these numbers may differ from the "
                "README's, which come from the weights shipped with saliencydb.")
    sha256 = hashlib.sha256(result.weights.read_bytes()).hexdigest()
    return (f"Its weights ship with saliencydb (SHA-256 {sha256[:12]}...), trained once with the demo's recipe; "
            "`--train` trains them here instead.")


def _first_confident_mistake(result: DemoResult) -> int:
    with open_db(result.db) as d:
        return int(d._execute("SELECT sample_id FROM samples WHERE NOT correct ORDER BY pred_conf DESC, sample_id LIMIT 1").fetchone()[0])
