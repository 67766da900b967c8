"""Reading committed tables back: profiles in bounded chunks, statistics, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatabaseError
from ..schemas import Manifest


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed-size-list column as a (rows, width) float32 array (no Python objects)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width).astype(np.float32, copy=False)


def iter_part_batches(
    db: Path, files: list[str], columns: list[str], batch_rows: int = 4096
) -> Iterator[pa.RecordBatch]:
    """Record batches of the listed part files, ``batch_rows`` at most each."""
    for rel in files:
        try:
            pf = pq.ParquetFile(Path(db) / rel)
        except (OSError, pa.ArrowInvalid) as e:
            raise DatabaseError(f"committed file '{rel}' is unreadable ({e}); the database is damaged") from None
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def iter_profiles(
    db: Path, manifest: Manifest, column: str = "raw_profile", split: str | None = None, batch_rows: int = 4096,
    files: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, rows) chunks of a vector column, in committed order."""
    width = manifest.n_units if column == "raw_profile" else manifest.feature_dim
    for batch in iter_part_batches(db, files if files is not None else manifest.part_files(split), ["sample_id", column], batch_rows):
        ids = batch.column(0).to_numpy()
        yield ids, fixed_list_to_numpy(batch.column(1), width)


def read_stats(db: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Frozen (mean, std) per unit from units.parquet."""
    if manifest.stats is None:
        raise DatabaseError(f"database '{db}' has no standardisation statistics yet; finish indexing its first split")
    t = pq.read_table(Path(db) / manifest.stats["file"], columns=["mean", "std"])
    return t.column("mean").to_numpy(), t.column("std").to_numpy()


def committed_keys(db: Path, manifest: Manifest, split: str | None = None, files: list[str] | None = None) -> set[str]:
    """Keys of the committed samples of a split (or of the given part files)."""
    keys: set[str] = set()
    for batch in iter_part_batches(db, files if files is not None else manifest.part_files(split), ["key"], 65536):
        keys.update(batch.column(0).to_pylist())
    return keys
