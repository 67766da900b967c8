"""The manifest: the one document that says what a database version holds.

This module is the format (fields and their checks); reading and writing it is the
``storage`` package's job. Every committed file is listed here; a file that is not listed
does not exist for readers.
"""

from __future__ import annotations

import hashlib
import json
import copy
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

from .profiles import DEFAULT_PROFILE_DTYPE, PROFILE_DTYPES
from .tables import FORMAT_VERSION

MANIFEST = "manifest.json"
DERIVED_TABLES = ("knn", "clusters", "blame", "triage")  # computed from the samples and statistics of one version


class Record:
    """An entry of the manifest: typed fields, read from and written to the JSON object that format 2
    stores, byte for byte. Keys are written in the order they were read (a record made in code: its
    field order); keys this version does not know are kept; ``OPTIONAL`` fields that are None and
    were never read are left out, as older manifests left them out."""

    OPTIONAL: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        rec = cls(**{k: _read_field(cls, k, v) for k, v in d.items() if k in known})
        rec._order = list(d)
        rec._extra = {k: v for k, v in d.items() if k not in known}
        return rec

    def __getitem__(self, key: str):
        """``entry["file"]``: the JSON key, for scripts written when entries were dicts."""
        doc = self.to_dict()
        return doc[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def to_dict(self) -> dict:
        order = getattr(self, "_order", None)
        extra = getattr(self, "_extra", {})
        names = [f.name for f in fields(self)]
        keys = list(order) if order is not None else [n for n in names if n not in self.OPTIONAL]
        keys += [n for n in names if n not in keys and getattr(self, n) is not None]
        return {k: _write_field(extra[k] if k in extra else getattr(self, k)) for k in keys}


def _read_field(cls, name: str, value):
    kind = _NESTED.get((cls.__name__, name))
    if kind is None or value is None:
        return value
    if kind == "parts":
        return [PartEntry.from_dict(v) for v in value]
    return kind.from_dict(value)


def _write_field(value):
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_write_field(v) for v in value]
    return value


@dataclass
class ModelRecord(Record):
    """The model a database was made with (``models.stored.model_record``)."""

    spec: str
    code_sha256: str | None = None  # a python: model's file
    weights: str | None = None  # a file (absolute path) or a torchvision weights name
    weights_sha256: str = ""
    num_classes: int = 0
    num_classes_arg: int | None = None  # --num-classes as given
    class_names: list[str] | None = None
    transform: dict = field(default_factory=dict)  # data.transforms.Transform.to_dict()
    scripted: bool = False
    aggregate: str | None = None  # absent in databases made before the option: mean_abs
    label_names: list[str] | None = None  # the data's names of the classes, when they are not the model's (ImageNet synsets)
    transform_source: str | None = None  # where ``transform`` comes from (the weights' own, a stated guess, --transform, ...)
    random_seed: int | None = None  # --random-weights: the weights are re-drawn under this seed (no weights file)

    OPTIONAL = ("label_names", "transform_source", "random_seed")


@dataclass
class SplitEntry(Record):
    source: str  # the data spec
    rows: int
    complete: bool  # every sample of the source is in


@dataclass
class PartEntry(Record):
    """A committed Parquet part of the samples table."""

    file: str
    split: str
    rows: int
    min_id: int
    max_id: int


@dataclass
class StatsEntry(Record):
    """The standardisation statistics: the units table's file, the splits they are computed over."""

    file: str
    splits: list[str]
    count: int
    frozen: bool
    source: str | None = None  # reference:NAME: shipped with the package, not computed here (absent: computed)

    OPTIONAL = ("source",)


@dataclass
class IndexEntry(Record):
    """A FAISS index of one space."""

    file: str
    kind: str  # as asked (auto, flat, ivf, ivfpq, ivf-sq8)
    built: str | None = None  # as built (auto: flat or ivf-sq8 by size; too few rows to train the asked kind: flat)
    ntotal: int = 0
    next_id: int | None = None  # the first sample id it does not cover
    # an approximate (IVF) index only, measured when it was built or extended (storage.indexes.RecallProbe):
    recall_at_10: float | None = None  # single queries: its top ``rerank`` candidates re-ranked exactly, against exact search
    graph_recall_at_10: float | None = None  # its own top 10 (the dataset-wide neighbour graph), against exact search
    recall_queries: int | None = None  # the stored rows (fixed seed) both are measured on
    nprobe: int | None = None  # inverted lists probed per query
    rerank: int | None = None  # candidates a single query re-ranks by the exact profiles

    OPTIONAL = ("recall_at_10", "graph_recall_at_10", "recall_queries", "nprobe", "rerank")

    @property
    def built_kind(self) -> str:
        return self.built or self.kind

    @property
    def approximate(self) -> bool:
        return self.built_kind != "flat"

    def describe(self) -> str:
        """One line: 'flat, exact', or the approximate kind with its measured recall@10."""
        if not self.approximate:
            return f"{self.built_kind}, exact" + (f" (asked: {self.kind})" if self.kind != self.built_kind else "")
        if self.recall_at_10 is None:
            return f"{self.built_kind}, approximate, recall@10 not measured (built before it was)"
        reranked = self.rerank is not None and self.rerank > 10
        return (f"{self.built_kind}, approximate, recall@10 {self.recall_at_10:.3f} on {self.recall_queries} samples "
                f"(nprobe {self.nprobe}" + (f", its {self.rerank} best candidates re-ranked exactly; the neighbour "
                                            f"graph's own top 10: {self.graph_recall_at_10:.3f})" if reranked else ")"))


