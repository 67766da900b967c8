"""The single writer of a database: lock, part files, atomic manifest commits.

Protocol (DESIGN §3): a new file is written under a temporary name (ending in
``.tmp``, never ``.parquet``), flushed and fsynced, renamed to its final name, and only
then listed by an atomic replace of ``manifest.json``. A file that the manifest does
not list is an orphan of a crashed writer; the next writer deletes it on open.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatabaseError, LockedError
from ..schemas import MANIFEST, TMP_SUFFIX, Manifest, now_iso, read_manifest, write_manifest
from ..schemas.manifest import fsync_dir

LOCK = ".lock"
DATA_DIRS = ("samples", "units", "index", "failures", "ingests", "knn", "clusters", "interventions")


class DatabaseWriter:
    """Holds the writer lock of one database until ``close()`` (or the end of a ``with``)."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest | None = None, *, wait: bool = False):
        """Open ``path`` for writing; with ``manifest``, create the database if it does not exist."""
        self.path = Path(path)
        if manifest is not None and not (self.path / MANIFEST).exists():
            if self.path.exists() and any(self.path.iterdir()) and not (self.path / LOCK).exists():
                raise DatabaseError(f"'{self.path}' exists, is not empty and is not a saliencydb database; choose another --db")
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise DatabaseError(f"no database at '{self.path}': create one with `saliencydb index --db {self.path} ...`")
        self._lock_fd = self._acquire(wait)
        try:
            if (self.path / MANIFEST).exists():
                self.manifest = read_manifest(self.path)
            elif manifest is not None:
                manifest.created = now_iso()
                self.manifest = manifest
                write_manifest(self.path, manifest)
            else:
                raise DatabaseError(f"'{self.path}' is not a saliencydb database (no {MANIFEST})")
            self.remove_orphans()
        except BaseException:
            self.close()
            raise

    # -- lock -----------------------------------------------------------------------------
    def _acquire(self, wait: bool) -> int:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise LockedError(
                        f"database '{self.path}' is being written by another process (pid {holder}); "
                        "wait for it to finish, or pass --wait to queue behind it"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "DatabaseWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files ----------------------------------------------------------------------------
    def listed_files(self) -> set[str]:
        m = self.manifest
        files = {p["file"] for p in m.parts}
        files |= {p["file"] for pending in m.pending.values() for p in pending["parts"]}
        files |= {v["file"] for v in m.indexes.values()}
        if m.stats:
            files.add(m.stats["file"])
        for entries in m.tables.values():
            files |= set(entries)
        return files

    def remove_orphans(self) -> list[str]:
        """Delete temporary files and data files the manifest does not list."""
        listed = self.listed_files()
        removed = []
        for name in os.listdir(self.path):
            if name.endswith(TMP_SUFFIX):
                os.remove(self.path / name)
                removed.append(name)
        for d in DATA_DIRS:
            root = self.path / d
            if not root.is_dir():
                continue
            for dirpath, _, files in os.walk(root):
                for f in files:
                    rel = Path(dirpath, f).relative_to(self.path).as_posix()
                    if rel not in listed:
                        os.remove(Path(dirpath, f))
                        removed.append(rel)
        return removed

    def new_file(self, rel: str, write) -> str:
        """Create the file ``rel`` (relative to the database) through ``write(tmp_path)``."""
        return new_file(self.path, rel, write)

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        return write_parquet(self.path, rel, table)

    def write_parquet_table(self, name: str, table: pa.Table) -> str:
        """Add a part to the append-only table ``name`` (failures, ingests, ...); listed, not committed."""
        rel = self.write_parquet(self.unique_name(name, "part", ".parquet"), table)
        self.manifest.tables.setdefault(name, []).append(rel)
        return rel

    def unique_name(self, directory: str, stem: str, suffix: str) -> str:
        """``directory/stem-<commit>-<n>.suffix`` not yet taken."""
        n = 0
        while True:
            rel = f"{directory}/{stem}-{self.manifest.commit + 1:06d}-{n:03d}{suffix}"
            if not (self.path / rel).exists():
                return rel
            n += 1

    # -- commits --------------------------------------------------------------------------
    def commit(self) -> None:
        """Atomically publish the in-memory manifest."""
        self.manifest.commit += 1
        write_manifest(self.path, self.manifest)

    def drop_unlisted(self, files: list[str]) -> None:
        """After a commit, delete files that the new manifest no longer lists (replaced ones)."""
        listed = self.listed_files()
        for rel in files:
            if rel not in listed and (self.path / rel).exists():
                os.remove(self.path / rel)


def new_file(db: Path, rel: str, write) -> str:
    """Create ``db/rel`` through ``write(tmp_path)``: written under a temporary name, fsynced,
    renamed. Unlisted until a manifest lists it (a sharded job's ranks write parts this way,
    and the rank holding the lock lists them)."""
    final = db / rel
    if final.exists():
        raise DatabaseError(f"refusing to overwrite committed file '{rel}'")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return rel


def write_parquet(db: Path, rel: str, table: pa.Table) -> str:
    # row groups of about 8 MiB: a lookup of a few ids reads a few small groups
    row_bytes = max(1, table.nbytes // max(table.num_rows, 1))
    group = max(16, min(65536, (8 << 20) // row_bytes))
    return new_file(db, rel, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=group))
