"""The one write API above the pipeline: tables computed from a version's samples and statistics
(``knn``, ``clusters``, ``blame``, ``triage``) and the appended ``interventions`` records.

A ``DerivedWriter`` holds the writer lock but can do only this: write parts of those tables and
commit them. A derived table records its base commit and a fingerprint of the samples and
statistics it was computed from; it is stored only when the database still holds exactly
those, otherwise nothing is stored and ``StaleError`` says so (docs/reliability.md).
Readers (``query.Database``) never take it themselves: the caller opens one, before reading
when the result must be stored on the version it was computed from (docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa

from ..errors import QueryError, StaleError
from ..schemas import DERIVED_TABLES, Manifest
from .writer import DatabaseWriter

APPENDED_TABLES = ("interventions",)


class DerivedWriter:
    """Write access to the derived and appended tables of one database, under its writer lock.

    >>> with DerivedWriter("db", operation="clusters") as w:
    ...     with saliencydb.open("db") as d:
    ...         d.clusters(8, store=w)
    """

    def __init__(self, path: str | os.PathLike, *, operation: str, wait: bool = False):
        self._writer = DatabaseWriter(path, wait=wait, operation=operation)
        self.path = self._writer.path

    @property
    def manifest(self) -> Manifest:
        """The version this writer builds on (read it; change it only through the methods)."""
        return self._writer.manifest

    def files(self, name: str) -> list[str]:
        """The files the table ``name`` lists now."""
        return list(self.manifest.tables.get(name, []))

    def write(self, name: str, table: pa.Table, stem: str = "part") -> str:
        """Write one part of the table ``name`` (not listed until ``store``); returns its file."""
        _check_table(name, DERIVED_TABLES)
        return self._writer.write_parquet(self._writer.unique_name(name, stem, ".parquet"), table)

    def store(self, base: Manifest, build: Callable[["DerivedWriter"], dict[str, list[str]]],
              operation: str | None = None) -> None:
        """Store tables computed from version ``base``: ``build(self)`` writes their parts and returns
        {table: files}; they are listed with their base and committed, or refused when the
        samples or statistics moved on since ``base``."""
        if self.manifest.data_version() != base.data_version():
            raise StaleError(
                f"database '{self.path}' moved on from commit {base.commit} to {self.manifest.commit} (its samples or "
                f"statistics changed) since this result was computed; nothing was stored. Rerun the command"
            )
        for name, files in build(self).items():
            _check_table(name, DERIVED_TABLES)
            self._writer.set_derived(name, files, base)
        self._writer.commit(operation)

    def append(self, name: str, table: pa.Table) -> str:
        """Append ``table`` to the table ``name`` (interventions) in one commit; returns its file."""
        _check_table(name, APPENDED_TABLES)
        rel = self._writer.write_parquet_table(name, table)
        self._writer.commit()
        return rel

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "DerivedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._writer.__exit__(*exc)  # closes; a full disk or read-only medium becomes its one-line error


def store_derived(db, build: Callable[[DerivedWriter], dict[str, list[str]]], *, operation: str,
                  store: DerivedWriter | None = None, wait: bool = False) -> None:
    """Store tables computed on ``db`` (a reader: ``path`` and ``manifest``) through ``store``, a
    writer the caller opened before reading (so the version cannot move), or a new one. Tables
    computed under another normalisation than the database's own are refused."""
    if getattr(db, "overridden", False):
        raise QueryError(f"results computed with the {db.normalisation} normalisation are not stored: the database's own is "
                         f"{db.manifest.profile_normalisation}; pass write=False, or switch it with `saliencydb restat --normalisation`")
    if store is not None:
        store.store(db.manifest, build, operation)
        return
    with DerivedWriter(db.path, operation=operation, wait=wait) as w:
        w.store(db.manifest, build)


def _check_table(name: str, allowed) -> None:
    if name not in allowed:
        raise ValueError(f"{name!r} is not one of the tables this writer may write ({', '.join(allowed)})")
