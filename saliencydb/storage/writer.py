"""The single writer of a database: lock, new files, atomic versioned commits, crash sweeps.

Protocol (docs/database-format.md): a new file is written under a temporary name,
fsynced and renamed (``files.new_file``), and only then listed by a commit, which writes the
immutable ``versions/manifest-<commit>.json`` and replaces ``manifest.json``. A writer never
deletes a file that a kept version lists; on open it deletes only crash leftovers: temporary
files, version files that never became current, and data files that no kept version lists.
Replaced files stay until ``vacuum``. A writer never follows a symbolic link out of the
database: on open it refuses a link anywhere inside it (the database's own path may be one).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa

from ..errors import DatabaseError, LockedError, StaleError
from ..schemas.manifest import DerivedBase
from ..schemas import DERIVED_TABLES, MANIFEST, TABLE_SCHEMAS, Manifest, now_iso
from .files import (TMP_SUFFIX, damaged, file_record, find_damage, is_disk_full, is_read_only, link_error, new_file,
                    refuse_link, walk_files, write_atomic, write_error, write_parquet)
from .versions import PINS, VERSIONS, list_versions, read_current, read_version, version_rel, write_commit

LOCK = ".lock"
# the directories whose files are listed by versions; everything else in DB/ (report.html, pins) is not swept
DATA_DIRS = ("samples", "units", "index") + tuple(TABLE_SCHEMAS)


class DatabaseWriter:
    """Holds the writer lock of one database until ``close()`` (or the end of a ``with``)."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest | None = None, *, wait: bool = False,
                 operation: str = "", recover: bool = False):
        """Open ``path`` for writing; with ``manifest``, create the database if it does not exist.
        With ``recover`` (``restore``), a broken ``manifest.json`` is replaced by the newest kept version."""
        self.path = Path(path)
        self.operation = operation
        self._lock_fd = None
        if manifest is not None and not (self.path / MANIFEST).exists():
            if self.path.exists() and any(n not in (LOCK, PINS, VERSIONS) for n in os.listdir(self.path)):
                raise DatabaseError(f"'{self.path}' exists, is not empty and is not a saliencydb database; choose another --db")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(self.path, e, None) from None
        elif not self.path.is_dir():
            raise DatabaseError(f"no database at '{self.path}': create one with `saliencydb index --db {self.path} ...`")
        self._lock_fd = self._acquire(wait)
        try:
            if (self.path / MANIFEST).exists() or (recover and list_versions(self.path)):
                self.manifest = self._read_current(recover)
                self.committed = self.manifest.commit
                self._sweep()
            elif manifest is not None:
                manifest.created = now_iso()
                manifest.operation = operation or "create"
                self.manifest = manifest
                self.committed = None
                self._sweep()
                self._publish()
            else:
                raise DatabaseError(f"'{self.path}' is not a saliencydb database (no {MANIFEST})")
        except BaseException as e:
            self.close()
            if isinstance(e, OSError) and (is_disk_full(e) or is_read_only(e)):
                raise write_error(self.path, e, getattr(self, "committed", None)) from None
            raise

    def _read_current(self, recover: bool) -> Manifest:
        try:
            return read_current(self.path)
        except DatabaseError:
            if not recover:
                raise
            for commit in reversed(list_versions(self.path)):
                try:
                    m = read_version(self.path, commit)
                except DatabaseError:
                    continue
                if m is not None:
                    return m
            raise

    # -- lock -----------------------------------------------------------------------------
    def _acquire(self, wait: bool) -> int:
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise link_error(self.path, LOCK) from None
            if is_read_only(e):
                raise write_error(self.path, e, None) from None
            raise
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for the "locked" message
        return fd

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "DatabaseWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc is not None and (is_disk_full(exc) or is_read_only(exc)):
            raise write_error(self.path, exc, self.committed) from None

    # -- files ----------------------------------------------------------------------------
    def listed_files(self) -> set[str]:
        return self.manifest.listed_files()

    def kept_files(self) -> set[str]:
        """Files listed by any kept version or by the in-memory manifest: never deleted by a writer."""
        files = self.listed_files()
        for commit in list_versions(self.path):
            m = read_version(self.path, commit)
            if m is not None:
                files |= m.listed_files()
        return files

    def data_files(self) -> list[str]:
        """Every file in the data folders (relative), once no symbolic link is found anywhere inside the
        database: a linked folder or file is refused in one line (``link_error``), before anything is deleted."""
        for name in (MANIFEST, VERSIONS, PINS):
            refuse_link(self.path, name)
        for name in (VERSIONS, PINS):
            for _ in walk_files(self.path, name):
                pass
        return [rel for d in DATA_DIRS for rel in walk_files(self.path, d)]

    def _sweep(self) -> list[str]:
        """Delete crash leftovers: temporary files, versions that never became current, unlisted data files."""
        data = self.data_files()
        removed = []
        for name in os.listdir(self.path):
            if name.endswith(TMP_SUFFIX) and not os.path.islink(self.path / name):
                os.remove(self.path / name)
                removed.append(name)
        current = self.manifest.commit if self.committed is not None else -1
        for commit in list_versions(self.path):
            if commit > current:  # written, never published
                os.remove(self.path / version_rel(commit))
                removed.append(version_rel(commit))
        for name in os.listdir(self.path / VERSIONS) if (self.path / VERSIONS).is_dir() else []:
            if name.endswith(TMP_SUFFIX):
                os.remove(self.path / VERSIONS / name)
        if self.committed is not None and read_version(self.path, current) is None:
            # a format-1 database (or one whose current version file is gone): keep its current version
            (self.path / VERSIONS).mkdir(exist_ok=True)
            write_atomic(self.path / version_rel(current), self.manifest.to_json().encode())
        kept = self.kept_files()
        for rel in data:
            if rel not in kept:
                os.remove(self.path / rel)
                removed.append(rel)
        return removed

    def remove_orphans(self) -> list[str]:
        return self._sweep()

    def require_intact(self, ignore: Callable[[str], bool] = lambda rel: False) -> None:
        """Refuse to build on a damaged version (files that ``ignore`` accepts are about to be replaced)."""
        for rel, problem in find_damage(self.path, self.manifest):
            if not ignore(rel):
                raise damaged(self.path, rel, problem)

    def new_file(self, rel: str, write) -> str:
        """Create the file ``rel`` (relative to the database) through ``write(tmp_path)``."""
        return new_file(self.path, rel, write)

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        return write_parquet(self.path, rel, table)

    def write_parquet_table(self, name: str, table: pa.Table) -> str:
        """Add a part to the table ``name`` (failures, ingests, ...); listed, not committed."""
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
    def commit(self, operation: str | None = None) -> None:
        """Atomically publish the in-memory manifest as the next version."""
        self.manifest.commit += 1
        self.manifest.operation = operation or self.operation
        try:
            self._publish()
        except BaseException as e:
            self.manifest.commit -= 1
            if isinstance(e, OSError) and (is_disk_full(e) or is_read_only(e)):
                raise write_error(self.path, e, self.committed) from None
            raise

    def _publish(self) -> None:
        m = self.manifest
        listed = m.listed_files()
        for rel in listed - set(m.files):
            m.files[rel] = file_record(self.path / rel)
        m.files = {rel: rec for rel, rec in m.files.items() if rel in listed}
        write_commit(self.path, m)
        self.committed = m.commit

    def drop_derived(self) -> None:
        """Unlist the derived tables (they name samples or statistics that are being replaced)."""
        for name in DERIVED_TABLES:
            self.manifest.tables.pop(name, None)
            self.manifest.derived.pop(name, None)

    def set_derived(self, name: str, files: list[str], base: Manifest) -> None:
        """List ``files`` as the derived table ``name``, computed from version ``base``; refuses when
        the samples or statistics of this writer's version are not those of ``base``."""
        if base.data_version() != self.manifest.data_version():
            raise StaleError(
                f"database '{self.path}' moved on from commit {base.commit} to {self.manifest.commit} (its samples or "
                f"statistics changed) while {name} was computed; nothing was stored. Rerun the command"
            )
        self.manifest.tables[name] = list(files)
        self.manifest.derived[name] = DerivedBase(base_commit=base.commit, data=base.data_version())
