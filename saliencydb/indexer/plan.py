"""The plan step of an indexing job: open (or create) the database with its model, and list the
samples of the split that are still to do (a rerun resumes where the last commit left off)."""

from __future__ import annotations

import os
import re
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.sources import Source
from ..data.transforms import Transform, transform_from_dict
from ..errors import DatabaseError, DataError, ModelError, SaliencyDBError, SpecError
from ..models.loading import LoadedModel, check_reference_weights, load_model
from ..models.names import IMAGENET_CLASSES, imagenet_synsets
from ..progress import NullProgress, Progress
from ..models.stored import initialised_at_random, load_stored_model, model_record
from ..saliency import ProfileEngine, UnitLayout
from ..saliency.aggregates import DEFAULT_AGGREGATE
from ..saliency.reference_stats import reference_stats
from ..schemas import DEFAULT_PROFILE_DTYPE, Manifest
from ..schemas.manifest import PendingReplace, SplitEntry
from ..storage import DatabaseWriter, committed_keys, is_database, read_current

SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class JobSettings:
    """How a job runs, whatever the split: the device, batches, parts, index kind, progress."""

    device: torch.device
    batch_size: int = 64
    workers: int = 0
    part_rows: int = 1024
    index_kind: str | None = None
    progress: Progress = field(default_factory=NullProgress)
    wait: bool = False


@dataclass
class ModelChoice:
    """What `index` was told about the model (all None for `ingest`: the database's own)."""

    spec: str | None = None
    weights: str | None = None
    transform: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    aggregate: str | None = None
    normalisation: str | None = None
    units: str | None = None  # saliency.layout.UNIT_CHOICES; None: auto
    stats: str | None = None  # a reference_stats name: standardise with the shipped statistics
    linear_units: str | None = None  # out or in; None: out
    random_weights: bool = False
    seed: int | None = None  # --random-weights: the seed the weights are drawn under (None: 0)
    task: str | None = None  # hf: models; None: the one its config names
    profile_dtype: str | None = None  # schemas.PROFILE_DTYPES: how raw profiles are stored; None: float32 (new), the db's own

    @property
    def random_seed(self) -> int | None:
        """The seed of --random-weights, None without it."""
        return (self.seed or 0) if self.random_weights else None

    @property
    def load_weights(self) -> str | None:
        """The weights to load: --weights; for a torchvision model standardised with --stats reference:NAME, by
        default the weights those statistics were computed with (IMAGENET1K_V1), not torchvision's DEFAULT."""
        if self.weights is None and self.stats is not None and not self.random_weights and (self.spec or "").startswith("torchvision:"):
            return "IMAGENET1K_V1"
        return self.weights

    def load(self) -> LoadedModel:
        return load_model(self.spec, self.load_weights, self.num_classes, self.task, random_seed=self.random_seed)


@dataclass
class Opened:
    """A job's database: its writer, its model and input transform, and notes for the user (a guessed
    transform, classes matched in an assumed order), said once when the database is created."""

    writer: DatabaseWriter
    model: LoadedModel
    transform: Any
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What a job still has to do on a split: the source's positions to profile, and how."""

    split: str
    data: str  # the data spec, as recorded in the manifest
    source: Source
    todo: list[int]
    done: int  # samples of the source already committed (to this split, or to its pending replacement)
    skipped: int  # of them, those this job skips (before --limit)
    is_reference: bool  # the statistics are computed over this split
    replace: bool


def check_split_name(split: str) -> str:
    if not SPLIT_NAME.match(split):
        raise SpecError(f"split name '{split}' is invalid; use letters, digits, '_', '.', '-' (up to 64 characters)")
    return split


def open_database(db: Path, choice: ModelChoice, source: Source, operation: str, wait: bool) -> Opened:
    """The writer of the database (created from ``choice`` when there is none, or when it never
    committed a sample: nothing in it can be lost), its model and its input transform."""
    existing = read_current(db) if is_database(db) else None
    fresh = existing is not None and choice.spec is not None and existing.rows() == 0 and not existing.pending
    if existing is not None and not fresh:
        model = _check_existing(db, existing, choice)
        check_modality(model, source, f"database '{db}'")
        return Opened(DatabaseWriter(db, wait=wait, operation=operation), model, transform_from_dict(existing.model.transform))
    if choice.spec is None:
        raise SpecError(f"no database at '{db}' yet: pass --model (and --weights) to create it")
    manifest, loaded, transform, notes = _new_manifest(choice, source)
    if fresh:
        return Opened(_recreate(db, manifest, operation, wait), loaded, transform, notes)
    return Opened(DatabaseWriter(db, manifest, wait=wait, operation=operation), loaded, transform, notes)


