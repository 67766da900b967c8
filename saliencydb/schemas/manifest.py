"""The manifest: the one file that says what a database holds.

Every committed file is listed here; a file that is not listed does not exist for
readers. The manifest is replaced atomically (write a temporary file, fsync, rename,
fsync the directory), so a crash at any point leaves the previous commit readable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import DatabaseError
from .tables import FORMAT_VERSION

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"  # temporary files never end in .parquet or .json


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
    next_sample_id: int = 0
    splits: dict = field(default_factory=dict)  # name -> {"source", "rows", "complete"}
    parts: list = field(default_factory=list)  # {"file", "split", "rows", "min_id", "max_id"}
    stats: dict | None = None  # {"splits": [...], "count": n, "frozen": bool}
    indexes: dict = field(default_factory=dict)  # space -> {"file", "kind", "ntotal", "commit"}
    tables: dict = field(default_factory=dict)  # name -> list of committed files (failures, ingests, knn, ...)
    pending: dict = field(default_factory=dict)  # split -> {"source", "parts"}: a --replace in progress, unseen by readers

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(db: str | os.PathLike) -> Manifest:
    """Read and check a database's manifest; one clear error for every way it can be wrong."""
    db = Path(db)
    path = db / MANIFEST
    if not db.exists():
        raise DatabaseError(f"no database at '{db}': create one with `saliencydb index --db {db} ...`")
    if not path.is_file():
        raise DatabaseError(f"'{db}' is not a saliencydb database (no {MANIFEST}); point --db at a database directory")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatabaseError(f"'{path}' is unreadable ({e}); restore it from a backup") from None
    version = d.get("format_version") if isinstance(d, dict) else None
    if not isinstance(version, int):
        raise DatabaseError(f"'{path}' has no format_version; it was not written by saliencydb")
    if version > FORMAT_VERSION:
        raise DatabaseError(
            f"'{db}' was written in database format {version}, newer than this saliencydb reads "
            f"(format {FORMAT_VERSION}); upgrade saliencydb"
        )
    try:
        return Manifest.from_dict(d)
    except TypeError as e:
        raise DatabaseError(f"'{path}' is missing fields ({e}); it is corrupt") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, whole."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(db: str | os.PathLike, manifest: Manifest) -> None:
    manifest.updated = now_iso()
    write_atomic(Path(db) / MANIFEST, manifest.to_json().encode())
