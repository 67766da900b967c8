"""The manifest: the one document that says what a database version holds.

This module is the format (fields and their checks); reading and writing it is the
``storage`` package's job. Every committed file is listed here; a file that is not listed
does not exist for readers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .tables import FORMAT_VERSION

MANIFEST = "manifest.json"
DERIVED_TABLES = ("knn", "clusters", "blame", "triage")  # computed from the samples and statistics of one version


@dataclass
class Manifest:
    model: dict
    units: dict  # UnitLayout.to_dict()
    feature_dim: int
    format_version: int = FORMAT_VERSION
    metric: str = "cosine"
    commit: int = 0
    created: str = ""
    updated: str = ""
    operation: str = ""  # the command that made this commit ("ingest val", "restore 12", ...)
    next_sample_id: int = 0
    splits: dict = field(default_factory=dict)  # name -> {"source", "rows", "complete"}
    parts: list = field(default_factory=list)  # {"file", "split", "rows", "min_id", "max_id"}
    stats: dict | None = None  # {"file", "splits": [...], "count": n, "frozen": bool}
    indexes: dict = field(default_factory=dict)  # space -> {"file", "kind", "built", "ntotal", "next_id"}
    tables: dict = field(default_factory=dict)  # name -> list of committed files (failures, ingests, knn, ...)
    pending: dict = field(default_factory=dict)  # split -> {"source", "parts"}: a --replace in progress, unseen by readers
    files: dict = field(default_factory=dict)  # every listed file -> {"bytes", "sha256"}
    derived: dict = field(default_factory=dict)  # derived table -> {"base_commit", "data"}: what it was computed from

    @property
    def n_units(self) -> int:
        return int(self.units["n_units"])

    @property
    def class_names(self) -> list[str]:
        """The model's class names, or "0", "1", ... when it has none."""
        return self.model["class_names"] or [str(i) for i in range(self.model["num_classes"])]

    @property
    def aggregate(self) -> str:
        """How a unit's gradient became its profile value: 'mean_abs' (the paper's) or 'rms'."""
        return self.model.get("aggregate", "mean_abs")  # databases made before the option: mean_abs

    def part_files(self, split: str | None = None) -> list[str]:
        return [p["file"] for p in self.parts if split is None or p["split"] == split]

    def rows(self, split: str | None = None) -> int:
        return sum(p["rows"] for p in self.parts if split is None or p["split"] == split)

    def listed_files(self) -> set[str]:
        """Every data file this version lists (pending parts included)."""
        files = {p["file"] for p in self.parts}
        files |= {p["file"] for pending in self.pending.values() for p in pending["parts"]}
        files |= {v["file"] for v in self.indexes.values()}
        if self.stats:
            files.add(self.stats["file"])
        for entries in self.tables.values():
            files |= set(entries)
        return files

    def data_version(self) -> str:
        """A fingerprint of what derived tables are computed from: the committed parts and the statistics."""
        key = json.dumps([sorted(self.part_files()), (self.stats or {}).get("file")])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def stale_derived(self) -> dict[str, int]:
        """Derived tables computed from other samples or statistics than this version's: name -> base commit."""
        now = self.data_version()
        return {name: rec["base_commit"] for name, rec in self.derived.items()
                if name in self.tables and rec.get("data") != now}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


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