def _check_existing(db: Path, manifest: Manifest, choice: ModelChoice) -> LoadedModel:
    """The stored model, after checking that what `index` was told agrees with the database."""
    if choice.classes is not None and choice.classes != manifest.class_names:
        raise SpecError(f"database '{db}' already names its classes ({', '.join(manifest.class_names[:5])}, ...); "
                        "omit --classes")
    stored = load_stored_model(manifest)
    if choice.spec is not None:
        given = choice.load()
        if given.weights_sha256 != stored.weights_sha256:
            raise ModelError(
                f"database '{db}' holds model {manifest.model.spec} "
                f"(weights {manifest.model.weights or 'default'}, sha256 {stored.weights_sha256[:12]}); "
                f"the given model's weights differ (sha256 {given.weights_sha256[:12]}); use another --db"
            )
    if choice.aggregate is not None and choice.aggregate != manifest.aggregate:
        raise SpecError(f"database '{db}' stores {manifest.aggregate} profiles; omit --aggregate, or use another --db")
    if choice.stats is not None and (manifest.stats is None or manifest.stats.source != f"reference:{choice.stats}"):
        raise SpecError(f"--stats applies when a database is created; '{db}' already exists: omit --stats, or use another --db")
    if choice.units is not None or choice.linear_units is not None:
        wanted = UnitLayout.from_module(stored.module, choice.units or "auto", choice.linear_units or "out")
        if wanted.to_dict()["layers"] != manifest.units["layers"]:
            raise SpecError(f"database '{db}' stores {manifest.units['kind']} units; omit --units/--linear-units, or use another --db")
    if choice.normalisation is not None and choice.normalisation != manifest.profile_normalisation:
        raise SpecError(f"database '{db}' uses the {manifest.profile_normalisation} normalisation; omit --normalisation, "
                        f"or switch the whole database with `saliencydb restat --db {db} --normalisation {choice.normalisation}`")
    if choice.profile_dtype is not None and choice.profile_dtype != manifest.stored_profile_dtype:
        raise SpecError(f"database '{db}' stores {manifest.stored_profile_dtype} profiles, fixed when it was created; "
                        "omit --profile-dtype, or use another --db")
    if choice.transform is not None and Transform.parse(choice.transform).to_dict() != manifest.model.transform:
        if manifest.rows() == 0 and not manifest.pending:
            raise SpecError(f"database '{db}' has no samples yet: to start over with this transform, pass "
                            "--model (and --weights) again and it is made anew")
        raise SpecError(f"database '{db}' was made with transform {manifest.model.transform}; omit --transform")
    return stored


def _new_manifest(choice: ModelChoice, source: Source) -> tuple[Manifest, LoadedModel, Any, list[str]]:
    """The manifest of a new database: the model loaded and checked on the data's first sample; and the
    notes to say about it (``Opened.notes``)."""
    if choice.stats is not None and not choice.random_weights:
        check_reference_weights(choice.spec, choice.load_weights, choice.stats)
    loaded = choice.load()
    check_modality(loaded, source, f"model {choice.spec}")
    if loaded.modality == "text" and choice.transform is not None:
        raise SpecError(f"model {choice.spec} is a text model: its tokenizer is its transform; drop --transform")
    if not choice.random_weights and initialised_at_random(loaded, choice.num_classes):
        raise SpecError(
            f"model {choice.spec} would be profiled with random weights (no --weights given, and the model is "
            "initialised differently on every build); pass --weights FILE (a state dict) or a torchvision weights "
            "name such as DEFAULT, or --random-weights [--seed N] to profile an untrained model on purpose"
        )
    transform, said, notes = choose_transform(choice, loaded, source)
    probe(loaded, transform, source)  # before anything is written
    layout = _layout(loaded, choice)
    if choice.stats is not None:  # checked against the model's filters before anything is written
        reference_stats(choice.stats, layout)
        if (choice.normalisation or "zscore") != "zscore" or (choice.aggregate or DEFAULT_AGGREGATE) != "mean_abs":
            raise SpecError(f"--stats reference:{choice.stats} are zscore statistics of mean_abs profiles; "
                            "drop --normalisation / --aggregate")
    manifest = Manifest(model=model_record(loaded, transform, choice.num_classes, choice.aggregate or DEFAULT_AGGREGATE, said),
                        units=layout.to_dict(), feature_dim=feature_dim(loaded, transform, layout),
                        normalisation=None if choice.normalisation in (None, "zscore") else choice.normalisation,
                        profile_dtype=None if choice.profile_dtype in (None, DEFAULT_PROFILE_DTYPE) else choice.profile_dtype)
    notes += name_classes(manifest, loaded, source, choice.classes, getattr(transform, "task", None))
    return manifest, loaded, transform, notes


