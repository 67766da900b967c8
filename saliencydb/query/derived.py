"""Storing derived tables (knn, clusters, blame, triage) tied to the version they were computed from.

A derived table records its base commit and a fingerprint of the samples and statistics
it was computed from. It is stored only when the database still holds exactly those:
otherwise nothing is stored and ``StaleError`` says so (README "Reliability").
"""

from __future__ import annotations

from typing import Callable

from ..errors import StaleError
from ..storage import DatabaseWriter


def store_derived(db, build: Callable[[DatabaseWriter], dict[str, list[str]]], *, operation: str,
                  writer: DatabaseWriter | None = None, wait: bool = False) -> None:
    """Write derived tables computed on ``db``'s version and commit them: ``build(w)`` writes the
    files and returns {table: files}. ``writer``: a lock the caller took before reading (the
    CLI does, so the version cannot move); else one is taken now, waiting with ``wait``."""
    own = writer is None
    w = writer if writer is not None else DatabaseWriter(db.path, wait=wait, operation=operation)
    try:
        if w.manifest.data_version() != db.manifest.data_version():
            raise StaleError(
                f"database '{db.path}' moved on from commit {db.manifest.commit} to {w.manifest.commit} (its samples or "
                f"statistics changed) since this result was computed; nothing was stored. Rerun the command"
            )
        for name, files in build(w).items():
            w.set_derived(name, files, db.manifest)
        w.commit(operation)
    finally:
        if own:
            w.close()
