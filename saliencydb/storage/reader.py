"""Reading one version of a database: a pinned ``Snapshot`` and the readers of its files.

A snapshot pins the version it opened (``versions.Pin``), so a concurrent writer or
``vacuum`` never deletes what it reads, and checks at a glance (existence and size) that
every file the version lists is there. Any file that fails to read later is named in one
line that points to ``saliencydb verify``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatabaseError
from ..schemas import PROFILE_EXP, Manifest, decode_profiles
from .files import damaged, find_damage
from .versions import pin_version, removed_since


class Snapshot:
    """One version of a database, pinned until ``close()``."""

    def __init__(self, path: str | os.PathLike, as_of: int | None = None, *, check: bool = True):
        self.path = Path(path)
        self.manifest, self._pin = pin_version(self.path, as_of)
        if check:
            pending = {p.file for v in self.manifest.pending.values() for p in v.parts}  # unseen by readers
            for rel, problem in find_damage(self.path, self.manifest, self.manifest.listed_files() - pending)[:1]:
                self.close()
                raise removed_since(self.path, self.commit) or damaged(self.path, rel, problem)

    @property
    def commit(self) -> int:
        return self.manifest.commit

    @property
    def pinned(self) -> bool:
        return self._pin.held

    def close(self) -> None:
        self._pin.release()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tables ---------------------------------------------------------------------------
    def dataset(self, files: list[str], schema: pa.Schema):
        """The listed Parquet files as one lazily scanned Arrow dataset (for DuckDB)."""
        import pyarrow.dataset as ds

        try:
            return ds.dataset([str(self.path / f) for f in files], schema=schema, format="parquet")
        except (OSError, pa.ArrowInvalid) as e:
            raise _unreadable(self.path, files, e) from None

    def read_table(self, rel: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        try:
            return pq.read_table(self.path / rel, columns=columns, filters=filters)
        except (OSError, pa.ArrowInvalid) as e:
            raise damaged(self.path, rel, f"unreadable: {_first_line(e)}") from None

    def iter_part_batches(self, files: list[str], columns: list[str], batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
        return iter_part_batches(self.path, files, columns, batch_rows)

    def iter_profiles(self, column: str = "raw_profile", split: str | None = None, batch_rows: int = 4096,
                      files: list[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return iter_profiles(self.path, self.manifest, column, split, batch_rows, files)

    def iter_raw_profiles(self, split: str | None = None, batch_rows: int = 4096,
                          files: list[str] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return iter_raw_profiles(self.path, self.manifest, split, batch_rows, files)

    def read_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return read_stats(self.path, self.manifest)

    def read_index(self, space: str, *, mapped: bool = False):
        """The FAISS index of ``space``; ``mapped``: its vectors or codes memory-mapped, not read
        (``IO_FLAG_MMAP_IFC``: only the pages a search touches are read; FAISS 1.15 maps a flat index's
        vectors and an IVF index's array inverted lists, so a query reads only the lists it probes)."""
        entry = self.manifest.indexes.get(space)
        if space == "feature" and not self.manifest.has_features:
            raise no_features(self.path, self.manifest)
        if entry is None:
            raise DatabaseError(f"database '{self.path}' has no {space} index; finish `saliencydb index` first")
        return read_index(self.path, entry.file, mapped=mapped)


def no_features(db: Path, manifest: Manifest) -> DatabaseError:
    """The one-line refusal of a feature-space read in a database whose samples carry no feature vector."""
    return DatabaseError(f"database '{db}' has no feature vectors ({manifest.no_features_reason}); use the saliency space")


VECTOR_BATCH_BYTES = 64 << 20  # float32 vectors per batch of a dataset-wide pass (``batch_rows_for``)


def batch_rows_for(width: int, batch_bytes: int = VECTOR_BATCH_BYTES) -> int:
    """Rows per batch so a batch of ``width`` float32 values a row holds about ``batch_bytes`` (64 to 4096
    rows): a pass over every profile then holds a batch and its float64 temporaries, whatever the width."""
    return int(min(4096, max(64, batch_bytes // max(1, 4 * width))))


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed-size-list column as a (rows, width) float32 array (no Python objects)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width).astype(np.float32, copy=False)


def profile_columns(manifest: Manifest) -> list[str]:
    """The samples columns a raw profile is read from: ``raw_profile``, and ``profile_exp`` in a float16 database."""
    return ["raw_profile", PROFILE_EXP] if manifest.stored_profile_dtype == "float16" else ["raw_profile"]


def profiles_to_numpy(data: pa.Table | pa.RecordBatch, width: int) -> np.ndarray:
    """The true raw profiles (rows, width), float32, of a table or batch read with ``profile_columns``:
    a float16 part's ``raw_profile * 2**-profile_exp`` decoded (schemas.profiles), a float32 part's as stored."""
    rows = fixed_list_to_numpy(data.column("raw_profile"), width)
    if PROFILE_EXP not in data.schema.names:
        return rows
    exp = data.column(PROFILE_EXP)
    exp = exp.to_numpy() if isinstance(exp, pa.ChunkedArray) else exp.to_numpy(zero_copy_only=False)
    return decode_profiles(rows, exp)


def iter_part_batches(db: Path, files: list[str], columns: list[str], batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    """Record batches of the listed part files, ``batch_rows`` at most each."""
    for rel in files:
        try:
            pf = pq.ParquetFile(Path(db) / rel)
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise damaged(Path(db), rel, f"unreadable: {_first_line(e)}") from None


def iter_profiles(
    db: Path, manifest: Manifest, column: str = "raw_profile", split: str | None = None, batch_rows: int = 4096,
    files: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, rows) chunks of a vector column, in committed order, float32 (raw profiles decoded)."""
    if column == "feature" and not manifest.has_features:
        raise no_features(Path(db), manifest)
    width = manifest.n_units if column == "raw_profile" else manifest.feature_dim
    columns = ["sample_id"] + (profile_columns(manifest) if column == "raw_profile" else [column])
    for batch in iter_part_batches(db, files if files is not None else manifest.part_files(split), columns, batch_rows):
        ids = batch.column(0).to_numpy()
        yield ids, profiles_to_numpy(batch, width) if column == "raw_profile" else fixed_list_to_numpy(batch.column(1), width)


def iter_raw_profiles(
    db: Path, manifest: Manifest, split: str | None = None, batch_rows: int = 4096, files: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sample_ids, raw profiles, dlogit norms) chunks in committed order; the profiles are the true float32
    values (a float16 database's decoded); a dlogit norm is NaN in parts written before the column was stored."""
    for rel in files if files is not None else manifest.part_files(split):
        try:
            has = "dlogit_norm" in pq.ParquetFile(Path(db) / rel).schema_arrow.names
        except (OSError, pa.ArrowInvalid) as e:
            raise damaged(Path(db), rel, f"unreadable: {_first_line(e)}") from None
        columns = ["sample_id", *profile_columns(manifest)] + (["dlogit_norm"] if has else [])
        for batch in iter_part_batches(db, [rel], columns, batch_rows):
            ids = batch.column(0).to_numpy()
            dlogit = (batch.column("dlogit_norm").to_numpy(zero_copy_only=False).astype(np.float64) if has
                      else np.full(len(ids), np.nan))
            yield ids, profiles_to_numpy(batch, manifest.n_units), dlogit


def read_stats(db: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Frozen (mean, std) per unit from the units table."""
    if manifest.stats is None:
        raise DatabaseError(f"database '{db}' has no standardisation statistics yet; finish indexing its first split")
    rel = manifest.stats.file
    try:
        t = pq.read_table(Path(db) / rel, columns=["mean", "std"])
    except (OSError, pa.ArrowInvalid) as e:
        raise damaged(Path(db), rel, f"unreadable: {_first_line(e)}") from None
    if t.num_rows != manifest.n_units:
        raise damaged(Path(db), rel, f"{t.num_rows} rows for {manifest.n_units} units")
    return t.column("mean").to_numpy(), t.column("std").to_numpy()


def committed_keys(db: Path, manifest: Manifest, split: str | None = None, files: list[str] | None = None) -> set[str]:
    """Keys of the committed samples of a split (or of the given part files)."""
    keys: set[str] = set()
    for batch in iter_part_batches(db, files if files is not None else manifest.part_files(split), ["key"], 65536):
        keys.update(batch.column(0).to_pylist())
    return keys


def read_index(db: Path, rel: str, *, mapped: bool = False):
    """A committed FAISS index; ``mapped``: its vectors (flat) or inverted lists (IVF) memory-mapped, read-only."""
    import faiss

    try:
        return faiss.read_index(str(Path(db) / rel), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
    except RuntimeError as e:
        raise damaged(Path(db), rel, f"unreadable index: {_first_line(e)}") from None


def write_index(index, path: Path) -> None:
    import faiss

    if "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as e:  # FAISS reports a failed fwrite (a full disk) as a RuntimeError
        import shutil

        full = "No space" in str(e) or shutil.disk_usage(path.parent).free < (1 << 20)
        raise OSError(28 if full else 5, _first_line(e)) from None


def _unreadable(db: Path, files: list[str], e: Exception) -> DatabaseError:
    text = str(e)
    for rel in files:
        if str(Path(db) / rel) in text:
            return damaged(db, rel, f"unreadable: {_first_line(e)}")
    return DatabaseError(f"a committed file of '{db}' is unreadable ({_first_line(e)}); run `saliencydb verify --db {db}`")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