def choose_transform(choice: ModelChoice, loaded: LoadedModel, source: Source) -> tuple[Any, str, list[str]]:
    """The input transform of a new database, where it comes from (``ModelRecord.transform_source``) and
    what to tell the user: --transform; else with --stats reference:NAME the preprocessing those statistics
    were computed with; else the one of the weights actually loaded (or a stated guess); else the data's."""
    notes: list[str] = []
    if choice.stats is not None:
        notes += _stats_weights_notes(choice, loaded)
    reference = Transform.preset("imagenet")
    if choice.transform is not None:
        transform = Transform.parse(choice.transform)
        if choice.stats is not None and transform != reference:
            notes.append(f"the reference:{choice.stats} statistics were computed on inputs resized to 256, centre-cropped "
                         f"to 224 and normalised with ImageNet's mean and std; --transform {choice.transform} gives the "
                         "model other inputs, standardised with those statistics all the same")
        return transform, "given with --transform", notes
    if choice.stats is not None:
        return reference, (f"the preprocessing the reference:{choice.stats} statistics were computed with (resize 256, "
                           "centre crop 224, ImageNet mean and std)"), notes
    if loaded.default_transform is not None:
        said = loaded.transform_source or "the model's own"
        if said.startswith("a guess"):
            notes.append(f"the input transform ({loaded.default_transform.to_spec()}) is {said}")
        return loaded.default_transform, said, notes
    if source.default_transform is None:
        raise SpecError("no input transform is known for this model and data; pass --transform (e.g. imagenet, mnist or "
                        "resize=256,crop=224,...)")
    return source.default_transform, f"the data's default ({source.spec.partition(':')[0]}:)", notes


def _stats_weights_notes(choice: ModelChoice, loaded: LoadedModel) -> list[str]:
    """--stats reference:NAME were computed with torchvision's IMAGENET1K_V1 weights: other published weights
    are refused; random weights, or a local file that is not the published one, are said."""
    if loaded.weights and not os.path.isfile(loaded.weights) and not loaded.weights.endswith(".IMAGENET1K_V1"):
        raise SpecError(f"--stats reference:{choice.stats} were computed with torchvision's IMAGENET1K_V1 weights, not "
                        f"{loaded.weights}; pass --weights IMAGENET1K_V1 (or a copy of that file), or drop --stats to "
                        "compute statistics of these weights")
    if "IMAGENET1K_V1" in (loaded.weights or "") and "IMAGENET1K_V1" in (loaded.transform_source or ""):
        return []
    what = "random weights" if loaded.random_seed is not None else (loaded.weights or f"the weights {loaded.spec} builds")
    return [f"--stats reference:{choice.stats} were computed with torchvision's IMAGENET1K_V1 weights, not {what}: "
            "its profiles are standardised with another model's statistics"]


def check_modality(model: LoadedModel, source: Source, what: str) -> None:
    """A text model given images, or an image model given sentences: refused before anything runs."""
    if model.modality != source.modality:
        fix = ("give it sentences: jsonl:PATH, or csv:PATH with text,label columns" if model.modality == "text"
               else "give it images (imagefolder:, csv: with path,label, torchvision:, builtin:, hf:), or a text model")
        raise SpecError(f"{what} reads {model.modality} but data '{source.spec}' holds {source.modality}; {fix}")


def _layout(loaded: LoadedModel, choice: ModelChoice) -> UnitLayout:
    """The units of a new database: ``--units`` (auto) and ``--linear-units`` (out)."""
    layout = UnitLayout.from_module(loaded.module, choice.units or "auto", choice.linear_units or "out")
    if not layout.layers:
        raise SpecError(f"model {choice.spec} has no {'convolution or linear' if choice.units in (None, 'auto', 'all') else choice.units} "
                        "weights to profile; saliencydb profiles Conv2d filters and nn.Linear (or attention projection) units")
    return layout