@dataclass
class PendingReplace(Record):
    """A --replace in progress: its parts, unseen by readers until it is swapped in."""

    source: str
    parts: list[PartEntry] = field(default_factory=list)


@dataclass
class FileRecord(Record):
    bytes: int | None = None
    sha256: str | None = None


@dataclass
class DerivedBase(Record):
    """What a derived table was computed from: the commit, and the fingerprint of its samples and statistics."""

    base_commit: int | None = None
    data: str | None = None


_NESTED = {("PendingReplace", "parts"): "parts"}


@dataclass
class Manifest:
    """What one version of a database holds (docs/database-format.md documents each key)."""

    model: ModelRecord
    units: dict  # saliency.UnitLayout.to_dict(): the unit kind, the layers and their offsets
    feature_dim: int
    format_version: int = FORMAT_VERSION
    metric: str = "cosine"
    commit: int = 0
    created: str = ""
    updated: str = ""
    operation: str = ""  # the command that made this commit ("ingest val", "restore 12", ...)
    next_sample_id: int = 0
    splits: dict[str, SplitEntry] = field(default_factory=dict)
    parts: list[PartEntry] = field(default_factory=list)
    stats: StatsEntry | None = None
    indexes: dict[str, IndexEntry] = field(default_factory=dict)  # "saliency", "feature"
    tables: dict[str, list[str]] = field(default_factory=dict)  # name -> committed files (failures, ingests, knn, ...)
    pending: dict[str, PendingReplace] = field(default_factory=dict)  # split -> its unfinished --replace
    files: dict[str, FileRecord] = field(default_factory=dict)  # every listed file -> its size and checksum
    derived: dict[str, DerivedBase] = field(default_factory=dict)  # derived table -> what it was computed from
    # the profile normalisation the statistics and the saliency index use (saliency.normalise);
    # absent (None): zscore, the paper's, and the only one before the option
    normalisation: str | None = None
    # how raw profiles are stored (schemas.profiles): float16 scaled per row, fixed when the database is
    # created; absent (None): float32, the only one before the option
    profile_dtype: str | None = None

    OPTIONAL = ("normalisation", "profile_dtype")

    @property
    def n_units(self) -> int:
        return int(self.units["n_units"])

    @property
    def class_names(self) -> list[str]:
        """The model's class names, or "0", "1", ... when it has none."""
        return self.model.class_names or [str(i) for i in range(self.model.num_classes)]

    @property
    def aggregate(self) -> str:
        """How a unit's gradient became its profile value: 'mean_abs' (the paper's) or 'rms'."""
        return self.model.aggregate or "mean_abs"  # databases made before the option: mean_abs

    @property
    def has_features(self) -> bool:
        """Whether the samples carry a feature vector (the input of the model's last linear layer): a
        TorchScript model takes no hooks, so its database has no feature column and no feature index."""
        return self.feature_dim > 0

    @property
    def no_features_reason(self) -> str:
        """Why the samples carry no feature vector, in words."""
        return "its model, a TorchScript file, takes no hooks" if self.model.scripted else "its model has no feature vector"

    def part_files(self, split: str | None = None) -> list[str]:
        return [p.file for p in self.parts if split is None or p.split == split]

    def rows(self, split: str | None = None) -> int:
        return sum(p.rows for p in self.parts if split is None or p.split == split)

    def listed_files(self) -> set[str]:
        """Every data file this version lists (pending parts included)."""
        files = {p.file for p in self.parts}
        files |= {p.file for pending in self.pending.values() for p in pending.parts}
        files |= {v.file for v in self.indexes.values()}
        if self.stats:
            files.add(self.stats.file)
        for entries in self.tables.values():
            files |= set(entries)
        return files

    def data_version(self) -> str:
        """A fingerprint of what derived tables are computed from: the committed parts and the statistics."""
        key = json.dumps([sorted(self.part_files()), self.stats.file if self.stats else None])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def stale_derived(self) -> dict[str, int]:
        """Derived tables computed from other samples or statistics than this version's: name -> base commit."""
        now = self.data_version()
        return {name: rec.base_commit for name, rec in self.derived.items()
                if name in self.tables and rec.data != now}

    @property
    def profile_normalisation(self) -> str:
        return self.normalisation or "zscore"

    @property
    def stored_profile_dtype(self) -> str:
        """How the samples' raw profiles are stored: 'float32', or 'float16' scaled per row (schemas.profiles)."""
        return self.profile_dtype or DEFAULT_PROFILE_DTYPE

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self.OPTIONAL and v is None:
                continue
            if isinstance(v, dict):
                v = {k: _write_field(x) for k, x in v.items()}
            out[f.name] = _write_field(v)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        m = cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in known})
        m.model = m.model if isinstance(m.model, ModelRecord) else ModelRecord.from_dict(m.model)
        m.splits = {k: SplitEntry.from_dict(v) for k, v in m.splits.items()}
        m.parts = [PartEntry.from_dict(v) for v in m.parts]
        m.stats = None if m.stats is None else StatsEntry.from_dict(m.stats)
        m.indexes = {k: IndexEntry.from_dict(v) for k, v in m.indexes.items()}
        m.pending = {k: PendingReplace.from_dict(v) for k, v in m.pending.items()}
        m.files = {k: FileRecord.from_dict(v) for k, v in m.files.items()}
        m.derived = {k: DerivedBase.from_dict(v) for k, v in m.derived.items()}
        return m


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_problem(d) -> str | None:
    """What makes a parsed manifest unusable (a hand edit, a partial copy), or None."""
    if not isinstance(d, dict):
        return "it is not a JSON object"
    need = {"model": dict, "units": dict, "feature_dim": int, "commit": int, "next_sample_id": int, "splits": dict,
            "parts": list, "indexes": dict, "tables": dict}
    for key, kind in need.items():
        if key not in d:
            return f"it has no '{key}'"
        if not isinstance(d[key], kind) or (kind is int and isinstance(d[key], bool)):
            return f"'{key}' is not a {kind.__name__}"
    for key in ("spec", "weights_sha256", "num_classes", "transform"):
        if key not in d["model"]:
            return f"'model' has no '{key}'"
    if not isinstance(d["units"].get("n_units"), int) or not isinstance(d["units"].get("layers"), list):
        return "'units' has no 'n_units' or 'layers'"
    for i, p in enumerate(d["parts"]):
        bad = _entry_problem(p, {"file": str, "split": str, "rows": int, "min_id": int, "max_id": int})
        if bad:
            return f"parts[{i}] {bad}"
        if p["split"] not in d["splits"]:
            return f"parts[{i}] names split '{p['split']}', which 'splits' does not list"
    for name, s in d["splits"].items():
        bad = _entry_problem(s, {"source": str, "rows": int, "complete": bool})
        if bad:
            return f"splits['{name}'] {bad}"
    if d.get("stats") is not None:
        bad = _entry_problem(d["stats"], {"file": str, "splits": list, "count": int, "frozen": bool})
        if bad:
            return f"'stats' {bad}"
    for space, e in d["indexes"].items():
        bad = _entry_problem(e, {"file": str, "kind": str, "ntotal": int})
        if bad:
            return f"indexes['{space}'] {bad}"
    for name, files in d["tables"].items():
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return f"tables['{name}'] is not a list of files"
    for split, pend in d.get("pending", {}).items():
        if not isinstance(pend, dict) or not isinstance(pend.get("parts"), list):
            return f"pending['{split}'] has no 'parts'"
        for i, p in enumerate(pend["parts"]):
            bad = _entry_problem(p, {"file": str, "split": str, "rows": int, "min_id": int, "max_id": int})
            if bad:
                return f"pending['{split}'].parts[{i}] {bad}"
    if "normalisation" in d and not isinstance(d["normalisation"], str):
        return "'normalisation' is not a string"
    if "profile_dtype" in d and d["profile_dtype"] not in PROFILE_DTYPES:
        return f"'profile_dtype' is not one of {', '.join(PROFILE_DTYPES)}"
    for key in ("files", "derived"):
        if not isinstance(d.get(key, {}), dict):
            return f"'{key}' is not an object"
    for rel in Manifest.from_dict(d).listed_files():
        if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
            return f"it lists '{rel}', which is outside the database directory"
    return None


def _entry_problem(e, fields: dict) -> str | None:
    if not isinstance(e, dict):
        return "is not an object"
    for key, kind in fields.items():
        v = e.get(key)
        if v is None or not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            return f"has no {kind.__name__} '{key}'"
    return None