def name_classes(manifest: Manifest, loaded: LoadedModel, source: Source, classes: list[str] | None,
                 task: str | None = None) -> list[str]:
    """Name the classes of a new database: --classes; else the model's own names (``models.names``), which
    data labels given as names are matched to (ImageNet synset folders through the synsets' class order);
    else the data's names. Returns the notes to say: an assumed order, labels the model does not have."""
    if classes is not None:
        if len(classes) != loaded.num_classes:
            raise SpecError(f"--classes names {len(classes)} classes, but the model has {loaded.num_classes}; "
                            "give one name per class, in the model's order")
        manifest.model.class_names = list(classes)
        return []
    data = list(source.class_names or [])
    model = manifest.model.class_names
    imagenet = loaded.num_classes == IMAGENET_CLASSES and bool(data) and set(data) <= set(imagenet_synsets())
    if model is None and imagenet and source.labels_are_names:  # ImageNet folders of a 1000-class model without names
        manifest.model.class_names = list(imagenet_synsets())
        return []
    if model is None:
        if data and len(data) == loaded.num_classes:
            manifest.model.class_names = data
            if source.labels_are_names and not getattr(source, "whole_numbers", False):
                shown = ", ".join(f"{n} = {i}" for i, n in enumerate(data[:4])) + (", ..." if len(data) > 4 else "")
                return [f"the model names no classes: the data's {len(data)} label names, sorted, are taken as its class "
                        f"indices ({shown}); pass --classes FILE (one name per line, in the model's order) if it differs"]
        elif (data and source.labels_are_names and not getattr(source, "whole_numbers", False)
              and not set(data) <= set(manifest.class_names)):  # "3", "7" are the classes 3 and 7 of a model without names
            raise SpecError(f"the model names none of its {loaded.num_classes} classes and the data names {len(data)} "
                            f"({', '.join(data[:4])}{', ...' if len(data) > 4 else ''}), so their order is unknown; pass "
                            "--classes FILE (one name per line, in the model's class order), or give class indices")
        return []
    if task == "masked-lm" or not source.labels_are_names or set(data) <= set(model):
        return []
    if getattr(source, "whole_numbers", False):
        return []  # whole numbers that are not the model's names are its class indices (label_mapping)
    if imagenet:
        manifest.model.label_names = list(imagenet_synsets())  # ImageNet folders: n01440764 is class 0, ...
        return []
    return [_unknown_labels(data, model)]


def _unknown_labels(data: list[str], model: list[str]) -> str:
    """The note for data labels the model does not have (their samples fail), or a refusal when none is its."""
    unknown = [n for n in data if n not in set(model)]
    show = lambda names: ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")  # noqa: E731
    if len(unknown) == len(data):
        raise SpecError(f"none of the data's labels ({show(data)}) is a class of the model ({show(model)}); name the "
                        "labels as the model does, give class indices (0, 1, ...), or pass --classes FILE to rename "
                        "the model's classes")
    return (f"{len(unknown)} of the data's labels are not classes of the model ({show(unknown)}); their samples are "
            "recorded as failures")


def _recreate(db: Path, manifest: Manifest, operation: str, wait: bool) -> DatabaseWriter:
    """The writer of a database that never committed a sample, made anew with ``manifest``."""
    writer = DatabaseWriter(db, wait=wait, operation=operation)
    if writer.manifest.rows() or writer.manifest.pending:  # another job committed samples meanwhile
        writer.close()
        raise DatabaseError(f"database '{db}' received samples while this job started; rerun it")
    manifest.commit, manifest.created = writer.manifest.commit, writer.manifest.created
    manifest.next_sample_id = writer.manifest.next_sample_id
    writer.manifest = manifest
    return writer


def plan_job(writer: DatabaseWriter, source: Source, data: str, split: str, limit: int | None,
             replace: bool) -> Plan:
    """List what is left to do on ``split`` and record the split (or its pending replacement) in the
    writer's manifest. Builds only on an intact version (the parts a --replace swaps out may be
    the damaged ones)."""
    m = writer.manifest
    known = m.splits.get(split)
    replaced = set(m.part_files(split)) if replace else set()
    writer.require_intact(ignore=lambda rel: rel in replaced)
    if replace:
        if known is None:
            raise SpecError(f"--replace: the database has no split '{split}' (it has {', '.join(sorted(m.splits)) or 'none'}); drop --replace to add it")
        pending = m.pending.setdefault(split, PendingReplace(source=data))
        if pending.source != data:
            raise SpecError(f"a replacement of '{split}' from {pending.source} is unfinished; rerun it, or replace with that source first")
        done = committed_keys(writer.path, m, files=[p.file for p in pending.parts])
    else:
        if split in m.pending:
            raise SpecError(f"split '{split}' is being replaced; finish with `--replace` first")
        if known is not None and known.source != data:
            raise SpecError(f"split '{split}' already holds {known.source}; choose another --split name, or pass --replace")
        done = committed_keys(writer.path, m, split) if known else set()
        m.splits.setdefault(split, SplitEntry(source=data, rows=0, complete=False))
    todo = [i for i in range(len(source)) if source.key(i) not in done]
    skipped = len(source) - len(todo)
    if limit is not None:
        todo = todo[: max(0, limit - len(done))]
    is_reference = m.stats is None or (not m.stats.frozen and split in m.stats.splits)
    return Plan(split=split, data=data, source=source, todo=todo, done=len(done), skipped=skipped, is_reference=is_reference,
                replace=replace)


def feature_dim(model: LoadedModel, transform: Transform, layout: UnitLayout | None = None) -> int:
    """The width of the feature vector: the input of the model's last linear layer."""
    if model.scripted:
        return 0  # compiled graphs take no hooks: no feature vector
    linears = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]
    if linears:
        return linears[-1].in_features
    shape = transform.input_shape
    if shape is None:
        raise ModelError("the model has no nn.Linear layer and the transform has no fixed input size; cannot size the feature vector")
    with torch.no_grad():
        out = ProfileEngine(model.module, layout=layout).profile(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    return out.feature.shape[1]


def read_class_names(path: str | os.PathLike) -> list[str]:
    """``--classes FILE``: one class name per line, in the model's class order (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"--classes {path}: cannot read it ({getattr(e, 'strerror', None) or e}); give a UTF-8 text file "
                        "with one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise SpecError(f"--classes {path} is empty; give one class name per line, in the model's class order")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SpecError(f"--classes {path} names '{dup}' twice; class names must be distinct")
    return names


def probe(model: LoadedModel, transform: Transform, source: Source, tries: int = 8) -> None:
    """Run the model on the first readable sample, so that a model and data that cannot work
    together are refused in one line before a database is created."""
    x = None
    for i in range(min(tries, len(source))):
        try:
            x = transform(source.load(i))
            break
        except (DataError, SaliencyDBError, OSError, ValueError):
            continue
    if x is None:
        return  # the first samples are unreadable: they will be failures, with their reasons
    try:
        with torch.no_grad():
            logits = model.module(x[None])
    except Exception as e:  # the user's model may raise anything on the wrong input
        raise ModelError(
            f"the model fails on this data's first sample (input of shape {tuple(x.shape)} after the transform "
            f"{transform.to_dict()}): {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
            "pass the --transform the model expects (its size and channels: e.g. mnist, imagenet, or mode=L,size=28,...)"
        ) from None
    if logits.ndim != 2 or logits.shape[1] != model.num_classes:
        raise ModelError(f"the model returns outputs of shape {tuple(logits.shape)} for one sample, not (1, {model.num_classes}) "
                         "class scores; pass --num-classes or a classifier")


def label_mapping(source: Source, m: Manifest, transform: Any = None) -> tuple[np.ndarray, dict[int, str]] | None:
    """For a source that names its labels: the database class index of each of its names (-1 for
    a name the database does not know) and the failure reason of each unknown name. Names are
    matched to the names the database was created with (``label_names``) or to its classes; a
    masked-LM's target words through its tokenizer (one token each, ``data.text``); whole numbers
    of a text source, otherwise unknown, as class indices."""
    if not source.labels_are_names:
        return None
    names = list(source.class_names or [])
    lookup: dict[str, int] = {}
    for vocab in (m.class_names, m.model.label_names or []):
        lookup.update({n: i for i, n in enumerate(vocab)})
    if getattr(transform, "task", None) == "masked-lm":
        found = [transform.resolve_label(n, lookup) for n in names]
        mapping = np.array([-1 if i is None else i for i, _ in found], dtype=np.int64)
        return mapping, {k: why for k, (i, why) in enumerate(found) if i is None}
    if getattr(source, "whole_numbers", False) and not set(names) <= set(lookup):
        lookup = {n: int(n) for n in names if int(n) < m.model.num_classes}
    known = m.model.label_names or m.class_names
    shown = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
    mapping = np.array([lookup.get(n, -1) for n in names], dtype=np.int64)
    reasons = {i: f"label '{n}' is not one of the database's classes ({shown})" for i, n in enumerate(names) if n not in lookup}
    return mapping, reasons
